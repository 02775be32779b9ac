"""``--compare RUN_A RUN_B``: does a second run reproduce a first? Every comparison's outcome in both
runs, each judged by its own recorded margin and run-to-run spread, and the second's speed-ups against
the first's 95% intervals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench import stats
from bench.report.cases import BASELINE, CASE, SPEEDUP, path_order, single_device
from bench.report.runs import load
from bench.report.verdicts import group_verdicts
from impls.files import write_text

COMPARISON_PREFIX = "comparison-with-"  # RUN_B/comparison-with-<RUN_A>.md


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
            first, second = path_order([c.path, c.against])
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
    a, b = single_device(a), single_device(b)
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
    write_text(Path(run_b) / f"{COMPARISON_PREFIX}{Path(run_a).name}.md", text)
    return text
