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


def _refuse_unwritable(folder: Path, subject: str) -> None:
    """A ValueError, about ``subject``, for a folder that is a file, lies under one, or whose nearest
    existing folder cannot be written to (so it could not be made either)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{subject}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{subject}: {existing} is not writable")


def check_folder(folder: str | Path, what: str = "folder") -> Path:
    """``folder`` as a Path, after refusing one that could not be written into; a missing one is
    left to whoever writes into it, so that checking creates nothing."""
    folder = Path(folder)
    _refuse_unwritable(folder, f"{what} {folder}")
    return folder


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
    _refuse_unwritable(folder, f"{what} {target}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what} {target}: cannot create its folder {folder} ({error.strerror})") from None
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
