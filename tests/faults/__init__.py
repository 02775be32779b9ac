"""Faults injected into worker processes from outside them (sitecustomize.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FOLDER = Path(__file__).parent


def environment(fault: str) -> dict[str, str]:
    """What a process's environment needs for its workers to fail as ``fault`` says
    ("rank=R,path=P,command=C,action=A": sitecustomize.py)."""
    return {
        "UNET_BENCH_FAULT": fault,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(FOLDER), os.environ.get("PYTHONPATH")])),
    }


def inject(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    """The workers this test starts fail as ``fault`` says."""
    for name, value in environment(fault).items():
        monkeypatch.setenv(name, value)
