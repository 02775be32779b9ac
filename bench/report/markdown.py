"""A run's findings as Markdown, built once and laid out two ways: the run's report.md (every table,
each under a heading with its notes) and the results pages (README.md at a glance, docs/results.md
in full: the verdicts and the main tables under bold lines)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import records, stats
from bench.device_names import simulated_devices
from bench.report.cases import BASELINE, counted, path_order, single_device
from bench.report.intervals import rule_of
from bench.report.runs import load
from bench.report.tables import (
    THROUGHPUT,
    break_even_table,
    compile_table,
    markdown_table,
    memory_table,
    scaling_table,
    tasks,
    throughput_table,
    time_table,
    utilization_table,
)
from bench.report.verdicts import (
    UNITS,
    calibration_rows,
    deployment,
    has_rounds,
    plain_lines,
    rule,
    verdicts,
)
from bench.run_config import CALIBRATION_REFERENCE

RESULTS_TITLES = {
    "train": "Training, {images} per second",
    "infer": "Inference, {images} per second",
    "tiled": "Whole image in tiles, megapixels per second",
    "window": "Whole volume by sliding window, megavoxels per second",
}
MAIN_TASK_LABELS = {"train": "training", "infer": "inference"}
PLAIN_NOTE = (
    "Each of the project's paths against the same U-Net written plainly, as a user would (its speed-up, "
    "95% interval, outcome at the run's margin): below 1x is what the project's own code costs that "
    "path, a handicap the verdicts would carry. In no verdict."
)
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


@dataclass(frozen=True)
class Section:
    """A part of a run's findings: ``heading`` in report.md, ``label`` (a bold line, or None for none)
    on the results pages; ``intro`` in report.md only, before the ``body``; ``notes`` after it in both."""

    heading: str
    label: str | None
    body: tuple[str, ...]
    intro: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def in_report(self) -> list[str]:
        return [self.heading, "", *_paragraphs(self.intro), *self.body, "", *_paragraphs(self.notes)]

    def in_results(self) -> list[str]:
        label = [self.label, ""] if self.label else []
        return [*label, *self.body, "", *_paragraphs(self.notes)]


def _paragraphs(texts: tuple[str, ...]) -> list[str]:
    return [line for text in texts for line in (text, "")]


def _memory_note(measured: pd.DataFrame) -> str:
    """How each path's peak memory was measured, as its cases recorded it."""
    methods = measured.groupby("path", sort=False)["memory_method"].agg(lambda m: "; ".join(sorted(set(m))))
    if methods.nunique() == 1:
        return f"Peak memory, every path: {methods.iloc[0]}."
    return (
        "Peak memory, as each path measured it: "
        + "; ".join(f"{path}: {methods[path]}" for path in path_order(methods.index))
        + "."
    )


def _compile_note(measured: pd.DataFrame) -> str:
    return COMPILE_NOTE if measured.own_workers.all() else OLD_COMPILE_NOTE


def _against(measured: pd.DataFrame) -> str:
    if not has_rounds(measured):
        return f"speed-up against {BASELINE}"
    return (
        f"speed-up against {BASELINE}, 95% interval; then the verdict's outcome against the group's fastest"
    )


def _engine(measured: pd.DataFrame) -> str:
    if has_rounds(measured):
        return "the current engine (rounds interleaved in blocks across the paths)"
    engine = (
        "an older engine"
        if measured.own_workers.all()
        else "the first engine (one compile cache for every case)"
    )
    return f"{engine}, without interleaved rounds: no intervals, no verdicts"


def failed(failures: pd.DataFrame) -> pd.DataFrame:
    """The cases that should have a number and have none: not those a path cannot run by design."""
    return failures[~failures.status.isin(records.BY_DESIGN)] if not failures.empty else failures


def _failure_summary(failures: pd.DataFrame) -> str:
    """``none without a number``, ``1 without a number (interrupted)``, ``3 ... (1 error, 2 skipped)``,
    and how many were not applicable or not installed."""
    without = failed(failures)
    by_design = len(failures) - len(without)
    text = "none without a number"
    if not without.empty:
        counts = without.status.value_counts().sort_index()
        statuses = counts.index[0] if len(counts) == 1 else ", ".join(f"{n} {s}" for s, n in counts.items())
        text = f"{len(without)} without a number ({statuses})"
    return text + (f", {by_design} not applicable or not installed" if by_design else "")


def versions(env: dict) -> str:
    """``Python 3.11.7, torch 2.13.0+cpu, jax 0.10.2, flax 0.12.8``: the versions a run recorded."""
    names = {"python": "Python", "torch": "torch", "jax": "jax", "flax": "flax"}
    recorded = env.get("versions", {})
    return ", ".join(f"{label} {recorded[name]}" for name, label in names.items() if name in recorded)


# -- the sections, each built once ---------------------------------------------------------------


def _findings(measured: pd.DataFrame, section: dict) -> list[Section]:
    """The verdicts, the plain references, the runtimes for inference and the precision note."""
    margin, run_spread = rule_of(section)
    parts = [
        Section(
            "## Which to pick",
            f"**Which to pick** (margin {margin:.0%}):",
            tuple(verdicts(measured)),
            intro=(rule(margin, run_spread),),
        )
    ]
    plain = plain_lines(measured)
    if plain:
        label = "**Against plainly written references** (in no verdict):"
        parts.append(Section("### Against plainly written references", label, tuple(plain), (PLAIN_NOTE,)))
    env = section.get("environment", {})
    deploying = deployment(measured, env.get("versions", {})) if has_rounds(measured) else []
    if deploying:
        heading = "### Deploying for inference: the runtimes beside the frameworks"
        label = "**Deploying for inference** (every path against the fastest framework path):"
        parts.append(Section(heading, label, tuple(deploying), (DEPLOY_NOTE,)))
    if measured.tf32_backward.any():
        parts.append(Section("## Precision note", None, (TF32_NOTE,)))
    return parts


def _calibration(measured: pd.DataFrame) -> list[Section]:
    rows = calibration_rows(measured)
    if rows.empty:
        return []
    shown = rows.assign(
        nominal=rows.nominal.map("{:.0%}".format),
        measured=rows.measured.map("{:.1%}".format),
        speedup=[stats.Interval(*v).format() for v in rows[["speedup", "low", "high"]].to_numpy(float)],
    ).drop(columns=["low", "high"])
    heading = f"## Calibration: known effects against {CALIBRATION_REFERENCE}"
    return [Section(heading, None, (shown.to_markdown(index=False),), (CALIBRATION_NOTE,))]


def _throughput(measured: pd.DataFrame, task: str) -> Section:
    images = counted(measured)
    heading = f"## {task}: {THROUGHPUT[task][1].format(images=images)} ({_against(measured)})"
    label = f"**{RESULTS_TITLES[task].format(images=images)} ({_against(measured)}):**"
    return Section(heading, label, (markdown_table(throughput_table(measured, task)),))


def _time(measured: pd.DataFrame, task: str) -> Section:
    median = "time [95% interval]" if has_rounds(measured) else "median"
    heading = f"## {task}: milliseconds per call, {median} (IQR of the rounds)"
    return Section(heading, None, (markdown_table(time_table(measured, task)),), notes=(TIME_NOTE,))


def _memory(measured: pd.DataFrame, task: str) -> Section:
    label = f"**Peak memory, MiB ({MAIN_TASK_LABELS.get(task, task)}):**"
    note = _memory_note(measured[measured.task == task])
    table = markdown_table(memory_table(measured, task))
    return Section(f"## {task}: peak memory, MiB", label, (table,), notes=(note,))


def _compile(measured: pd.DataFrame, task: str) -> Section:
    heading = f"## {task}: compile seconds, cold / from the caches"
    label = f"**Compile seconds, cold / from the caches ({MAIN_TASK_LABELS.get(task, task)}):**"
    table = markdown_table(compile_table(measured, task))
    return Section(heading, label, (table,), notes=(_compile_note(measured),))


def _break_even(measured: pd.DataFrame, task: str) -> Section:
    heading = f"## {task}: {UNITS[task]} until compiling pays back against {BASELINE} (cold compile)"
    ranges = "In brackets: the range that the speed-up's 95% interval gives. " if has_rounds(measured) else ""
    table = markdown_table(break_even_table(measured, task))
    return Section(heading, None, (table,), notes=(ranges + "never: no saving per call.",))


def _utilization(measured: pd.DataFrame, task: str) -> Section:
    heading = f"## {task}: achieved TFLOP/s (utilization of the device's measured peak)"
    table = markdown_table(utilization_table(measured, task))
    return Section(heading, None, (table,), notes=(SUSPECT_NOTE,))


def _scaling(scaling: pd.DataFrame, section: dict) -> Section:
    simulated = simulated_devices(section.get("environment", {}).get("device", ""))
    heading = "## Data-parallel scaling" + (" (SIMULATED devices sharing one CPU)" if simulated else "")
    statistics = "global batch." if section.get("options", {}).get("sync_bn") else "per device."
    intro = (*((SIMULATED_NOTE,) if simulated else ()), f"BatchNorm statistics: {statistics}")
    return Section(heading, None, (scaling.round(3).to_markdown(index=False),), intro)


def _without_a_number(failures: pd.DataFrame) -> list[Section]:
    parts = []
    without = failed(failures)
    if not without.empty:
        summary = f"{_failure_summary(without)}."
        table = without.to_markdown(index=False)
        parts.append(Section("## Cases without a number", None, (table,), (summary,)))
    if len(without) < len(failures):
        by_design = failures[failures.status.isin(records.BY_DESIGN)]
        shown = by_design.drop(columns=["size", "batch"], errors="ignore").drop_duplicates()
        heading = "## Not applicable or not installed"
        parts.append(Section(heading, None, (shown.to_markdown(index=False),), (BY_DESIGN_NOTE,)))
    return parts


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
    # runs before --warm-up (a fixed 3 s) do not record it
    warm_up = f"after {options['warm_up']:g} s of untimed blocks, " if "warm_up" in options else ""
    return [
        f"Rounds: interleaved in blocks across each group's paths; in each worker, {warm_up}blocks were "
        f"added until every median's 95% interval was within ±{options['target_ci']:.0%}"
        + (f" or the worker had its share of {budget:g} s of rounds per case" if budget else "")
        + f"{sampling}; margin {margin:.0%}, run-to-run spread {run_spread:.3f}; "
        + (f"no case started after {limit:g} minutes." if limit else "no --max-minutes."),
        "",
    ]


# -- the two layouts -----------------------------------------------------------------------------


def report_markdown(
    measured: pd.DataFrame, failures: pd.DataFrame, section: dict, other: pd.DataFrame
) -> str:
    """A run's report.md: every section under its heading."""
    env = section.get("environment", {})
    scaling = scaling_table(measured) if not measured.empty else measured
    measured = single_device(measured)
    parts = [f"# unet-bench run: {env.get('device_name', '?')}", ""]
    spec = section.get("spec")
    if spec:
        parts += [f"Spec: `{json.dumps(spec)}`. Versions: `{json.dumps(env.get('versions', {}))}`.", ""]
    if section.get("rebuilt_from"):
        parts += [f"Rebuilt from {section['rebuilt_from']}.", ""]
    for note in section.get("notes", []):
        parts += [f"Note: {note}.", ""]
    parts += _options_line(section)
    sections = []
    if not measured.empty:
        findings = _findings(measured, section)
        sections += [*findings[:1], *_calibration(measured), *findings[1:]]
    for task in tasks(measured):
        sections += [_throughput(measured, task), _time(measured, task), _memory(measured, task)]
        sections += [_compile(measured, task), _break_even(measured, task), _utilization(measured, task)]
    if not scaling.empty:
        sections.append(_scaling(scaling, section))
    sections += _without_a_number(failures)
    if not other.empty:
        sections.append(Section("## Other benchmarks", None, (other.round(3).to_markdown(index=False),)))
    return "\n".join(parts + [line for part in sections for line in part.in_report()])


def _run_line(measured: pd.DataFrame, failures: pd.DataFrame, env: dict, link: str) -> str:
    engine = f"; measured by {_engine(measured)}" if not measured.empty else ""
    return (
        f"[{Path(link).name}]({link}/report.md) (every table): {len(measured)} cases measured, "
        f"{_failure_summary(failures)}; {versions(env)}{engine}."
    )


def results_run(run_dir: Path, link: str) -> str:
    """One run's part of the results in full: environment, verdicts, the main tables, the plot;
    ``link``: the run folder, relative to the page."""
    measured, failures, section = load(run_dir)
    measured, env = single_device(measured), section.get("environment", {})
    parts = [f"### {env.get('device_name', '?')}", "", _run_line(measured, failures, env, link), ""]
    if measured.empty:
        return "\n".join(parts)
    sections = _findings(measured, section) + [_throughput(measured, task) for task in tasks(measured)]
    # training's compile and memory, or inference's in a run without training (a deployment run)
    main = next((task for task in ("train", "infer") if task in tasks(measured)), None)
    if main is not None:
        sections += [_compile(measured, main), _memory(measured, main)]
    parts += [line for part in sections for line in part.in_results()]
    if (Path(run_dir) / "throughput-train.png").exists():
        parts += [f"![training throughput against image size]({link}/throughput-train.png)", ""]
    return "\n".join(parts)


def glance_run(run_dir: Path, link: str, full: str) -> str:
    """One run at a glance: its device, links to its report and to ``full`` (the page with its main
    tables), and its verdicts."""
    measured, failures, section = load(run_dir)
    measured, env = single_device(measured), section.get("environment", {})
    margin, _ = rule_of(section)
    line = (
        f"**{env.get('device_name', '?')}**, [{Path(link).name}]({link}/report.md) ([main tables]({full})): "
        f"{len(measured)} cases measured, {_failure_summary(failures)}; margin {margin:.0%}."
    )
    return "\n".join([line, "", *(verdicts(measured) if not measured.empty else []), ""])
