"""What a run answers: each group's verdict at the run's margin (with what would decide an open one),
the calibration paths against their reference, each project path against its plain reference, and
for inference the runtimes beside the frameworks with what adopting each costs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from bench import stats
from bench.report.cases import CASE
from bench.report.intervals import verdict_of
from bench.report.tables import break_even_table
from bench.run_config import (
    CALIBRATION_REFERENCE,
    PLAIN_PATHS,
    RUNTIME_PACKAGES,
    RUNTIME_PATHS,
    calibration_effect,
    competes,
    compiles_nothing,
    size_label,
)

NO_ROUNDS = "this run has no interleaved rounds (older engine)"
UNITS = {
    "train": "train steps",
    "infer": "forward passes",
    "tiled": "whole images",
    "window": "whole volumes",
}
INFERENCE_TASKS = ("infer", "tiled", "window")
FRAMEWORK_DEPENDENCIES = {"torch": ("torch",), "jax": ("jax", "flax")}


def has_rounds(measured: pd.DataFrame) -> bool:
    """Whether the run kept its rounds (the current engine), so that it has intervals and verdicts."""
    return bool(measured.round_seconds.notna().any())


def group_verdicts(measured: pd.DataFrame) -> pd.DataFrame:
    """Per group of single-device cases: its stats.Judgement (or None with the reason), its sampling
    and its schedule."""
    rows = []
    for key, group in measured.groupby(["task", *CASE], sort=False):
        judgement = verdict_of(group.judgement.iloc[0])
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
                "dims": group.dims.iloc[0],
            }
        )
    columns = ["task", *CASE, "judgement", "reason", "workers", "seconds_per_worker", "sampling_s"]
    columns += ["group_budget_s", "schedule", "dims"]
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
    text = f"{size_label(row.size, row.dims)} b{row.batch}: "
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
    if not has_rounds(measured):
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
            f"- **{task} {size_label(size, best.dims)} b{batch} {precision}**, against {best.path}, its "
            "fastest framework path:"
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


def plain_lines(measured: pd.DataFrame) -> list[str]:
    """A bullet per group with a plain reference: each mirrored path's speed-up over it."""
    lines = []
    for (task, size, batch, precision), group in measured.groupby(["task", *CASE], sort=False):
        judgement = group.judgement.iloc[0]
        if judgement is None or not judgement.plain:
            continue
        compared = "; ".join(f"{c.describe()} against {c.against}" for c in judgement.plain)
        label = size_label(size, group.dims.iloc[0])
        lines.append(f"- **{task} {label} b{batch} {precision}**: {compared}")
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
