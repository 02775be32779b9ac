"""Writing outputs safely: never over an input, whole or not at all, with ordinary permissions.

Every command that writes a file (checkpoints, exports, reports, run records) goes
through ``atomic_output``: the content goes to a temporary file beside the target,
which is renamed over it only once complete, so a full disk or a killed run leaves
the old file or none, never half of one. Imports no framework.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
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


def _not_an_input_or_folder(target: Path, inputs: tuple, what: str) -> Path:
    for source in map(Path, inputs):
        if target.resolve() == source.resolve() or (
            target.exists() and source.exists() and os.path.samefile(target, source)
        ):
            raise ValueError(f"{what} {target} is also the input {source}: choose another {what} file")
    if target.is_dir():
        raise ValueError(f"{what} {target} is a folder: give a file name inside it")
    return target


def new_folder(parent: str | Path, name: str) -> Path:
    """``parent / name``, or the first of ``name-2``, ``name-3``, ... that does not exist: a folder of
    its own for each run that shares ``parent`` (not made here)."""
    for n in itertools.count(1):
        folder = Path(parent) / (name if n == 1 else f"{name}-{n}")
        if not folder.exists():
            return folder
    raise AssertionError("unreachable")


def check_output(target: str | Path, *inputs: str | Path, what: str = "output") -> Path:
    """``target`` as a Path, after refusing one that is also an input or cannot be written; a
    missing folder above it is created."""
    target = _not_an_input_or_folder(Path(target), inputs, what)
    folder = target.parent
    _refuse_unwritable(folder, f"{what} {target}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{what} {target}: cannot create its folder {folder} ({error.strerror})") from None
    return target


def check_named_output(
    target: str | Path, *inputs: str | Path, suffix: str, force: bool, what: str = "output"
) -> Path:
    """check_output for a file the user named: with its format's ``suffix``, and not a file that
    exists unless ``force`` (the user said to replace it). Files a command owns by name (a run's
    report, the README's block) are regenerated without it and do not come here."""
    target = _not_an_input_or_folder(Path(target), inputs, what)
    if target.suffix.lower() != suffix:
        raise ValueError(
            f"{what} {target}: this format's files end in {suffix}: name it {target.with_suffix(suffix).name}"
        )
    if target.exists() and not force:
        raise ValueError(f"{what} {target} already exists: choose another name, or replace it with --force")
    return check_output(target, *inputs, what=what)


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


SEAL = ".sha256"  # beside a sealed file: the sha256 of its bytes as written


def _seal_of(file: Path) -> Path:
    return file.with_name(file.name + SEAL)


def seal(file: str | Path) -> None:
    """Write ``file``'s digest beside it, so that a later reader can tell it is whole (seal_problem)."""
    file = Path(file)
    write_text(_seal_of(file), hashlib.sha256(file.read_bytes()).hexdigest())


def seal_problem(file: str | Path) -> str | None:
    """Why ``file`` cannot be read back as it was written, or None: no digest beside it, or bytes that
    no longer match the digest written with them."""
    file = Path(file)
    try:
        digest = _seal_of(file).read_text().strip()
    except OSError:
        return "no digest beside it (written by an older version, or cut off while being written)"
    if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
        return "its bytes no longer match the digest written with it (truncated or changed since)"
    return None


def discard(file: str | Path) -> None:
    """Delete ``file`` and its digest, if there."""
    for path in (Path(file), _seal_of(Path(file))):
        path.unlink(missing_ok=True)
