"""Writing outputs safely: never over an input, whole or not at all, with ordinary permissions.

Every command that writes a file (checkpoints, exports, reports, run records) goes
through ``atomic_output``: the content goes to a temporary file beside the target,
which is renamed over it only once complete, so a full disk or a killed run leaves
the old file or none, never half of one. Imports no framework.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(target: str | Path, *inputs: str | Path, what: str = "output") -> Path:
    """``target`` as a Path, after refusing one that is also an input or cannot be written; a
    missing folder above it is created."""
    target = Path(target)
    for source in inputs:
        source = Path(source)
        if target.resolve() == source.resolve() or (
            target.exists() and source.exists() and os.path.samefile(target, source)
        ):
            raise ValueError(f"{what} {target} is also the input {source}: choose another {what} file")
    if target.is_dir():
        raise ValueError(f"{what} {target} is a folder: give a file name inside it")
    folder = target.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {target}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what} {target}: cannot create its folder {folder} ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {target}: the folder {folder} is not writable")
    return target


@contextlib.contextmanager
def atomic_output(target: str | Path, *inputs: str | Path, what: str = "output") -> Iterator[Path]:
    """A temporary path to write ``target``'s content to; renamed to ``target`` when the block
    ends without an error, deleted otherwise."""
    target = check_output(target, *inputs, what=what)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's are private (0600); the output is not
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(target: str | Path, text: str, *inputs: str | Path) -> None:
    """``text`` to ``target``, atomically."""
    with atomic_output(target, *inputs) as temporary:
        temporary.write_text(text)
