"""How often the verdict rule calls known effects, from the committed raw rounds of calibration runs.

``pytest --benchmark-only --calibration 0,5,10,20`` adds paths ``torch-eager+N%``:
torch eager's call plus N% more of the same real work, each with workers of its
own. Every group of such a run is one trial per effect: the rule (bench/stats.py,
as every report applies it) calls each calibration path faster, slower,
equivalent or inconclusive against torch-eager. This command pools the trials
of the runs it is given:

    python -m bench.calibration RUN_DIR...               # the table: outcomes per effect, the bars
    python -m bench.calibration --run-spread RUN_DIR...  # the run-to-run spread those runs show
    python -m bench.calibration --worker-figures RUN_DIR...  # workers' spread by median, by fastest

``--run-spread`` estimates what a run's workers cannot show: the variance of a
group's log speed-up across groups and sessions beyond its own workers' share
(a one-way random-effects estimate, per effect, pooled). It needs groups from at
least two pytest sessions; the runs it is computed from are never the ones the
table cites as the rule's evidence (docs/verdicts.md, "Calibration: how often the rule is right").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench import report, stats
from bench.report.verdicts import calibration_rows
from bench.run_config import CALIBRATION_REFERENCE, calibration_effect
from impls.files import check_named_output, write_text

# The bars of the calibration table: the A/A comparison (0%) and the power to call slowdowns.
BARS = {
    0: "called faster or slower in at most 1 group of 30, equivalent in at least 80%, and its 95% "
    "intervals contain 1.00 in at least 90%",
    10: "called slower in at least 80%",
    20: "called slower in at least 95%",
}


def trials(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per calibration comparison of every group of the runs: its run, nominal and measured
    effect, speed-up and interval, outcome, workers, and its workers' own mean and variance of the
    mean (on logs), for the run-to-run spread."""
    frames = []
    for run_dir in run_dirs:
        measured = report.load(run_dir)[0]
        if measured.empty:  # a session stopped before its first group ended
            continue
        rows = calibration_rows(measured[measured.devices.isna()])
        if rows.empty:
            continue
        rounds = {
            (r.task, r.size, r.batch, r.precision, r.path): r.round_seconds for r in measured.itertuples()
        }
        means, variances = [], []
        for row in rows.itertuples():
            key = (row.task, row.size, row.batch, row.precision)
            logs = np.log(
                stats.worker_speedups(rounds[(*key, CALIBRATION_REFERENCE)], rounds[(*key, row.path)])
            )
            means.append(float(logs.mean()))
            variances.append(float(logs.var(ddof=1) / logs.size) if logs.size > 1 else np.nan)
        frames.append(rows.assign(run=Path(run_dir).name, log_mean=means, log_variance=variances))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table(found: pd.DataFrame) -> pd.DataFrame:
    """Per nominal effect: groups, the share of each outcome, how often the interval holds 1.00 and
    the measured effect, the median measured effect and workers."""
    rows = []
    for nominal, part in found.groupby("nominal"):
        counts = part.outcome.value_counts()
        rows.append(
            {
                "effect": f"{nominal:.0%}",
                "groups": len(part),
                "runs": part.run.nunique(),
                **{o: int(counts.get(o, 0)) for o in stats.OUTCOMES},
                "measured effect (median)": f"{part.measured.median():.1%}",
                "interval holds 1.00": f"{((part.low <= 1) & (part.high >= 1)).mean():.0%}",
                "workers (median)": float(part.workers.median()),
            }
        )
    return pd.DataFrame(rows)


def bars(found: pd.DataFrame) -> list[str]:
    """Each bar of the issue's calibration, met or not, with the figures behind it."""
    lines = []
    for percent, text in BARS.items():
        part = found[np.isclose(found.nominal, percent / 100)]
        if part.empty:
            lines.append(f"- {percent}%: no groups")
            continue
        n = len(part)
        shares = {o: (part.outcome == o).mean() for o in stats.OUTCOMES}
        if percent == 0:
            wrong = int(part.outcome.isin(["faster", "slower"]).sum())
            holds = ((part.low <= 1) & (part.high >= 1)).mean()
            met = wrong <= max(1, n // 30) and shares["equivalent"] >= 0.8 and holds >= 0.9
            figures = (
                f"{wrong} faster or slower, {shares['equivalent']:.0%} equivalent, 1.00 inside {holds:.0%}"
            )
        else:
            need = 0.8 if percent == 10 else 0.95
            met = shares["slower"] >= need
            figures = f"{shares['slower']:.0%} slower"
        status = ("met" if met else "not met") + ("" if n >= 30 else f" so far, {n} of 30 groups")
        lines.append(f"- {percent}% ({text}): {status}: {figures} in {n} groups")
    return lines


def run_spread(found: pd.DataFrame) -> tuple[float, str]:
    """The run-to-run sd on logs, and how it was reached: per effect and kind of group (task, size,
    batch, precision: the slices that make an effect weigh differently in each), the variance of the
    groups' mean log speed-ups across runs less the mean of their own variances of the mean, pooled
    over all of them (weighted by degrees of freedom), floored at 0."""
    excess, weights, lines = [], [], []
    for (nominal, *kind), part in found.groupby(["nominal", "task", "size", "batch", "precision"]):
        if len(part) < 2:
            continue
        between = float(part.log_mean.var(ddof=1))
        within = float(part.log_variance.mean())
        excess.append(between - within)
        weights.append(len(part) - 1)
        lines.append(
            f"- {nominal:.0%}, {' '.join(map(str, kind))}: {len(part)} groups in {part.run.nunique()} runs: "
            f"variance of their log speed-ups {between:.6f}, their own (mean) {within:.6f}"
        )
    if not excess:
        raise ValueError("no effect has two groups: nothing to estimate a run-to-run spread from")
    pooled = max(0.0, float(np.average(excess, weights=weights)))
    return float(np.sqrt(pooled)), "\n".join(lines)


FIGURES = {"median": np.median, "fastest": np.min}  # a worker's figure, as the report had it and has it


def worker_figure_spreads(run_dirs: list[Path]) -> pd.DataFrame:
    """Per group kind and calibration path: the speed-up over torch-eager and the sd of the workers'
    log ratios, with each worker's figure its median round or its fastest one (the choice behind
    stats.worker_figures)."""
    rows = []
    for run_dir in run_dirs:
        measured = report.load(run_dir)[0]
        if measured.empty:
            continue
        for key, group in measured[measured.devices.isna()].groupby(["task", "size", "batch", "precision"]):
            rounds = dict(zip(group.path, group.round_seconds, strict=True))
            reference = rounds.get(CALIBRATION_REFERENCE)
            for path in (p for p in rounds if calibration_effect(p) is not None and reference):
                row = {"run": Path(run_dir).name, "group": " ".join(map(str, key)), "path": path}
                for name, figure in FIGURES.items():
                    logs = []
                    for worker in sorted(set(reference[2])):
                        mine = [
                            s for s, w in zip(rounds[path][0], rounds[path][2], strict=True) if w == worker
                        ]
                        theirs = [s for s, w in zip(reference[0], reference[2], strict=True) if w == worker]
                        logs.append(np.log(figure(theirs) / figure(mine)))
                    row[f"{name}: speed-up"] = float(np.exp(np.mean(logs)))
                    row[f"{name}: sd"] = float(np.std(logs, ddof=1))
                rows.append(row)
    return pd.DataFrame(rows)


def markdown(found: pd.DataFrame, run_dirs: list[Path]) -> str:
    return "\n".join(
        [
            "# Calibration: the rule on known effects",
            "",
            f"Generated by `python -m bench.calibration {' '.join(str(d) for d in run_dirs)}` from the runs' "
            "raw rounds; every group judged by the rule its run recorded.",
            "",
            table(found).to_markdown(index=False),
            "",
            "Bars (README, 'Calibration'):",
            "",
            *bars(found),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="runs made with --calibration")
    parser.add_argument("--run-spread", action="store_true", help="estimate the run-to-run spread instead")
    parser.add_argument(
        "--worker-figures",
        action="store_true",
        help="instead: each calibration comparison's workers' spread, by median and by fastest round",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file (OUT.md)")
    parser.add_argument("--force", action="store_true", help="replace OUT.md if it exists")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.run_dirs if not report.is_run(d)]
    if missing:
        print(
            f"error: not a run folder (no benchmark.json or progress.jsonl): {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    try:
        if args.out:
            check_named_output(args.out, suffix=".md", force=args.force)
        if args.worker_figures:
            print(worker_figure_spreads(args.run_dirs).round(3).to_markdown(index=False))
            return 0
        found = trials(args.run_dirs)
        if found.empty:
            raise ValueError("these runs have no calibration paths: make them with --calibration 0,5,10,20")
        if args.run_spread:
            if found.run.nunique() < 2:
                raise ValueError("a run-to-run spread needs groups from at least two runs (pytest sessions)")
            value, how = run_spread(found)
            print(f"{how}\nrun-to-run spread (sd on logs): {value:.4f}")
            return 0
    except (ValueError, report.UnreadableRun) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = markdown(found, args.run_dirs)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
