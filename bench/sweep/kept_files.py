"""What the compile-cache folder keeps between runs, each file sealed (its digest beside it)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from impls.files import discard, seal, seal_problem, write_text


def default_compile_cache() -> Path:
    """The user's cache folder: $XDG_CACHE_HOME/unet-bench/compile, else ~/.cache/unet-bench/compile."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unet-bench" / "compile"


@dataclass(frozen=True)
class KeptFiles:
    """Reads and writes the kept files; ``say`` names each one found spoiled."""

    say: Callable[[str], None]

    def whole(self, file: Path) -> bool:
        """Whether ``file``, kept in the compile-cache folder, is there as it was written (its digest
        beside it); one that is not is named, discarded and made again by whoever needs it."""
        if not file.exists():
            return False
        problem = seal_problem(file)
        if problem is None:
            return True
        self.say(f"discarded {file}: {problem}; it is made again")
        discard(file)
        return False

    def read_json(self, file: Path) -> dict:
        if not self.whole(file):
            return {}
        try:
            return json.loads(file.read_text())
        except (OSError, ValueError) as error:  # sealed, yet unreadable: made so by hand
            self.say(f"discarded {file}: {error}; it is made again")
            discard(file)
            return {}

    def write_json(self, file: Path, value: dict) -> None:
        write_text(file, json.dumps(value))  # whole or not at all: the next run reads it back
        seal(file)
