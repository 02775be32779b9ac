"""Comparison tables and plots, built with pandas from pytest-benchmark's JSON.

``python -m bench.report RUN_DIR`` rebuilds one run's tables; with several run
directories (other machines, other GPUs) it merges them into one cross-device
table. A run directory holds ``benchmark.json``: pytest-benchmark's own data,
with this suite's ``extra_info`` per benchmark and a ``unet_bench`` section
(spec, environment, options, failed cases). A sweep that was killed outright
(SIGKILL, a lost machine) wrote no ``benchmark.json``; its ``progress.jsonl``,
one record per case written as each case ended, rebuilds the same tables.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

BASELINE = "torch-eager"
CASE = ["size", "batch", "precision"]
# What a task's throughput is counted in: images, or for a tiled whole image its pixels.
THROUGHPUT = {
    "train": ("img_per_s", "images per second"),
    "infer": ("img_per_s", "images per second"),
    "tiled": ("megapixels_per_s", "megapixels per second"),
}
FAILURE_COLUMNS = ("path", "task", "size", "batch", "precision", "device", "devices", "scaling")
UNITS = {"train": "train steps", "infer": "forward passes", "tiled": "whole images"}


SUSPECT = 1.0  # of the device's measured peak: more is physically suspect, never explained away


def _from_progress(run_dir: Path) -> dict:
    """benchmark.json's shape, from the records of progress.jsonl (a run that never finished)."""
    lines = (Path(run_dir) / "progress.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    benchmarks = [
        {"name": f"test_unet[{r['id']}]", "stats": r["stats"], "extra_info": r}
        for r in records
        if r.get("status") == "ok" and "stats" in r
    ]
    section = {
        "failures": [r for r in records if r.get("status") != "ok"],
        "rebuilt_from": "progress.jsonl (the sweep ended before it wrote benchmark.json)",
    }
    environment = Path(run_dir) / "environment.json"
    if environment.exists():  # written when the sweep started
        section["environment"] = json.loads(environment.read_text())
    specs = [r["case"]["spec"] for r in records if "spec" in r.get("case", {})]
    if specs:
        section["spec"] = specs[0]
    return {"benchmarks": benchmarks, "unet_bench": section}


def _read(run_dir: Path) -> dict:
    path = Path(run_dir) / "benchmark.json"
    return json.loads(path.read_text()) if path.exists() else _from_progress(run_dir)


def others(run_dir: Path) -> pd.DataFrame:
    """The run's benchmarks that are not U-Net cases (the timer check, the weight map)."""
    return pd.DataFrame(
        [
            {
                "benchmark": bench["name"],
                "median_ms": bench["stats"]["median"] * 1e3,
                "iqr_ms": bench["stats"]["iqr"] * 1e3,
                "rounds": bench["stats"]["rounds"],
                "details": json.dumps(bench["extra_info"]),
            }
            for bench in _read(run_dir)["benchmarks"]
            if "images_per_second" not in bench["extra_info"]
        ]
    )


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


def load(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(measured cases, failed cases, the run's unet_bench section)."""
    data = _read(run_dir)
    rows = []
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        if "images_per_second" not in info:  # see others()
            continue
        stats = bench["stats"]
        rows.append(
            {
                **{k: info[k] for k in ("path", "task", *CASE, "device_name", "gflop_per_image")},
                "img_per_s": info["images_per_second"],
                "megapixels_per_s": info.get("megapixels_per_second", math.nan),
                "median_ms": stats["median"] * 1e3,
                "iqr_ms": stats["iqr"] * 1e3,
                "min_ms": stats["min"] * 1e3,
                "max_ms": stats["max"] * 1e3,
                "rounds": stats["rounds"],
                "tflops": info["tflops"],
                "utilization": info["utilization"],
                "peak_memory_mib": (info["peak_memory_bytes"] or math.nan) / 2**20,
                "compile_cold_s": info["compile_seconds_cold"],
                "compile_cold_reused": bool(info.get("compile_cold_reused", False)),
                "own_workers": "compile_cold_reused" in info,  # measured by the engine of per-case workers
                "compile_cached_s": info["compile_seconds_cached"],
                "devices": info.get("devices") or math.nan,
                "scaling": info.get("scaling"),
                "tf32_backward": _tf32_backward(info),
                "memory_method": info.get("settings", {}).get("memory", "?"),
            }
        )
    measured = pd.DataFrame(rows)
    if not measured.empty:
        measured["devices"] = measured["devices"].astype(float)
    section = data.get("unet_bench", {})
    # A record without a status is a case cut short by a version that did not name it so.
    failures = pd.DataFrame(
        [
            {
                **{k: f["case"].get(k) for k in FAILURE_COLUMNS if k in f["case"]},
                "status": f.get("status", "interrupted"),
                "message": f.get("message", ""),
            }
            for f in section.get("failures", [])
        ]
    )
    return measured, failures, section


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


def _md(table: pd.DataFrame) -> str:
    """Markdown with the case as plain columns (size, batch, precision)."""
    return table.reset_index().to_markdown(index=False)


def _pivot(measured: pd.DataFrame, task: str, value: str) -> pd.DataFrame:
    table = measured[measured.task == task].pivot_table(
        index=CASE, columns="path", values=value, aggfunc="first"
    )
    return table[[p for p in _path_order(table.columns)]]


def _path_order(paths) -> list[str]:
    return sorted(paths, key=lambda p: (p != BASELINE, p != "torch-compile", p))


def speedups(measured: pd.DataFrame, task: str) -> pd.DataFrame:
    throughput = _pivot(measured, task, "img_per_s")
    return throughput.div(throughput[BASELINE], axis=0) if BASELINE in throughput else throughput * math.nan


def break_even_steps(
    measured: pd.DataFrame, task: str, compile_column: str = "compile_cold_s"
) -> pd.DataFrame:
    """Calls after which a path's extra compile time has paid for itself against eager.

    (compile_path - compile_eager) / (seconds per call of eager - of the path);
    infinite where the path is not faster per call.
    """
    per_call = _pivot(measured, task, "median_ms") / 1e3
    compile_s = _pivot(measured, task, compile_column)
    if BASELINE not in per_call:
        return per_call * math.nan
    gain = per_call[[BASELINE]].to_numpy() - per_call.to_numpy()
    extra = compile_s.to_numpy() - compile_s[[BASELINE]].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(gain > 0, np.ceil(np.clip(extra, 0, None) / gain), np.inf)
    return pd.DataFrame(steps, index=per_call.index, columns=per_call.columns).drop(columns=BASELINE)


def _cells(first: pd.DataFrame, second: pd.DataFrame, template: str) -> pd.DataFrame:
    """Two tables of the same shape as one of text cells, e.g. template "{0:.3g} ({1:.2f}x)"."""
    return pd.DataFrame(
        {c: [template.format(a, b) for a, b in zip(first[c], second[c], strict=True)] for c in first},
        index=first.index,
    )


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


def plot_scaling(table: pd.DataFrame, file: Path, title: str) -> None:
    modes = sorted(set(table.scaling))
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 3.8), squeeze=False)
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
    fig.savefig(file, dpi=110)
    plt.close(fig)


TIE = 1.03  # closer than this (geometric mean over the cases) is within a run's spread


def verdicts(measured: pd.DataFrame) -> list[str]:
    """A 'which to pick' line per task and precision.

    The pick is the path with the best geometric-mean speed-up over the cases;
    its margin is against the runner-up, its lead is lost where another path
    is faster, and a path that compiles pays back after the break-even count.
    """
    lines = []
    for (task, precision), group in measured.groupby(["task", "precision"], sort=False):
        if group.tf32_backward.any():  # not the precision the verdict would claim: no verdict from them
            group = group[~group.tf32_backward]
            if BASELINE not in set(group.path):
                lines.append(
                    f"**{task}, {precision}**: no verdict: torch's rows ran their backward in TF32 "
                    "(see the precision note), so they cannot be compared with full-fp32 ones."
                )
                continue
        ratios = speedups(group, task)
        score = ratios.apply(_geomean).sort_values(ascending=False)
        best, runner_up = score.index[0], (score.index[1] if len(score) > 1 else None)
        winners = _pivot(group, task, THROUGHPUT[task][0]).idxmax(axis=1)
        unit = UNITS[task]
        line = (
            f"**{task}, {precision}**: {best}, {score[best]:.2f}x {BASELINE} (geometric mean over "
            f"{len(winners)} cases; {ratios[best].min():.2f}x to {ratios[best].max():.2f}x), fastest in "
            f"{int((winners == best).sum())} of them."
        )
        if runner_up is not None:
            margin = score[best] / score[runner_up]
            line += f" Runner-up {runner_up}, {margin:.2f}x behind"
            line += f": within {TIE - 1:.0%}, a tie at this spread." if margin < TIE else "."
        if best != BASELINE:
            steps = break_even_steps(group, task)[best]
            if np.isfinite(steps).all():
                line += (
                    f" Its compile time pays for itself after {int(steps.median())} {unit} (median; "
                    f"{int(steps.min())} to {int(steps.max())}): for shorter runs {BASELINE} finishes first."
                )
            else:
                line += f" In some cases it never pays back its compile time against {BASELINE}."
        lost = winners[winners != best]
        if len(lost):
            where = ", ".join(f"{s}px b{b}" for s, b, _ in lost.index)
            line += f" It loses its lead at {where} (to {', '.join(sorted(set(lost)))})."
        lines.append(line)
    return lines


def _geomean(values) -> float:
    values = np.asarray(values, float)
    return float(np.exp(np.log(values).mean()))


def markdown(measured: pd.DataFrame, failures: pd.DataFrame, section: dict, other: pd.DataFrame) -> str:
    env = section.get("environment", {})
    scaling = scaling_table(measured) if not measured.empty else measured
    measured = measured[measured.devices.isna()] if not measured.empty else measured
    parts = [f"# unet-bench run: {env.get('device_name', '?')}", ""]
    spec = section.get("spec")
    if spec:
        parts += [f"Spec: `{json.dumps(spec)}`. Versions: `{json.dumps(env.get('versions', {}))}`.", ""]
    if section.get("rebuilt_from"):
        parts += [f"Rebuilt from {section['rebuilt_from']}.", ""]
    if not measured.empty:
        parts += ["## Which to pick", "", *[f"- {line}" for line in verdicts(measured)], ""]
    if not measured.empty and measured.tf32_backward.any():
        parts += [
            "## Precision note",
            "",
            "TF32-BACKWARD: torch fp32 cases measured by an engine that turned TF32 off around the "
            "forward only; the backward ran outside that context, where cuDNN's default lets fp32 "
            "convs use TF32. They are not IEEE fp32 training, are left out of the verdicts, and should "
            "be measured again with the current engine, which sets precision for the whole process.",
            "",
        ]
    for task, (column, label) in THROUGHPUT.items():
        if measured.empty or task not in set(measured.task):
            continue
        unit = UNITS[task]
        parts += [
            f"## {task}: {label} (speed-up against {BASELINE})",
            "",
            _cells(_pivot(measured, task, column), speedups(measured, task), "{0:.3g} ({1:.2f}x)")
            .where(~_pivot(measured, task, "tf32_backward").astype(bool), lambda t: t + " TF32-BACKWARD")
            .pipe(_md),
            "",
            f"## {task}: milliseconds per call (median ± IQR)",
            "",
            _cells(
                _pivot(measured, task, "median_ms"), _pivot(measured, task, "iqr_ms"), "{0:.4g} ±{1:.2g}"
            ).pipe(_md),
            "",
            f"## {task}: peak memory, MiB",
            "",
            _pivot(measured, task, "peak_memory_mib").round(0).pipe(_md),
            "",
            _memory_note(measured[measured.task == task]),
            "",
            f"## {task}: compile seconds, cold / from the caches",
            "",
            _cells(
                _pivot(measured, task, "compile_cold_s"),
                _pivot(measured, task, "compile_cached_s"),
                "{0:.1f} / {1:.1f}",
            )
            .where(~_pivot(measured, task, "compile_cold_reused").astype(bool), lambda t: t + " (reused)")
            .pipe(_md),
            "",
            COMPILE_NOTE if measured.own_workers.all() else OLD_COMPILE_NOTE,
            "",
            f"## {task}: {unit} until compiling pays back against {BASELINE} (cold compile)",
            "",
            break_even_steps(measured, task).pipe(_md),
            "",
            f"## {task}: achieved TFLOP/s (utilization of the device's measured peak)",
            "",
            _cells(
                _pivot(measured, task, "tflops"), _pivot(measured, task, "utilization"), "{0:.3g} ({1:.0%})"
            )
            .where(_pivot(measured, task, "utilization") <= SUSPECT, lambda t: t + " SUSPECT")
            .pipe(_md),
            "",
            "FLOPs are nominal, those of direct convolution. SUSPECT: above the device's peak measured "
            "for this precision, which the case cannot honestly reach; look for a setting that computes "
            "in a lower precision than the column says before trusting its time.",
            "",
        ]
    if not scaling.empty:
        simulated = env.get("device") == "cpu"
        parts += [
            "## Data-parallel scaling" + (" (SIMULATED devices sharing one CPU)" if simulated else ""),
            "",
            *(
                [
                    "These devices share the same cores: the figures test the machinery and say nothing of "
                    "real scaling.",
                    "",
                ]
                if simulated
                else []
            ),
            "BatchNorm statistics: "
            + ("global batch." if section.get("options", {}).get("sync_bn") else "per device."),
            "",
            scaling.round(3).to_markdown(index=False),
            "",
        ]
    if not failures.empty:
        parts += ["## Cases without a number", "", failures.to_markdown(index=False), ""]
    if not other.empty:
        parts += ["## Other benchmarks", "", other.round(3).to_markdown(index=False), ""]
    return "\n".join(parts)


def plot(measured: pd.DataFrame, file: Path, task: str) -> None:
    """Throughput against image size, a line per path, a panel per precision and batch."""
    data = measured[measured.task == task]
    panels = sorted(set(zip(data.precision, data.batch, strict=True)), key=lambda p: (p[0] != "fp32", p))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
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
    fig.savefig(file, dpi=110)
    plt.close(fig)


def write_run(run_dir: Path) -> str:
    """Write a run's tables (Markdown, CSV) and plots next to its benchmark.json; return the Markdown."""
    run_dir = Path(run_dir)
    measured, failures, section = load(run_dir)
    text = markdown(measured, failures, section, others(run_dir))
    (run_dir / "report.md").write_text(text)
    measured.to_csv(run_dir / "cases.csv", index=False)
    scaling = scaling_table(measured) if not measured.empty else measured
    if not scaling.empty:
        scaling.to_csv(run_dir / "scaling.csv", index=False)
        simulated = section.get("environment", {}).get("device") == "cpu"
        plot_scaling(scaling, run_dir / "scaling.png", "SIMULATED devices on one CPU" if simulated else "")
    measured = measured[measured.devices.isna()] if not measured.empty else measured
    if not failures.empty:
        failures.to_csv(run_dir / "failures.csv", index=False)
    for task in sorted(set(measured.task) - {"tiled"}) if not measured.empty else []:
        plot(measured, run_dir / f"throughput-{task}.png", task)
    write_index(run_dir.parent)
    return text


def write_index(results: Path) -> None:
    """results/README.md: one line per run folder in ``results``, made from their JSON."""
    lines = [
        "# Measured runs",
        "",
        "Generated by `bench/report.py` from each folder's benchmark.json; never edited by hand.",
        "",
        "| run | device | cases measured | cases without a number | versions |",
        "|---|---|---|---|---|",
    ]
    runs = {p.parent for p in Path(results).glob("*/benchmark.json")}
    runs |= {p.parent for p in Path(results).glob("*/progress.jsonl")}
    for run_dir in sorted(runs):
        measured, failures, section = load(run_dir)
        env = section.get("environment", {})
        versions = ", ".join(
            f"{k} {v}" for k, v in env.get("versions", {}).items() if k in ("torch", "jax", "flax")
        )
        lines.append(
            f"| [{run_dir.name}]({run_dir.name}/report.md) | {env.get('device_name', '?')} | {len(measured)} "
            f"| {len(failures)} | {versions} |"
        )
    (Path(results) / "README.md").write_text("\n".join(lines) + "\n")


def merge(run_dirs: list[Path]) -> pd.DataFrame:
    """One table across runs: img/s per path, rows device x task x size x batch x precision."""
    measured = pd.concat([load(d)[0] for d in run_dirs], ignore_index=True)
    measured = measured[measured.devices.isna()]  # single-device cases; scaling has its own tables
    table = measured.pivot_table(
        index=["device_name", "task", *CASE], columns="path", values="img_per_s", aggfunc="first"
    )
    return table[_path_order(table.columns)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="results/<date>-<device>/ folders")
    parser.add_argument("--out", type=Path, help="with several runs: write cross-device.md and .csv here")
    args = parser.parse_args(argv)
    sources = ("benchmark.json", "progress.jsonl")
    missing = [str(d) for d in args.run_dirs if not any((d / f).exists() for f in sources)]
    if missing:
        parser.error(f"no benchmark.json or progress.jsonl in: {', '.join(missing)}")
    if len(args.run_dirs) == 1:
        print(write_run(args.run_dirs[0]))
        return 0
    table = merge(args.run_dirs)
    text = "# Images per second across devices\n\n" + table.round(3).to_markdown() + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cross-device.md").write_text(text)
        table.to_csv(args.out / "cross-device.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
