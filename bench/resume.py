"""``--resume RUN_DIR``: one run measured over several sessions (a run stopped by --max-minutes, by
Ctrl-C or SIGTERM, or by a lost machine, continued later: a GPU lent for minutes at a time).

A resumed session measures only the cases RUN_DIR holds no record of (or only a ``skipped`` or
``interrupted`` one), appends their records to its progress.jsonl and writes its benchmark.json with
the earlier sessions' cases in it, so that the report reads one run. It is refused unless RUN_DIR
was measured with the same engine (bench/environment.py's ``engine_hash``), versions and device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.records import NOT_MEASURED


def _refuse(run_dir: Path, problem: str) -> ValueError:
    return ValueError(f"--resume {run_dir}: {problem}")


def check(run_dir: Path, now: dict[str, Any]) -> None:
    """Refuse (ValueError, one line with the reason and the fix) unless ``run_dir`` is a run measured
    with the engine, versions and device that ``now`` (environment.describe) describes."""
    if not run_dir.is_dir():
        raise _refuse(run_dir, "no such folder; name a run folder under results/ (or start a new run)")
    if not report.is_run(run_dir):
        raise _refuse(run_dir, "not a run folder (no benchmark.json or progress.jsonl); start a new run")
    file = run_dir / "environment.json"
    try:
        then = report.read_environment(file)
    except report.UnreadableRun as error:
        raise _refuse(run_dir, f"{error}; start a new run") from None
    fix = "start a new run (without --resume)"
    if "engine_hash" not in then:
        raise _refuse(run_dir, f"measured by an engine that recorded no engine hash; {fix}")
    differences = [
        f"{label} {then.get(key)!r} then, {now[key]!r} now"
        for key, label in (("engine_hash", "engine"), ("device_name", "device"))
        if then.get(key) != now[key]
    ]
    versions = then.get("versions", {})
    differences += [
        f"{package} {versions.get(package)} then, {version} now"
        for package, version in now["versions"].items()
        if versions.get(package) != version
    ]
    if differences:
        raise _refuse(run_dir, f"not measured as this session would be: {'; '.join(differences)}; {fix}")


def recorded(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """The cases ``run_dir`` holds a record of (not NOT_MEASURED), as its benchmark.json has them:
    (benchmarks, failures), for the benchmark.json of the next session."""
    benchmarks, failures = report.read_records(run_dir)
    return benchmarks, [f for f in failures if f.get("status") not in NOT_MEASURED]


def case_id(benchmark: dict) -> str:
    """A benchmark's case id (``test_unet[<id>]``); a failure record's own."""
    return benchmark["extra_info"]["id"] if "extra_info" in benchmark else benchmark["id"]
