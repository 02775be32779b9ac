"""How long cases take: each case's wall time kept for later runs (case-seconds.json), the time
the cases not yet measured should take, and the progress line after each case."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import keys
from bench.run_config import RunConfig
from bench.sweep.case import Prepared
from bench.sweep.cold import ColdCompiles
from bench.sweep.kept_files import KeptFiles

GUESS_SECONDS = {"cpu": 40.0, "cuda": 90.0}  # a case never run before, for the first estimate


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


@dataclass(frozen=True)
class Estimates:
    """Case times kept in the compile-cache folder, and the estimates drawn from them."""

    compile_cache: Path
    files: KeptFiles
    colds: ColdCompiles

    @property
    def file(self) -> Path:
        return self.compile_cache / "case-seconds.json"

    def remember(self, p: Prepared) -> None:
        """What this case took, and how much of it was its cold compile, for later estimates."""
        if "case_wall_seconds" not in p.record:
            return
        walls = self.files.read_json(self.file)
        cold = 0.0 if p.cold is None or p.cold["reused"] else p.cold.get("worker_seconds", 0.0)
        walls[keys.case_time_key(p.config)] = {
            "wall": p.record["case_wall_seconds"],
            "cold": cold,
            "entry": p.record["compile_folder"],
        }
        self.files.write_json(self.file, walls)

    def seconds(self, config: RunConfig, walls: dict | None = None) -> float | None:
        """A case's wall time as an earlier run measured it (in ``walls``, the saved case times, read
        here if not given), less a cold compile it will now reuse: its folder is still the one this
        case would use (the code or versions unchanged since) and holds a cold figure. None for a
        case never run."""
        walls = self.files.read_json(self.file) if walls is None else walls
        seen = walls.get(keys.case_time_key(config))
        if seen is None:
            return None
        folder = Path(seen["entry"])
        reused = folder == self.colds.folder(config) and (folder / "cold.json").exists()
        return seen["wall"] - (seen["cold"] if reused else 0.0)

    def remaining(
        self, cases: list[RunConfig], records: list[dict[str, Any]], timing: bool
    ) -> tuple[float, int]:
        """Seconds the cases not yet recorded should take, and how many of them are guesses: a
        case never run counts as the mean of this run's cases so far, else GUESS_SECONDS."""
        done = [r["case_wall_seconds"] for r in records if "case_wall_seconds" in r]
        measured = {r["id"] for r in records}
        walls = self.files.read_json(self.file)  # once, not once a case: this runs after every case
        total, guessed = 0.0, 0
        for config in cases:
            if config.id in measured:
                continue
            seconds = self.seconds(config, walls) if timing else None
            if seconds is None:
                guessed += 1
                guess = GUESS_SECONDS["cpu" if config.device == "cpu" else "cuda"]
                seconds = float(np.mean(done)) if done else guess
            total += seconds
        return total, guessed


def progress_line(record: dict[str, Any], done: int, count: int, left: float) -> str:
    """'[done/count] id: status in N s; about M min left' for a case just recorded."""
    wall = record.get("case_wall_seconds")
    took = f" in {wall:.0f} s" if wall is not None else ""
    status = record["status"]
    if status != "ok":
        status += f": {record.get('message', '')}"
    line = f"[{done}/{count}] {record['id']}: {status.splitlines()[0][:200]}{took}"
    if done < count:
        line += f"; about {minutes(left)} left"
    return line
