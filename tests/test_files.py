"""impls/files.py: outputs whole or not at all, with ordinary permissions, never over an input."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from impls import files


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.pth"
    path.write_text("precious")
    return path


@pytest.fixture
def umask() -> Iterator[None]:
    """The test sets the umask it needs; the process gets its own back."""
    mask = os.umask(0o022)
    yield
    os.umask(mask)


def test_a_missing_folder_is_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "out.txt"
    files.write_text(target, "whole")
    assert target.read_text() == "whole"
    assert os.listdir(target.parent) == ["out.txt"]


def test_an_error_leaves_the_old_file_and_no_partial_one(tmp_path: Path) -> None:
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("old")
    for target in (old, new):
        with pytest.raises(RuntimeError, match="disk full"), files.atomic_output(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert old.read_text() == "old"
    assert os.listdir(tmp_path) == ["old.txt"]  # no new.txt, no temporary file


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    os.umask(mask)
    files.write_text(tmp_path / "out.txt", "x")
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == mode  # not the temporary file's 0600


@pytest.mark.parametrize("alias", ["same", "relative", "symlink", "hardlink"])
def test_an_input_is_never_written_over(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, alias: str
) -> None:
    target = tmp_path / "other.pth"
    if alias == "same":
        target = source
    elif alias == "relative":
        monkeypatch.chdir(tmp_path)
        target = Path("sub") / ".." / source.name
    elif alias == "symlink":
        target.symlink_to(source)
    else:
        os.link(source, target)
    with pytest.raises(
        ValueError, match=re.escape(f"output {target} is also the input {source}: choose another")
    ):
        files.write_text(target, "over", source)
    assert source.read_text() == "precious"


def test_a_file_in_the_way_of_the_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "results").write_text("")
    target = tmp_path / "results" / "run" / "out.txt"
    with pytest.raises(
        ValueError, match=re.escape(f"output {target}: {tmp_path / 'results'} is a file, not a folder")
    ):
        files.write_text(target, "x")


def test_a_folder_is_no_output_file(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"output {tmp_path} is a folder: give a file name inside it")
    ):
        files.write_text(tmp_path, "x")
