"""Comparison tables with 95% intervals, verdicts and plots, built with pandas from pytest-benchmark's JSON.

``python -m bench.report RUN_DIR`` rebuilds one run's report; with several run
directories (other machines, other GPUs) it merges them into one cross-device
table. ``--compare RUN_A RUN_B`` says whether a second run reproduces a first;
``--readme RUN_DIR...`` writes the README's result sections from runs, and
``--check`` says whether the README still matches them.

A run directory holds ``benchmark.json``: pytest-benchmark's own data, with
this suite's ``extra_info`` per benchmark and a ``unet_bench`` section (spec,
environment, options, failed cases). A sweep that was killed outright
(SIGKILL, a lost machine) wrote no ``benchmark.json``; its ``progress.jsonl``,
one record per case written as each case ended, rebuilds the same tables; a
last line cut short (a sweep stopped while writing it) is left out, with a note.
A run folder that cannot be read (a corrupt or half-written file, a missing
field) is left out of results/README.md and named there; named on the command
line, it is a one-line error that says which file and what is wrong with it.

Intervals and verdicts come from bench/stats.py: a case's median time with a
95% interval over its worker processes (or, with one, a bootstrap over its
rounds), speed-ups from the blocks of rounds that the engine measured side by
side, every interval over workers no narrower than the group's pooled
worker-to-worker spread allows and widened by the run-to-run spread, and the
four outcomes at the run's margin (faster, slower, equivalent, inconclusive).
Times, rates, the order of paths and speed-ups all come from one estimate
(stats.estimate). Runs of the older
engines kept no rounds: their tables have values without intervals, and no
verdicts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.runners.config import (
    CALIBRATION_REFERENCE,
    PLAIN_PATHS,
    RUNTIME_PACKAGES,
    RUNTIME_PATHS,
    calibration_effect,
    competes,
    compiles_nothing,
    verdict_roles,
)
from impls.files import atomic_output, write_text

BASELINE = "torch-eager"
CASE = ["size", "batch", "precision"]
# The cases whose rounds the engine interleaved: every path at one task, case and placement.
GROUP = ["task", *CASE, "devices", "scaling"]
SPEEDUP = ["speedup", "speedup_low", "speedup_high"]
# What a task's throughput is counted in: images, or for a tiled whole image its pixels.
THROUGHPUT = {
    "train": ("img_per_s", "images per second"),
    "infer": ("img_per_s", "images per second"),
    "tiled": ("megapixels_per_s", "megapixels per second"),
}
README_TITLES = {
    "train": "Training, images per second",
    "infer": "Inference, images per second",
    "tiled": "Whole image in tiles, megapixels per second",
}
FAILURE_COLUMNS = ("path", "task", "size", "batch", "precision", "device", "devices", "scaling")
UNITS = {"train": "train steps", "infer": "forward passes", "tiled": "whole images"}
SUSPECT = 1.0  # of the device's measured peak: more is physically suspect, never explained away
NO_ROUNDS = "this run has no interleaved rounds (older engine)"
NAN = stats.Interval(math.nan, math.nan, math.nan)
INTERNAL = ["round_seconds", "time_spread", "judgement"]  # what the intervals are made from: no CSV

README = Path(__file__).resolve().parent.parent / "README.md"
README_COMMAND = "python -m bench.report --readme"
README_BLOCK = re.compile(
    r"<!-- begin generated: python -m bench\.report --readme (?P<runs>[^>]*?) -->\n.*?<!-- end generated -->",
    re.DOTALL,
)


# -- reading a run -------------------------------------------------------------------------------


class UnreadableRun(ValueError):
    """A run folder whose files cannot be read as a run: which file, and what is wrong with it."""

    def __init__(self, file: Path, problem: str) -> None:
        super().__init__(f"{file} {problem}")
        self.file, self.problem = Path(file), problem


@dataclass
class _Run:
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
    """A finished case's record as benchmark.json has it; None for a case without a number."""
    if record.get("status") != "ok" or "stats" not in record:
        return None
    return {"name": f"test_unet[{record['id']}]", "stats": record["stats"], "extra_info": record}


def _from_progress(run_dir: Path) -> _Run:
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
    return _Run(
        file,
        _each(file, records, _progress_benchmark),
        [(where, record) for where, record in records if record.get("status") != "ok"],
        section,
    )


def _read(run_dir: Path) -> _Run:
    file = Path(run_dir) / "benchmark.json"
    if not file.exists():
        return _from_progress(run_dir)
    data = _json_object(file)
    section = _member(file, data, "unet_bench", dict, {})
    return _Run(
        file,
        _labelled("benchmark", _member(file, data, "benchmarks", list)),
        _labelled("failure", _member(file, section, "failures", list, [])),
        section,
    )


def read_records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """A run's benchmarks (as benchmark.json has them) and failure records."""
    run = _read(Path(run_dir))
    return [b for _, b in run.benchmarks], [f for _, f in run.failures]


def read_environment(file: Path) -> dict:
    """A run's environment.json."""
    return _json_object(Path(file))


def is_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in ("benchmark.json", "progress.jsonl"))


def _is_case(bench: dict) -> bool:
    """A U-Net case; other benchmarks (the timer check, the weight map) have no images per second."""
    return "images_per_second" in bench["extra_info"]


def _other_row(bench: dict) -> dict | None:
    if _is_case(bench):
        return None
    return {
        "benchmark": bench["name"],
        "median_ms": bench["stats"]["median"] * 1e3,
        "iqr_ms": bench["stats"]["iqr"] * 1e3,
        "rounds": bench["stats"]["rounds"],
        "details": json.dumps(bench["extra_info"]),
    }


def _others(run: _Run) -> pd.DataFrame:
    return pd.DataFrame([row for _, row in _each(run.file, run.benchmarks, _other_row)])


def others(run_dir: Path) -> pd.DataFrame:
    """The run's benchmarks that are not U-Net cases (the timer check, the weight map)."""
    return _others(_read(run_dir))


def _tf32_backward(info: dict) -> bool:
    """A torch fp32 case on CUDA measured before precision was set for the whole process: the
    engine turned TF32 off around the forward only, and cuDNN's default let the backward use it."""
    settings = info.get("settings", {})
    return (
        settings.get("framework") == "torch"
        and info["task"] == "train"
        and info["precision"] == "fp32"
        and info.get("device", "cuda") != "cpu"
        and "fp32_precision" not in settings
        and not settings.get("tf32")
    )


def _rounds(info: dict) -> tuple[tuple, ...] | None:
    """(seconds, block, worker) of every timed round (one worker where the run names none); None
    from the older engines, which kept no rounds."""
    if not info.get("rounds_seconds"):
        return None
    workers = info.get("round_workers") or [0] * len(info["rounds_seconds"])
    return tuple(info["rounds_seconds"]), tuple(info["round_blocks"]), tuple(workers)


def _case_row(bench: dict) -> dict:
    info, timing = bench["extra_info"], bench["stats"]
    rounds = _rounds(info)
    return {
        **{k: info[k] for k in ("path", "task", *CASE, "device_name", "gflop_per_image")},
        "img_per_s": info["images_per_second"],
        "megapixels_per_s": info.get("megapixels_per_second", math.nan),
        "median_ms": timing["median"] * 1e3,
        "median_ms_low": math.nan,  # 95% interval: _with_intervals, once the run's spread is known
        "median_ms_high": math.nan,
        "iqr_ms": timing["iqr"] * 1e3,
        "min_ms": timing["min"] * 1e3,
        "max_ms": timing["max"] * 1e3,
        "rounds": timing["rounds"],
        "schedule": info.get("schedule", ""),
        "tflops": info["tflops"],
        "utilization": math.nan if info["utilization"] is None else info["utilization"],  # peak unmeasured
        "peak_memory_mib": (info["peak_memory_bytes"] or math.nan) / 2**20,
        "compile_cold_s": info["compile_seconds_cold"],
        "compile_cold_reused": bool(info.get("compile_cold_reused", False)),
        "own_workers": "compile_cold_reused" in info,  # measured by the engine of per-case workers
        "compile_cached_s": info["compile_seconds_cached"],
        "devices": info.get("devices") or math.nan,
        "scaling": info.get("scaling"),
        "tf32_backward": _tf32_backward(info),
        "memory_method": info.get("settings", {}).get("memory", "?"),
        "workers": info.get("sampling", {}).get("workers", len(set(rounds[2])) if rounds else math.nan),
        "seconds_per_worker": info.get("sampling", {}).get("seconds_per_worker", math.nan),
        "sampling_s": info.get("sampling", {}).get("seconds", math.nan),
        "group_budget_s": info.get("sampling", {}).get("group_budget", math.nan),
        "calibration_extra_ms": _extra_ms(info),
        "round_seconds": rounds,
    }


def _extra_ms(info: dict) -> float:
    """A calibration path's extra work per call, the median of its last worker's calls (ms)."""
    extra = info.get("settings", {}).get("calibration", {}).get("extra_seconds")
    return float(np.median(extra)) * 1e3 if extra else math.nan


def _group_keys(measured: pd.DataFrame) -> list[str]:
    """A key per case that its group's cases share (as text: a missing devices or scaling is nan or None)."""
    return [str(tuple(case)) for case in measured[GROUP].itertuples(index=False)]


def _speedup(case: pd.Series, baseline: pd.Series | None, run_spread: float) -> stats.Interval:
    """The case against torch-eager of its group: paired blocks where both kept their rounds (as its
    verdict's comparisons are: stats.group_speedup),
    otherwise (older engines) the ratio of the medians alone."""
    if baseline is None:
        return NAN
    if case.path == BASELINE:
        return stats.Interval(1.0, math.nan, math.nan)
    if case.round_seconds is None or baseline.round_seconds is None:
        return stats.Interval(baseline.median_ms / case.median_ms, math.nan, math.nan)
    floor = case.judgement.floor if case.judgement is not None else None
    return stats.group_speedup(baseline.round_seconds, case.round_seconds, floor, run_spread)


def _median(case: pd.Series) -> stats.Interval:
    if case.round_seconds is None:
        return NAN
    seconds, _, workers = case.round_seconds
    return stats.median_interval(seconds, workers=workers, floor=case.time_spread)


def _time_spreads(cases: list[pd.Series]) -> list:
    """Each case's floor for its time's interval: the worker-to-worker spread of its device's times,
    pooled over the run's cases (stats.replicate_interval)."""
    times: dict[str, list] = {}
    for case in cases:
        if case.round_seconds is not None:
            seconds, _, workers = case.round_seconds
            times.setdefault(case.device_name, []).append(stats.worker_figures(seconds, workers))
    floor = {device: stats.pooled_spread(values) for device, values in times.items()}
    return [floor.get(c.device_name) for c in cases]


def judge_group(group: pd.DataFrame, margin: float, run_spread: float) -> stats.Judgement | None:
    """A group's stats.Judgement: the paths that compete (not the plain references, the calibration
    paths or TF32-backward rows) against the fastest, each calibration path against torch-eager, each
    mirrored path against its plain reference; None without rounds or with nothing to compare."""
    usable = group[group.round_seconds.notna() & ~group.tf32_backward]
    rounds = dict(zip(usable.path, usable.round_seconds, strict=True))
    competing, calibration, plain = verdict_roles(_path_order(rounds))
    if not competing or len(competing) + len(calibration) + len(plain) < 2:
        return None
    return stats.judge(rounds, competing, calibration, margin, run_spread, plain)


def rule_of(section: dict) -> tuple[float, float]:
    """The margin and the run-to-run spread a run recorded; today's for runs that recorded none."""
    options = section.get("options", {})
    return options.get("margin", stats.MARGIN), options.get("run_spread", stats.RUN_SPREAD)


def _with_intervals(measured: pd.DataFrame, margin: float, run_spread: float) -> pd.DataFrame:
    """Each case's time (the one estimate) and speed-up over torch-eager, with their 95% intervals,
    its rates from that time, and its group's Judgement."""
    keys, cases = _group_keys(measured), [case for _, case in measured.iterrows()]
    measured["time_spread"] = _time_spreads(cases)
    cases = [case for _, case in measured.iterrows()]
    medians = [_median(case) for case in cases]
    estimated = [
        m.value * 1e3 if np.isfinite(m.value) else old
        for m, old in zip(medians, measured.median_ms, strict=True)
    ]
    # every rate from the one estimate: rescaled from the time it was computed from (a call is a
    # batch, or a whole image for "tiled")
    per_call = np.where(measured.task == "tiled", 1, measured.batch)
    rated_ms = per_call / measured.img_per_s.to_numpy(float) * 1e3
    scale = rated_ms / np.asarray(estimated, dtype=float)
    for column in ("img_per_s", "megapixels_per_s", "tflops", "utilization"):
        measured[column] = measured[column] * scale
    measured["median_ms"] = estimated
    measured["median_ms_low"] = [m.low * 1e3 for m in medians]
    measured["median_ms_high"] = [m.high * 1e3 for m in medians]
    judgements = {
        key: judge_group(measured[[k == key for k in keys]], margin, run_spread) for key in set(keys)
    }
    measured["judgement"] = [judgements[key] for key in keys]
    cases = [case for _, case in measured.iterrows()]
    by_key = {key: case for key, case in zip(keys, cases, strict=True) if case.path == BASELINE}
    intervals = [_speedup(case, by_key.get(key), run_spread) for key, case in zip(keys, cases, strict=True)]
    for column, field in zip(SPEEDUP, ("value", "low", "high"), strict=True):
        measured[column] = [getattr(interval, field) for interval in intervals]
    return measured


def _failure_row(failure: dict) -> dict:
    # A record without a status is a case cut short by a version that did not name it so.
    return {
        **{k: failure["case"].get(k) for k in FAILURE_COLUMNS if k in failure["case"]},
        "status": failure.get("status", "interrupted"),
        "message": failure.get("message", ""),
    }


def _tables(run: _Run) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    cases = _each(run.file, run.benchmarks, lambda bench: _case_row(bench) if _is_case(bench) else None)
    measured = pd.DataFrame([row for _, row in cases])
    if not measured.empty:
        measured["devices"] = measured["devices"].astype(float)
        measured = _with_intervals(measured, *rule_of(run.section))
    failures = pd.DataFrame([row for _, row in _each(run.file, run.failures, _failure_row)])
    return measured, failures, run.section


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(measured cases, failed cases, the run's unet_bench section); an UnreadableRun, naming the file
    and the problem, where its files cannot be read as a run."""
    return _tables(_read(run_dir))


def _single_device(measured: pd.DataFrame) -> pd.DataFrame:
    """The cases of one device; data-parallel ones have tables of their own (scaling_table)."""
    return measured[measured.devices.isna()] if not measured.empty else measured


# -- tables --------------------------------------------------------------------------------------


def _path_order(paths) -> list[str]:
    """torch-eager, torch-plain, the torch-compile paths, jax, jax-plain, then the runtimes."""
    return sorted(
        paths,
        key=lambda p: (
            p in RUNTIME_PATHS,
            p.startswith("jax"),
            p not in (BASELINE, "jax"),
            p not in PLAIN_PATHS,
            p,
        ),
    )


def _pivot(measured: pd.DataFrame, task: str, value: str) -> pd.DataFrame:
    """One column per path, one row per case of ``task``; empty cells where a path has none."""
    table = measured[measured.task == task].groupby([*CASE, "path"])[value].first().unstack("path")
    return table[_path_order(table.columns)]


def _combine(render: Callable, *tables: pd.DataFrame) -> pd.DataFrame:
    """Tables of the same shape as one, ``render`` taking a cell of each; None where the first has none."""
    first = tables[0]
    return pd.DataFrame(
        {
            column: [
                render(*cells) if pd.notna(cells[0]) else None
                for cells in zip(*(table[column] for table in tables), strict=True)
            ]
            for column in first
        },
        index=first.index,
    )


def _intervals(measured: pd.DataFrame, task: str, column: str) -> pd.DataFrame:
    """stats.Interval cells from ``column`` and its ``_low`` and ``_high`` bounds."""
    bounds = (_pivot(measured, task, name) for name in (column, f"{column}_low", f"{column}_high"))
    return _combine(stats.Interval, *bounds)


def _mark(table: pd.DataFrame, flags: pd.DataFrame, label: str) -> pd.DataFrame:
    """``label`` after the text of each cell whose flag is set."""
    return _combine(lambda text, flag: f"{text} {label}" if flag else text, table, flags)


def _md(table: pd.DataFrame) -> str:
    """Markdown with the case as plain columns (size, batch, precision), empty where there is no value."""
    table = table.reset_index()
    return table.astype(object).where(table.notna(), "").to_markdown(index=False)


def _rate_and_speedup(rate: float, speedup: stats.Interval | None) -> str:
    if speedup is None or not np.isfinite(speedup.value):
        return f"{rate:.3g}"
    return f"{rate:.3g} ({speedup.format()})"


def _verdict_outcome(case: pd.Series) -> str:
    """What the case's group verdict says of it: "fastest", or its comparison's outcome against the
    fastest path; "" for a path in no verdict (or a group without one)."""
    judgement = _verdict_of(case.judgement)
    if judgement is None or not competes(case.path):
        return ""
    if case.path == judgement.best:
        return "fastest"
    return next((c.outcome for c in judgement.comparisons if c.path == case.path), "")


def throughput_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    """Throughput, speed-up against torch-eager and its 95% interval, and what the group's verdict
    says of the path: ``5.79 (1.11x [1.05, 1.16]) fastest``."""
    column = THROUGHPUT[task][0]
    table = _combine(_rate_and_speedup, _pivot(measured, task, column), _intervals(measured, task, "speedup"))
    outcomes = measured.assign(outcome=[_verdict_outcome(case) for _, case in measured.iterrows()])
    table = _combine(
        lambda text, outcome: f"{text} {outcome}".rstrip(), table, _pivot(outcomes, task, "outcome")
    )
    return _mark(table, _pivot(measured, task, "tf32_backward"), "TF32-BACKWARD")


def _decimals(value: float, digits: int) -> int:
    """Decimals that show ``digits`` significant digits of ``value`` (times span orders of magnitude)."""
    return max(0, digits - 1 - math.floor(math.log10(abs(value)))) if value else 0


def _time_text(median: stats.Interval, iqr: float) -> str:
    """``191 [188, 195] (34)``: the median to three significant digits, the IQR to two."""
    return f"{median.format(_decimals(median.value, 3), '')} ({iqr:.{_decimals(iqr, 2)}f})"


def time_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    """Milliseconds per call: median [95% interval] (IQR)."""
    return _combine(
        _time_text,
        _intervals(measured, task, "median_ms"),
        _pivot(measured, task, "iqr_ms"),
    )


def compile_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    table = _combine(
        "{0:.1f} / {1:.1f}".format,
        _pivot(measured, task, "compile_cold_s"),
        _pivot(measured, task, "compile_cached_s"),
    )
    return _mark(table, _pivot(measured, task, "compile_cold_reused"), "(reused)")


def memory_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    return _pivot(measured, task, "peak_memory_mib").round(0)


def break_even_steps(
    measured: pd.DataFrame, task: str, compile_column: str = "compile_cold_s", speedup: str = "speedup"
) -> pd.DataFrame:
    """Calls after which a path's extra compile time has paid for itself against eager.

    (compile_path - compile_eager) / (eager's seconds per call x (1 - 1 / speed-up)): infinite
    where the path is not faster per call, nan where its speed-up is unknown. ``speedup`` names the
    column: the point, or a bound of its interval ("speedup_low", "speedup_high").
    """
    per_call = _pivot(measured, task, "median_ms") / 1e3
    if BASELINE not in per_call:
        return per_call * math.nan
    ratio = _pivot(measured, task, speedup).to_numpy(float)
    compile_s = _pivot(measured, task, compile_column)
    extra = np.clip(compile_s.to_numpy(float) - compile_s[[BASELINE]].to_numpy(float), 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        saving = per_call[[BASELINE]].to_numpy() * (1 - 1 / ratio)
        # rounded first: 30 s at 0.1 s a call is 300 calls, not 301 from a rounding error
        steps = np.where(ratio > 1, np.ceil(np.round(extra / saving, 6)), np.inf)
    steps = np.where(np.isnan(ratio), np.nan, steps)
    return pd.DataFrame(steps, index=per_call.index, columns=per_call.columns).drop(columns=BASELINE)


def _steps_text(value: float, fewest: float, most: float) -> str:
    """``120 [80, 300]``; "never" where even the speed-up's upper bound saves nothing per call."""
    if np.isinf(fewest):
        return "never"
    text = "never" if np.isinf(value) else f"{value:.0f}"
    if np.isnan(most):  # no interval (older engines)
        return text
    return f"{text} [{fewest:.0f}, {'never' if np.isinf(most) else f'{most:.0f}'}]"


def break_even_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    """Break-even calls, with the range that the speed-up's 95% interval gives."""
    # The fewest calls come with the largest speed-up.
    bounds = (
        break_even_steps(measured, task, speedup=column)
        for column in ("speedup", "speedup_high", "speedup_low")
    )
    return _combine(_steps_text, *bounds)


def utilization_table(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    def text(tflops: float, utilization: float) -> str:
        share = "peak not measured" if math.isnan(utilization) else f"{utilization:.0%}"
        return f"{tflops:.3g} ({share})"

    table = _combine(text, _pivot(measured, task, "tflops"), _pivot(measured, task, "utilization"))
    return _mark(table, _pivot(measured, task, "utilization") > SUSPECT, "SUSPECT")


# -- verdicts ------------------------------------------------------------------------------------


def _verdict_of(judgement: stats.Judgement | None) -> stats.Judgement | None:
    """The judgement as the verdict takes it: None for a group whose one competing path was compared
    only with its plain reference (no verdict, as before plain references were compared)."""
    if judgement is None or not (judgement.comparisons or judgement.calibration):
        return None
    return judgement


def group_verdicts(measured: pd.DataFrame) -> pd.DataFrame:
    """Per group of single-device cases: its stats.Judgement (or None with the reason), its sampling
    and its schedule."""
    rows = []
    for key, group in measured.groupby(["task", *CASE], sort=False):
        judgement = _verdict_of(group.judgement.iloc[0])
        reason = ""
        if group.round_seconds.isna().all():
            reason = NO_ROUNDS
        elif judgement is None:
            reason = "fewer than two paths to compare"
        sequential = sorted({s for s in group.schedule if s.startswith("sequential")})
        rows.append(
            {
                **dict(zip(["task", *CASE], key, strict=True)),
                "judgement": judgement,
                "reason": reason,
                "workers": group.workers.max(),
                "seconds_per_worker": group.seconds_per_worker.max(),
                "sampling_s": group.sampling_s.max(),
                "group_budget_s": group.group_budget_s.max(),
                "schedule": "; ".join(sequential),
            }
        )
    columns = ["task", *CASE, "judgement", "reason", "workers", "seconds_per_worker", "sampling_s"]
    columns += ["group_budget_s", "schedule"]
    return pd.DataFrame(rows, columns=columns)


def _comparisons(verdicts: pd.DataFrame) -> list[stats.Comparison]:
    return [c for j in verdicts.judgement if j is not None for c in j.comparisons]


def _summary(verdicts: pd.DataFrame) -> str:
    """``a winner in 1 of 2 groups, equivalent in 1; 3 of 4 comparisons decided``."""
    judged = [j for j in verdicts.judgement if j is not None]
    counts = Counter(j.verdict for j in judged)
    parts = [
        f"{label} in {counts[label]}" for label in ("winner", "equivalent", "inconclusive") if counts[label]
    ]
    groups = f"{len(verdicts)} group{'s' if len(verdicts) != 1 else ''}"
    text = f"{groups}: " + ", ".join(parts) if parts else groups
    comparisons = _comparisons(verdicts)
    decided = sum(c.decided for c in comparisons)
    text += f"; {decided} of {len(comparisons)} comparisons decided"
    undecided = len(verdicts) - len(judged)
    return text + (f"; no verdict in {undecided}" if undecided else "")


def _open_cost(row) -> str:
    """What would decide an inconclusive group: more minutes of sampling, or nothing at this margin."""
    judgement = row.judgement
    if np.isfinite(row.seconds_per_worker):
        minutes = judgement.minutes_to_decide(row.seconds_per_worker)
        if minutes is not None:
            return f"about {minutes:.1f} more minutes of sampling should decide it"
    else:
        needed = [c.workers_to_decide(judgement.margin, judgement.run_spread) for c in judgement.comparisons]
        if all(n is not None for n in needed):
            return f"about {max(needed)} workers per path should decide it"
    return f"more sampling would not decide it at a {judgement.margin:.0%} margin (a speed-up on the margin)"


def _group_line(row, break_even: pd.DataFrame, unit: str) -> str:
    text = f"{row.size}px b{row.batch}: "
    if row.judgement is None:
        return text + f"no verdict: {row.reason}"
    judgement = row.judgement
    text += judgement.describe()
    if judgement.verdict == "inconclusive":
        text += f"; {_open_cost(row)}"
    elif judgement.verdict == "winner":
        steps = break_even.get(judgement.best, {}).get((row.size, row.batch, row.precision))
        if steps:  # a compiling winner, with eager measured beside it
            text += f"; its compile pays back after {steps} {unit}"
    if np.isfinite(row.workers):
        text += f"; {int(row.workers)} worker{'s' if row.workers > 1 else ''} per path"
    if np.isfinite(row.sampling_s):
        text += f", {row.sampling_s:.0f} s of rounds and fresh workers (budget {row.group_budget_s:g} s)"
    return text + (f" (rounds not interleaved: {row.schedule})" if row.schedule else "")


def verdicts(measured: pd.DataFrame) -> list[str]:
    """Markdown bullets: per task and precision a summary over its groups, each group below it."""
    if not _has_rounds(measured):
        return [f"No verdict: {NO_ROUNDS}."]
    table = group_verdicts(measured)
    lines = []
    for (task, precision), part in table.groupby(["task", "precision"], sort=False):
        if part.judgement.isna().all():
            lines.append(f"- **{task}, {precision}**: no verdict: {'; '.join(sorted(set(part.reason)))}.")
            continue
        lines.append(f"- **{task}, {precision}**: {_summary(part)}.")
        break_even = break_even_table(measured, task)
        lines += [f"  - {_group_line(row, break_even, UNITS[task])}" for row in part.itertuples()]
    return lines


def calibration_rows(measured: pd.DataFrame) -> pd.DataFrame:
    """Each calibration comparison of a run: nominal and measured effect, speed-up, outcome."""
    rows = []
    for key, group in measured.groupby(["task", *CASE], sort=False):
        judgement = group.judgement.iloc[0]
        if judgement is None or not judgement.calibration:
            continue
        reference = group[group.path == CALIBRATION_REFERENCE].iloc[0]
        extra = group.set_index("path").calibration_extra_ms
        for c in judgement.calibration:
            rows.append(
                {
                    **dict(zip(["task", *CASE], key, strict=True)),
                    "path": c.path,
                    "nominal": calibration_effect(c.path),
                    "measured": extra[c.path] / reference.median_ms,
                    "speedup": c.speedup.value,
                    "low": c.speedup.low,
                    "high": c.speedup.high,
                    "outcome": c.outcome,
                    "workers": c.workers,
                }
            )
    return pd.DataFrame(rows)


def _calibration_section(measured: pd.DataFrame) -> list[str]:
    rows = calibration_rows(measured)
    if rows.empty:
        return []
    shown = rows.assign(
        nominal=rows.nominal.map("{:.0%}".format),
        measured=rows.measured.map("{:.1%}".format),
        speedup=[stats.Interval(*v).format() for v in rows[["speedup", "low", "high"]].to_numpy(float)],
    ).drop(columns=["low", "high"])
    return [
        f"## Calibration: known effects against {CALIBRATION_REFERENCE}",
        "",
        CALIBRATION_NOTE,
        "",
        shown.to_markdown(index=False),
        "",
    ]


INFERENCE_TASKS = ("infer", "tiled")
FRAMEWORK_DEPENDENCIES = {"torch": ("torch",), "jax": ("jax", "flax")}


def _dependencies(path: str, versions: dict[str, str]) -> str:
    """What adopting ``path`` adds to install, with the run's versions: a runtime's packages, or the
    framework it runs on."""
    if path == "torch-aoti":
        return "torch (and a C++ compiler where it is exported)"
    if path in RUNTIME_PATHS:
        names = [name.replace("_", "-") for name in RUNTIME_PACKAGES[path]]
    else:
        names = list(FRAMEWORK_DEPENDENCIES["jax" if path.startswith("jax") else "torch"])
    return ", ".join(f"{name} {versions[name]}" if name in versions else name for name in names)


def _cost(case: pd.Series, versions: dict[str, str]) -> str:
    """``export and build 3.1 s cold, 0.4 s cached; needs onnxruntime 1.32.0, ...``."""
    needs = f"needs {_dependencies(case.path, versions)}"
    if compiles_nothing(case.path):
        return f"nothing to compile; {needs}"
    what = "export and build" if case.path in RUNTIME_PATHS else "compile"
    return f"{what} {case.compile_cold_s:.3g} s cold, {case.compile_cached_s:.3g} s cached; {needs}"


def deployment(measured: pd.DataFrame, versions: dict[str, str]) -> list[str]:
    """Markdown bullets for each inference group that has a runtime: every competing path, fastest
    first, with its speed-up over the group's fastest training-framework path (95% interval, as
    every speed-up), its outcome at the run's margin, and what adopting it costs."""
    lines = []
    inference = measured[measured.task.isin(INFERENCE_TASKS) & measured.round_seconds.notna()]
    for (task, size, batch, precision), group in inference.groupby(["task", *CASE], sort=False):
        competing = group[group.path.map(competes) & ~group.tf32_backward]
        frameworks = competing[~competing.path.isin(RUNTIME_PATHS)]
        judgement = group.judgement.iloc[0]
        if frameworks.empty or judgement is None or not competing.path.isin(RUNTIME_PATHS).any():
            continue
        best = frameworks.loc[frameworks.median_ms.idxmin()]
        lines.append(
            f"- **{task} {size}px b{batch} {precision}**, against {best.path}, its fastest framework path:"
        )
        for case in (row for _, row in competing.sort_values("median_ms").iterrows()):
            if case.path == best.path:
                lines.append(f"  - {case.path}: 1x ({_cost(case, versions)})")
                continue
            interval = stats.group_speedup(
                best.round_seconds, case.round_seconds, judgement.floor, judgement.run_spread
            )
            call = stats.outcome(interval, judgement.margin)
            lines.append(f"  - {case.path}: {interval.format()} {call} ({_cost(case, versions)})")
    return lines


PLAIN_NOTE = (
    "Each of the project's paths against the same U-Net written plainly, as a user would (its speed-up, "
    "95% interval, outcome at the run's margin): below 1x is what the project's own code costs that "
    "path, a handicap the verdicts would carry. In no verdict."
)


def plain_lines(measured: pd.DataFrame) -> list[str]:
    """A bullet per group with a plain reference: each mirrored path's speed-up over it."""
    lines = []
    for (task, size, batch, precision), group in measured.groupby(["task", *CASE], sort=False):
        judgement = group.judgement.iloc[0]
        if judgement is None or not judgement.plain:
            continue
        compared = "; ".join(f"{c.describe()} against {c.against}" for c in judgement.plain)
        lines.append(f"- **{task} {size}px b{batch} {precision}**: {compared}")
    return lines


def rule(margin: float, run_spread: float) -> str:
    """The decision rule, as the report states it."""
    low, high = 1 / (1 + margin), 1 + margin
    return (
        f"Each path of a group (one task, size, batch and precision) is compared with the group's fastest: "
        f"its speed-up's 95% interval decides **faster** (wholly above {high:.2f}x), **slower** (wholly "
        f"below {low:.3f}x), **equivalent** (wholly inside [{low:.3f}, {high:.2f}]) or **inconclusive**, "
        f"the margin being {margin:.0%}, fixed before any run. A group has a **winner** when every other "
        "path is slower; it is **equivalent** when the others are equivalent or slower (pick among the "
        "equivalent by compile time, memory or deployment); else **inconclusive**, with what more "
        "sampling would take. Speed-ups pair the blocks of rounds that the paths ran side by side, one "
        "ratio per worker process, with a t interval over the workers (no narrower than the group's "
        f"pooled spread) widened by a run-to-run spread of {run_spread:.3f} on logs. Rates, times, the "
        f"order and the speed-ups come from one estimate. {' and '.join(PLAIN_PATHS)}, plainly written "
        "references, and the calibration paths are in the tables but in no verdict."
    )


# -- the run's report ----------------------------------------------------------------------------


BY_DESIGN = ("not-applicable", "not-installed")
BY_DESIGN_NOTE = (
    "Cases a path cannot run by design (training on an inference runtime, a precision it lacks) or "
    "without a package it needs; no worker was started for them. One row for all sizes and batches."
)
TIME_NOTE = (
    "Time per call: with several worker processes, the geometric mean of each worker's fastest round "
    "(stray slow rounds, never fast ones, made most of a worker's spread: docs/verdicts.md), with a t "
    "interval over the workers; with one worker, the median round and a bootstrap interval. Rates and "
    "speed-ups come from the same figure."
)
CALIBRATION_NOTE = (
    "Calibration paths: torch eager's call plus N% more of the same real work (3x3 convolutions at "
    "the first level's width, in slices timed against the call by the path's first worker), each with "
    "workers of its own, judged against torch-eager by the same rule as every comparison. measured: "
    "the extra work's median seconds per call over torch-eager's time. The calibration table over many "
    "groups: `python -m bench.calibration RUN_DIR...`."
)
DEPLOY_NOTE = (
    "Each inference group's paths, fastest first, against the group's fastest training-framework "
    "path: the speed-up (95% interval), its outcome at the run's margin, and what "
    "adopting the path costs: its compile time, or for a runtime its export from the canonical "
    "weights (checked against the model) and build, from nothing and from the caches, and what it "
    "needs installed."
)
COMPILE_NOTE = (
    "Cold: a fresh worker with empty compile caches of its own; from the caches: a fresh worker that "
    "finds what the cold one wrote (inductor's FX graph and AOTAutograd caches, JAX's persistent "
    "cache). (reused): the cold figure of an earlier run with the same versions, device, code, spec "
    "and case, whose caches this run kept."
)
OLD_COMPILE_NOTE = (
    "Measured by an engine before cases ran in workers of their own: every case of the run shared one "
    "compile cache folder, so a cold figure after the first case may be partly warm."
)
TF32_NOTE = (
    "TF32-BACKWARD: torch fp32 cases measured by an engine that turned TF32 off around the "
    "forward only; the backward ran outside that context, where cuDNN's default lets fp32 "
    "convs use TF32. They are not IEEE fp32 training, are left out of the verdicts, and should "
    "be measured again with the current engine, which sets precision for the whole process."
)
SIMULATED_NOTE = (
    "These devices share the same cores: the figures test the machinery and say nothing of real scaling."
)
SUSPECT_NOTE = (
    "FLOPs are nominal, those of direct convolution. SUSPECT: above the device's peak measured "
    "for this precision, which the case cannot honestly reach; look for a setting that computes "
    "in a lower precision than the column says before trusting its time."
)


def _memory_note(measured: pd.DataFrame) -> str:
    """How each path's peak memory was measured, as its cases recorded it."""
    methods = measured.groupby("path", sort=False)["memory_method"].agg(lambda m: "; ".join(sorted(set(m))))
    if methods.nunique() == 1:
        return f"Peak memory, every path: {methods.iloc[0]}."
    return (
        "Peak memory, as each path measured it: "
        + "; ".join(f"{path}: {methods[path]}" for path in _path_order(methods.index))
        + "."
    )


def _compile_note(measured: pd.DataFrame) -> str:
    return COMPILE_NOTE if measured.own_workers.all() else OLD_COMPILE_NOTE


def _options_line(section: dict) -> list[str]:
    """What the engine aimed for, as the run's options record it (runs of the older engines: nothing)."""
    options = section.get("options", {})
    if "target_ci" not in options:
        return []
    limit, budget = options.get("max_minutes"), options.get("max_time")
    margin, run_spread = rule_of(section)
    sampling = ""
    if "group_budget" in options:
        sampling = (
            f"; at least {options['replicates']} workers per path, more (up to {options['max_replicates']}) "
            f"while a comparison was inconclusive, within {options['group_budget']:g} s of sampling per group"
        )
    return [
        f"Rounds: interleaved in blocks across each group's paths; in each worker, blocks were added until "
        f"every median's 95% interval was within ±{options['target_ci']:.0%}"
        + (f" or the worker had its share of {budget:g} s of rounds per case" if budget else "")
        + f"{sampling}; margin {margin:.0%}, run-to-run spread {run_spread:.3f}; "
        + (f"no case started after {limit:g} minutes." if limit else "no --max-minutes."),
        "",
    ]


def _failed(failures: pd.DataFrame) -> pd.DataFrame:
    """The cases that should have a number and have none: not those a path cannot run by design."""
    return failures[~failures.status.isin(BY_DESIGN)] if not failures.empty else failures


def _failure_summary(failures: pd.DataFrame) -> str:
    """``none without a number``, ``1 without a number (interrupted)``, ``3 ... (1 error, 2 skipped)``,
    and how many were not applicable or not installed."""
    failed = _failed(failures)
    by_design = len(failures) - len(failed)
    text = "none without a number"
    if not failed.empty:
        counts = failed.status.value_counts().sort_index()
        statuses = counts.index[0] if len(counts) == 1 else ", ".join(f"{n} {s}" for s, n in counts.items())
        text = f"{len(failed)} without a number ({statuses})"
    return text + (f", {by_design} not applicable or not installed" if by_design else "")


def _has_rounds(measured: pd.DataFrame) -> bool:
    """Whether the run kept its rounds (the current engine), so that it has intervals and verdicts."""
    return bool(measured.round_seconds.notna().any())


def _against(measured: pd.DataFrame) -> str:
    if not _has_rounds(measured):
        return f"speed-up against {BASELINE}"
    return (
        f"speed-up against {BASELINE}, 95% interval; then the verdict's outcome against the group's fastest"
    )


def _task_sections(measured: pd.DataFrame, task: str) -> list[str]:
    label, unit = THROUGHPUT[task][1], UNITS[task]
    median = "time [95% interval]" if _has_rounds(measured) else "median"
    return [
        f"## {task}: {label} ({_against(measured)})",
        "",
        _md(throughput_table(measured, task)),
        "",
        f"## {task}: milliseconds per call, {median} (IQR of the rounds)",
        "",
        _md(time_table(measured, task)),
        "",
        TIME_NOTE,
        "",
        f"## {task}: peak memory, MiB",
        "",
        _md(memory_table(measured, task)),
        "",
        _memory_note(measured[measured.task == task]),
        "",
        f"## {task}: compile seconds, cold / from the caches",
        "",
        _md(compile_table(measured, task)),
        "",
        _compile_note(measured),
        "",
        f"## {task}: {unit} until compiling pays back against {BASELINE} (cold compile)",
        "",
        _md(break_even_table(measured, task)),
        "",
        ("In brackets: the range that the speed-up's 95% interval gives. " if _has_rounds(measured) else "")
        + "never: no saving per call.",
        "",
        f"## {task}: achieved TFLOP/s (utilization of the device's measured peak)",
        "",
        _md(utilization_table(measured, task)),
        "",
        SUSPECT_NOTE,
        "",
    ]


def _tasks(measured: pd.DataFrame) -> list[str]:
    return [task for task in THROUGHPUT if not measured.empty and task in set(measured.task)]


def _scaling_sections(scaling: pd.DataFrame, section: dict) -> list[str]:
    simulated = section.get("environment", {}).get("device") == "cpu"
    parts = ["## Data-parallel scaling" + (" (SIMULATED devices sharing one CPU)" if simulated else ""), ""]
    if simulated:
        parts += [SIMULATED_NOTE, ""]
    statistics = "global batch." if section.get("options", {}).get("sync_bn") else "per device."
    return [*parts, f"BatchNorm statistics: {statistics}", "", scaling.round(3).to_markdown(index=False), ""]


def markdown(measured: pd.DataFrame, failures: pd.DataFrame, section: dict, other: pd.DataFrame) -> str:
    env = section.get("environment", {})
    scaling = scaling_table(measured) if not measured.empty else measured
    measured = _single_device(measured)
    parts = [f"# unet-bench run: {env.get('device_name', '?')}", ""]
    spec = section.get("spec")
    if spec:
        parts += [f"Spec: `{json.dumps(spec)}`. Versions: `{json.dumps(env.get('versions', {}))}`.", ""]
    if section.get("rebuilt_from"):
        parts += [f"Rebuilt from {section['rebuilt_from']}.", ""]
    for note in section.get("notes", []):
        parts += [f"Note: {note}.", ""]
    parts += _options_line(section)
    if not measured.empty:
        parts += ["## Which to pick", "", rule(*rule_of(section)), "", *verdicts(measured), ""]
        parts += _calibration_section(measured)
        plain = plain_lines(measured)
        if plain:
            parts += ["### Against plainly written references", "", PLAIN_NOTE, "", *plain, ""]
        deploying = deployment(measured, env.get("versions", {})) if _has_rounds(measured) else []
        if deploying:
            parts += ["### Deploying for inference: the runtimes beside the frameworks", "", DEPLOY_NOTE, ""]
            parts += [*deploying, ""]
    if not measured.empty and measured.tf32_backward.any():
        parts += ["## Precision note", "", TF32_NOTE, ""]
    for task in _tasks(measured):
        parts += _task_sections(measured, task)
    if not scaling.empty:
        parts += _scaling_sections(scaling, section)
    failed = _failed(failures)
    if not failed.empty:
        parts += ["## Cases without a number", "", f"{_failure_summary(failed)}.", ""]
        parts += [failed.to_markdown(index=False), ""]
    if len(failed) < len(failures):
        by_design = failures[failures.status.isin(BY_DESIGN)]
        shown = by_design.drop(columns=["size", "batch"], errors="ignore").drop_duplicates()
        parts += ["## Not applicable or not installed", "", BY_DESIGN_NOTE, ""]
        parts += [shown.to_markdown(index=False), ""]
    if not other.empty:
        parts += ["## Other benchmarks", "", other.round(3).to_markdown(index=False), ""]
    return "\n".join(parts)


def scaling_table(measured: pd.DataFrame) -> pd.DataFrame:
    """Data-parallel cases: img/s, speed-up over one device and efficiency (speed-up / devices)."""
    data = measured[measured.devices.notna()].copy()
    if data.empty:
        return data
    data["per_device_batch"] = (data.batch / data.devices).astype(int)
    base_batch = np.where(data.scaling == "weak", data.per_device_batch, data.batch)
    data["base"] = list(zip(data.path, data.scaling, data["size"], base_batch, data.precision, strict=True))
    one = data[data.devices == 1].set_index("base")["img_per_s"]
    data["speedup"] = data.img_per_s / data.base.map(one)
    data["efficiency"] = data.speedup / data.devices
    columns = ["scaling", "path", "size", "precision", "devices", "batch", "per_device_batch", "img_per_s"]
    return data[[*columns, "speedup", "efficiency"]].sort_values(["scaling", "path", "size", "devices"])


def _subplots(panels: int, width: float, height: float) -> tuple[Any, Any]:
    """A figure of ``panels`` side by side. matplotlib is imported here, not with the module: every
    pytest run loads this module, and matplotlib's import complains of an unusable home folder
    before the run can refuse it in one line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)


def _save_figure(fig: Any, file: Path) -> None:
    """``fig`` as a PNG at ``file``, written atomically; then closed."""
    import matplotlib.pyplot as plt

    try:
        with atomic_output(file) as temporary:
            fig.savefig(temporary, dpi=110, format="png")  # the temporary name has no .png to go by
    finally:
        plt.close(fig)


def _write_csv(table: pd.DataFrame, file: Path, index: bool = False) -> None:
    with atomic_output(file) as temporary:
        table.to_csv(temporary, index=index)


def plot_scaling(table: pd.DataFrame, file: Path, title: str) -> None:
    modes = sorted(set(table.scaling))
    fig, axes = _subplots(len(modes), 5, 3.8)
    for ax, mode in zip(axes[0], modes, strict=True):
        part = table[table.scaling == mode]
        for name in _path_order(set(part.path)):
            line = part[part.path == name].sort_values("devices")
            ax.plot(line.devices, line.img_per_s, marker="o", label=name)
        ax.set(title=f"{mode} scaling", xlabel="devices", ylabel="images / s (global)")
        ax.set_xticks(sorted(set(part.devices)))
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, file)


def plot(measured: pd.DataFrame, file: Path, task: str) -> None:
    """Throughput against image size, a line per path, a panel per precision and batch."""
    data = measured[measured.task == task]
    panels = sorted(set(zip(data.precision, data.batch, strict=True)), key=lambda p: (p[0] != "fp32", p))
    fig, axes = _subplots(len(panels), 4.2, 3.6)
    for ax, (precision, batch) in zip(axes[0], panels, strict=True):
        panel = data[(data.precision == precision) & (data.batch == batch)]
        for name in _path_order(set(panel.path)):
            line = panel[panel.path == name].sort_values("size")
            ax.plot(line["size"], line["img_per_s"], marker="o", label=name)
        ax.set(title=f"{task}, {precision}, batch {batch}", xlabel="image side (px)", ylabel="images / s")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(panel["size"])), [str(s) for s in sorted(set(panel["size"]))])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(measured.device_name.iloc[0])
    fig.tight_layout()
    _save_figure(fig, file)


def write_run(run_dir: Path) -> str:
    """Write a run's tables (Markdown, CSV) and plots next to its benchmark.json; return the Markdown.
    An UnreadableRun where the run's own files cannot be read; siblings that cannot be are left out
    of the index (write_index) and named there."""
    run_dir = Path(run_dir)
    run = _read(run_dir)
    measured, failures, section = _tables(run)
    text = markdown(measured, failures, section, _others(run))
    write_text(run_dir / "report.md", text)
    # The rounds themselves stay in benchmark.json and progress.jsonl.
    _write_csv(measured.drop(columns=INTERNAL, errors="ignore"), run_dir / "cases.csv")
    scaling = scaling_table(measured) if not measured.empty else measured
    if not scaling.empty:
        _write_csv(scaling, run_dir / "scaling.csv")
        simulated = section.get("environment", {}).get("device") == "cpu"
        plot_scaling(scaling, run_dir / "scaling.png", "SIMULATED devices on one CPU" if simulated else "")
    if not failures.empty:
        _write_csv(failures, run_dir / "failures.csv")
    for task in sorted(set(_tasks(_single_device(measured))) - {"tiled"}):
        plot(_single_device(measured), run_dir / f"throughput-{task}.png", task)
    write_index(run_dir.parent)
    return text


def _versions(env: dict) -> str:
    names = {"python": "Python", "torch": "torch", "jax": "jax", "flax": "flax"}
    versions = env.get("versions", {})
    return ", ".join(f"{label} {versions[name]}" for name, label in names.items() if name in versions)


def _no_record(folder: Path) -> bool:
    """Whether ``folder`` is a run that ended no case yet: empty, or its environment.json alone (the
    sweep writes it first). A folder of other files (cells-...) is no run at all."""
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} <= {"environment.json"}


def _index_row(run_dir: Path) -> tuple[str | None, list[str]]:
    """The run's line of the index, or None; and what was left out of it, each naming the folder."""
    if not is_run(run_dir):
        if _no_record(run_dir):
            return None, [f"skipped {run_dir}: no benchmark.json or progress.jsonl (no case ended)"]
        return None, []  # another command's output
    try:
        measured, failures, section = load(run_dir)
    except UnreadableRun as error:
        return None, [f"skipped {run_dir}: {error.file.relative_to(run_dir)} {error.problem}"]
    except Exception as error:  # a sibling the tables cannot take never fails the run being reported
        return None, [f"skipped {run_dir}: cannot be reported ({type(error).__name__}: {error})"]
    env = section.get("environment", {})
    row = (
        f"| [{run_dir.name}]({run_dir.name}/report.md) | {env.get('device_name', '?')} | {len(measured)} "
        f"| {len(_failed(failures))} | {_versions(env)} |"
    )
    return row, [f"{run_dir}: {note}" for note in section.get("notes", [])]


def write_index(results: Path) -> None:
    """results/README.md: one line per run folder in ``results``, made from their JSON. A folder that
    cannot be read (a half-written or corrupt file, a run that ended no case) is left out, and named
    below the table and on stderr, as is a line left out of a run's progress.jsonl."""
    rows, left_out = [], []
    for run_dir in sorted(p for p in Path(results).iterdir() if p.is_dir()):
        row, notes = _index_row(run_dir)
        if row:
            rows.append(row)
        left_out += notes
    lines = [
        "# Measured runs",
        "",
        "Generated by `bench/report.py` from each folder's benchmark.json (or progress.jsonl); never edited "
        "by hand.",
        "",
        "| run | device | cases measured | cases without a number | versions |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if left_out:
        lines += ["", "Left out:", "", *(f"- {note}" for note in left_out)]
    for note in left_out:
        print(f"results index: {note}", file=sys.stderr)
    write_text(Path(results) / "README.md", "\n".join(lines) + "\n")


def merge(run_dirs: list[Path]) -> pd.DataFrame:
    """One table across runs: img/s per path, rows device x task x size x batch x precision."""
    measured = _single_device(pd.concat([load(d)[0] for d in run_dirs], ignore_index=True))
    table = measured.pivot_table(
        index=["device_name", "task", *CASE], columns="path", values="img_per_s", aggfunc="first"
    )
    return table[_path_order(table.columns)]


# -- comparing two runs --------------------------------------------------------------------------


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def _speedup_pairs(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Every case in both runs (torch-eager, 1 by definition, aside): both speed-ups, and whether the
    second lies inside the first's 95% interval (None where the first has no interval)."""
    keys = ["task", *CASE, "path"]
    pairs = first[keys + SPEEDUP].merge(second[keys + SPEEDUP], on=keys, suffixes=("_a", "_b"))
    pairs = pairs[pairs.path != BASELINE]
    a = [stats.Interval(*bounds) for bounds in pairs[[f"{c}_a" for c in SPEEDUP]].to_numpy(float)]
    b = [stats.Interval(*bounds) for bounds in pairs[[f"{c}_b" for c in SPEEDUP]].to_numpy(float)]
    inside = [
        x.contains(y.value) if x.known and np.isfinite(y.value) else None for x, y in zip(a, b, strict=True)
    ]
    return pairs[keys].assign(a=a, b=b, inside=inside)


FLIPPED = {"faster": "slower", "slower": "faster", "equivalent": "equivalent", "inconclusive": "inconclusive"}


def _comparison_rows(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Every comparison of a run's groups, one orientation per pair of paths (the first in path
    order against the second), so that two runs whose fastest paths differ still line up."""
    rows = []
    for row in verdicts.itertuples():
        if row.judgement is None:
            continue
        for c in (*row.judgement.comparisons, *row.judgement.calibration):
            first, second = _path_order([c.path, c.against])
            flip = first != c.path
            interval = stats.Interval(*(1 / v for v in (c.speedup.value, c.speedup.high, c.speedup.low)))
            rows.append(
                {
                    **{k: getattr(row, k) for k in ["task", *CASE]},
                    "path": first,
                    "against": second,
                    "speedup": interval if flip else c.speedup,
                    "outcome": FLIPPED[c.outcome] if flip else c.outcome,
                }
            )
    return pd.DataFrame(rows, columns=["task", *CASE, "path", "against", "speedup", "outcome"])


def contradicts(a: str, b: str) -> bool:
    """Decided one way in one run and the other way, or equivalent, in the other."""
    return a != b and "inconclusive" not in (a, b)


def _decided_line(name: str, rows: pd.DataFrame) -> str:
    decided = int((rows.outcome != "inconclusive").sum())
    counts = rows.outcome.value_counts()
    shown = ", ".join(f"{counts[o]} {o}" for o in stats.OUTCOMES if o in counts)
    return f"- {name} decided {decided} of {len(rows)} comparisons ({shown})"


def _agreement(
    speed: pd.DataFrame, pairs: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str
) -> list[str]:
    """The comparison's summary lines."""
    checked = speed.inside.dropna()
    if len(checked):
        inside = f"{checked.mean():.0%} of {name_b}'s speed-ups lie inside {name_a}'s 95% intervals"
    else:
        inside = f"no 95% intervals in {name_a} to check {name_b}'s speed-ups against"
    both = pairs[(pairs.outcome_a != "inconclusive") & (pairs.outcome_b != "inconclusive")]
    lines = [
        _decided_line(name_a, a),
        _decided_line(name_b, b),
        f"- {int(pairs.contradiction.sum())} of {len(pairs)} comparisons in both runs contradict "
        f"(decided one way in one, the other way or equivalent in the other); "
        f"{len(both)} are decided in both, "
        f"{int((both.outcome_a == both.outcome_b).sum())} of them alike",
        f"- {inside} ({int(checked.sum())} of {len(checked)})",
    ]
    shifts = [abs(math.log(y.value / x.value)) for x, y in zip(speed.a, speed.b, strict=True)]
    shifts = [math.expm1(s) for s in shifts if math.isfinite(s)]
    if shifts:
        median, tenth = np.percentile(shifts, [50, 90])
        lines.append(
            f"- the speed-ups moved between the runs by a median of {median:.1%}, by less than "
            f"{tenth:.1%} in 9 of 10 (90th percentile), at most {max(shifts):.1%}"
        )
    return lines


def compare(run_a: Path, run_b: Path) -> str:
    """Markdown: does RUN_B reproduce RUN_A? Every comparison's outcome in both runs (each run judged
    by its own recorded margin and run-to-run spread), and RUN_B's speed-ups against RUN_A's
    95% intervals."""
    name_a, name_b = Path(run_a).name, Path(run_b).name
    a, b = load(run_a)[0], load(run_b)[0]
    a, b = _single_device(a), _single_device(b)
    if a.empty or b.empty:
        return f"# {name_b} against {name_a}\n\nNo case measured in both runs.\n"
    speed = _speedup_pairs(a, b)
    rows_a, rows_b = _comparison_rows(group_verdicts(a)), _comparison_rows(group_verdicts(b))
    pairs = rows_a.merge(rows_b, on=["task", *CASE, "path", "against"], suffixes=("_a", "_b"))
    pairs["contradiction"] = [
        contradicts(x, y) for x, y in zip(pairs.outcome_a, pairs.outcome_b, strict=True)
    ]
    speed_table = speed.assign(
        a=[x.format() for x in speed.a], b=[y.format() for y in speed.b], inside=speed.inside.map(_yes_no)
    ).rename(columns={"a": name_a, "b": name_b, "inside": "second inside the first's interval"})
    pair_table = pd.DataFrame(
        {
            **{k: pairs[k] for k in ["task", *CASE, "path", "against"]},
            name_a: [f"{i.format()} {o}" for i, o in zip(pairs.speedup_a, pairs.outcome_a, strict=True)],
            name_b: [f"{i.format()} {o}" for i, o in zip(pairs.speedup_b, pairs.outcome_b, strict=True)],
            "contradiction": pairs.contradiction.map(_yes_no),
        }
    )
    return "\n".join(
        [
            f"# {name_b} against {name_a}",
            "",
            *_agreement(speed, pairs, rows_a, rows_b, name_a, name_b),
            "",
            "## Comparisons in both runs (each path's speed-up over the other, and its outcome)",
            "",
            pair_table.to_markdown(index=False) if len(pair_table) else "None.",
            "",
            f"## Speed-ups against {BASELINE}, 95% intervals",
            "",
            speed_table.to_markdown(index=False),
            "",
        ]
    )


def write_comparison(run_a: Path, run_b: Path) -> str:
    """compare(), written to RUN_B/comparison-with-<RUN_A>.md; returns the Markdown. A ValueError,
    writing nothing, for a run against itself or a run with no measured case."""
    if Path(run_a).resolve() == Path(run_b).resolve():
        raise ValueError(f"--compare {run_a} {run_b}: a run against itself reproduces nothing; name two runs")
    empty = [str(run) for run in (run_a, run_b) if load(run)[0].empty]
    if empty:
        raise ValueError(f"--compare: {', '.join(empty)}: no measured case to compare; name runs with cases")
    text = compare(run_a, run_b)
    write_text(Path(run_b) / f"comparison-with-{Path(run_a).name}.md", text)
    return text


# -- the README's result sections ----------------------------------------------------------------


def _engine(measured: pd.DataFrame) -> str:
    if _has_rounds(measured):
        return "the current engine (rounds interleaved in blocks across the paths)"
    engine = (
        "an older engine"
        if measured.own_workers.all()
        else "the first engine (one compile cache for every case)"
    )
    return f"{engine}, without interleaved rounds: no intervals, no verdicts"


def readme_run(run_dir: Path, link: str) -> str:
    """One run's part of the README's results: environment, verdicts, the main tables, the plot."""
    measured, failures, section = load(run_dir)
    measured, env = _single_device(measured), section.get("environment", {})
    margin, _ = rule_of(section)
    engine = f"; measured by {_engine(measured)}" if not measured.empty else ""
    parts = [
        f"### {env.get('device_name', '?')}",
        "",
        f"[{Path(link).name}]({link}/report.md) (every table): {len(measured)} cases measured, "
        f"{_failure_summary(failures)}; {_versions(env)}{engine}.",
        "",
    ]
    if measured.empty:
        return "\n".join(parts)
    parts += [
        f"**Which to pick** (margin {margin:.0%}):",
        "",
        *verdicts(measured),
        "",
    ]
    plain = plain_lines(measured)
    if plain:
        parts += ["**Against plainly written references** (in no verdict):", "", *plain, ""]
    deploying = deployment(measured, env.get("versions", {})) if _has_rounds(measured) else []
    if deploying:
        parts += ["**Deploying for inference** (every path against the fastest framework path):", ""]
        parts += [*deploying, ""]
    if measured.tf32_backward.any():
        parts += [TF32_NOTE, ""]
    for task in _tasks(measured):
        parts += [f"**{README_TITLES[task]} ({_against(measured)}):**", ""]
        parts += [_md(throughput_table(measured, task)), ""]
    # training's compile and memory, or inference's in a run without training (a deployment run)
    main = next((task for task in ("train", "infer") if task in _tasks(measured)), None)
    if main is not None:
        label = {"train": "training", "infer": "inference"}[main]
        parts += [f"**Compile seconds, cold / from the caches ({label}):**", ""]
        parts += [_md(compile_table(measured, main)), "", _compile_note(measured), ""]
        parts += [f"**Peak memory, MiB ({label}):**", "", _md(memory_table(measured, main)), ""]
        parts += [_memory_note(measured[measured.task == main]), ""]
    if (Path(run_dir) / "throughput-train.png").exists():
        parts += [f"![training throughput against image size]({link}/throughput-train.png)", ""]
    return "\n".join(parts)


def readme_block(links: list[str], root: Path) -> str:
    """The README's generated results, markers included; ``links``: run folders relative to ``root``."""
    missing = [link for link in links if not is_run(root / link)]
    if missing:
        raise ValueError(f"not a run folder (no benchmark.json or progress.jsonl): {', '.join(missing)}")
    results = (root / "results").resolve()
    outside = [link for link in links if results not in (root / link).resolve().parents]
    if outside:
        raise ValueError(
            f"{', '.join(outside)}: not under {root / 'results'}; the README links only to the runs "
            "committed there: move the run into results/ first"
        )
    empty = [link for link in links if load(root / link)[0].empty]
    if empty:
        raise ValueError(
            f"{', '.join(empty)}: no measured case (an interrupted or refused run); the README shows "
            "measured runs only: name a run with one"
        )
    begin = f"<!-- begin generated: {README_COMMAND} {' '.join(links)} -->"
    runs = [readme_run(root / link, link) for link in links]
    return "\n".join([begin, "", rule(stats.MARGIN, stats.RUN_SPREAD), "", *runs]) + "<!-- end generated -->"


def _marked(text: str, readme: Path) -> re.Match:
    match = README_BLOCK.search(text)
    if match is None:
        raise ValueError(f"{readme} has no '<!-- begin generated: {README_COMMAND} ... -->' section")
    return match


def readme_runs(readme: Path = README) -> list[str]:
    """The run folders that the README's begin marker names."""
    return _marked(readme.read_text(), readme)["runs"].split()


def _link(run_dir: Path, root: Path) -> str:
    """A run folder as the README names it: relative to the README's folder where it is under it."""
    try:
        return Path(run_dir).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(run_dir).as_posix()


def write_readme(run_dirs: list[Path] | None = None, readme: Path = README) -> None:
    """Replace the README's generated results with those of ``run_dirs`` (default: the runs it names)."""
    text = readme.read_text()
    match = _marked(text, readme)
    root = readme.parent
    links = [_link(d, root) for d in run_dirs] if run_dirs else readme_runs(readme)
    write_text(readme, text[: match.start()] + readme_block(links, root) + text[match.end() :])


def readme_matches(readme: Path = README) -> bool:
    """Whether the README's generated results are what ``--readme`` would write from the runs it names."""
    return _marked(readme.read_text(), readme)[0] == readme_block(readme_runs(readme), readme.parent)


# -- command line --------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace) -> int:
    if args.check:
        if readme_matches():
            return 0
        print(f"{README.name}'s results are not what `{README_COMMAND}` writes: run it", file=sys.stderr)
        return 1
    if args.readme:
        write_readme(args.run_dirs)
        return 0
    if args.compare:
        if len(args.run_dirs) != 2:
            return _fail("--compare takes two run folders: RUN_A RUN_B")
        print(write_comparison(*args.run_dirs))
        return 0
    if not args.run_dirs:
        return _fail("no run folder given")
    if len(args.run_dirs) == 1:
        print(write_run(args.run_dirs[0]))
        return 0
    table = merge(args.run_dirs)
    text = "# Images per second across devices\n\n" + table.round(3).to_markdown() + "\n"
    print(text)
    if args.out:
        write_text(args.out / "cross-device.md", text)
        _write_csv(table, args.out / "cross-device.csv", index=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="results/<date>-<device>/ folders")
    parser.add_argument("--out", type=Path, help="with several runs: write cross-device.md and .csv here")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--compare", action="store_true", help="RUN_A RUN_B: does RUN_B reproduce RUN_A?")
    mode.add_argument("--readme", action="store_true", help="write README.md's results from these runs")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 if README.md's results are not what its runs give now"
    )
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not is_run(d)]
    if missing:
        return _fail(f"not a run folder (no benchmark.json or progress.jsonl): {', '.join(missing)}")
    try:
        return _command(args)
    except ValueError as error:  # a run named that cannot be read, no README markers, an unwritable output
        return _fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
