"""Reading a run folder: benchmark.json, or where the sweep never wrote it progress.jsonl (a last
line cut short left out, with a note), and environment.json; a file that cannot be read as a run is an
UnreadableRun naming the file, the item and what is wrong. Every case's record is read through
records.upgrade, whichever engine wrote it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.records import OK, upgrade
from bench.report.cases import case_row, failure_row, is_case, other_row
from bench.report.intervals import rule_of, with_intervals


class UnreadableRun(ValueError):
    """A run folder whose files cannot be read as a run: which file, and what is wrong with it."""

    def __init__(self, file: Path, problem: str) -> None:
        super().__init__(f"{file} {problem}")
        self.file, self.problem = Path(file), problem


@dataclass
class Run:
    """A run as benchmark.json has it, each benchmark and failure labelled with where it is in ``file``."""

    file: Path  # benchmark.json, or progress.jsonl where the sweep ended before writing it
    benchmarks: list[tuple[str, Any]]
    failures: list[tuple[str, Any]]
    section: dict  # unet_bench


def _text(file: Path) -> str:
    try:
        return file.read_text()
    except OSError as error:
        raise UnreadableRun(file, f"cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UnreadableRun(file, f"is not text ({error.reason} at byte {error.start})") from None


def _loads(file: Path, text: str, line: int | None = None) -> Any:
    """``text`` parsed: ``file``'s, or its ``line``th line's (JSON Lines)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno if line is None else line} column {error.colno}"
        raise UnreadableRun(file, f"is not valid JSON ({where}): {error.msg}") from None


def _json_object(file: Path) -> dict:
    data = _loads(file, _text(file))
    if not isinstance(data, dict):
        raise UnreadableRun(file, "is not a JSON object")
    return data


def _member(file: Path, data: dict, key: str, kind: type, default: Any = None) -> Any:
    """``data[key]`` (``default`` where it has none), refused unless a ``kind``."""
    value = data.get(key, default)
    if not isinstance(value, kind):
        raise UnreadableRun(file, f"has no {key!r} {'object' if kind is dict else kind.__name__}")
    return value


def _labelled(kind: str, items: list, numbers: list[int] | None = None) -> list[tuple[str, Any]]:
    """``items`` with where each is: ``benchmark 3 (test_unet[...])``, ``line 7 (train-jax-...)``."""
    labelled = []
    for number, item in zip(numbers or range(1, len(items) + 1), items, strict=True):
        name = (item.get("name") or item.get("id")) if isinstance(item, dict) else None
        labelled.append((f"{kind} {number}" + (f" ({name})" if name else ""), item))
    return labelled


def _each(file: Path, items: list[tuple[str, Any]], convert: Callable[[Any], Any]) -> list[tuple[str, Any]]:
    """``convert`` of every item, labelled as the item, None results left out; a missing key or a
    value of the wrong kind is an UnreadableRun that names the item."""
    results = []
    for where, item in items:
        try:
            result = convert(item)
        except KeyError as error:
            raise UnreadableRun(file, f"has no {error} in {where}") from None
        except (TypeError, AttributeError, ValueError) as error:
            raise UnreadableRun(file, f"has a malformed {where} ({error})") from None
        if result is not None:
            results.append((where, result))
    return results


def _records(file: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """progress.jsonl's records, labelled with their lines, and notes on what was left out: a last
    line cut short, by a sweep killed while writing it (or one still running). Any other line that
    is not a JSON object makes the file unreadable."""
    lines = _text(file).splitlines()
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    records, numbers, notes = [], [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _loads(file, line, number)
        except UnreadableRun as error:
            if number != last:
                raise
            notes.append(
                f"skipped the last line of {file.name}, cut short (the sweep stopped while writing it, or "
                f"is still running): it {error.problem}"
            )
            continue
        if not isinstance(record, dict):
            raise UnreadableRun(file, f"has a line {number} that is not a JSON object")
        records.append(record)
        numbers.append(number)
    return _labelled("line", records, numbers), notes


def _progress_benchmark(record: dict) -> dict | None:
    """A finished case's record as benchmark.json has it; None for a case without a number (or one
    measured untimed, --benchmark-disable, which kept no stats)."""
    if upgrade(record)["status"] != OK or "stats" not in record:
        return None
    return {"name": f"test_unet[{record['id']}]", "stats": record["stats"], "extra_info": record}


def _failure(record: dict) -> dict | None:
    return None if upgrade(record)["status"] == OK else record


def _from_progress(run_dir: Path) -> Run:
    """The run, from the records of progress.jsonl (a sweep that never wrote benchmark.json)."""
    file = Path(run_dir) / "progress.jsonl"
    records, notes = _records(file)
    # A resumed run (--resume) appends a case's new record after its skipped or interrupted one.
    last = {record.get("id"): where for where, record in records}
    records = [(where, record) for where, record in records if last[record.get("id")] == where]
    rebuilt = "progress.jsonl (the sweep ended before it wrote benchmark.json)"
    section: dict[str, Any] = {"rebuilt_from": rebuilt}
    environment = Path(run_dir) / "environment.json"
    if environment.exists():  # written when the sweep started
        try:
            section["environment"] = _json_object(environment)
        except UnreadableRun as error:  # the tables do without it
            notes.append(f"environment.json {error.problem}: the device and versions are unknown")
    specs = [spec for _, spec in _each(file, records, lambda record: record.get("case", {}).get("spec"))]
    if specs:
        section["spec"] = specs[0]
    if notes:
        section["notes"] = notes
    return Run(
        file,
        _each(file, records, _progress_benchmark),
        _each(file, records, _failure),
        section,
    )


def read(run_dir: Path) -> Run:
    file = Path(run_dir) / "benchmark.json"
    if not file.exists():
        return _from_progress(run_dir)
    data = _json_object(file)
    section = _member(file, data, "unet_bench", dict, {})
    return Run(
        file,
        _labelled("benchmark", _member(file, data, "benchmarks", list)),
        _labelled("failure", _member(file, section, "failures", list, [])),
        section,
    )


def read_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """A run's benchmarks (as benchmark.json has them) and failure records."""
    run = read(Path(run_dir))
    return [b for _, b in run.benchmarks], [f for _, f in run.failures]


def read_environment(file: Path) -> dict:
    """A run's environment.json."""
    return _json_object(Path(file))


def is_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in ("benchmark.json", "progress.jsonl"))


def others(run: Run) -> pd.DataFrame:
    """The run's benchmarks that are not U-Net cases (the timer check, the weight map)."""
    return pd.DataFrame([row for _, row in _each(run.file, run.benchmarks, other_row)])


def tables(run: Run) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(measured cases with their intervals, cases without a number, the run's unet_bench section)."""
    cases = _each(run.file, run.benchmarks, lambda bench: case_row(bench) if is_case(bench) else None)
    measured = pd.DataFrame([row for _, row in cases])
    if not measured.empty:
        measured["devices"] = measured["devices"].astype(float)
        measured = with_intervals(measured, *rule_of(run.section))
    failures = pd.DataFrame([row for _, row in _each(run.file, run.failures, failure_row)])
    return measured, failures, run.section


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(measured cases, failed cases, the run's unet_bench section); an UnreadableRun, naming the file
    and the problem, where its files cannot be read as a run."""
    return tables(read(run_dir))
