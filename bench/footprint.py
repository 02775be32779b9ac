"""The memory estimate (impls/footprint.py) against the peaks workers reach: python -m bench.footprint.

One fresh worker per case of a grid, as the sweep starts them: it makes its first
call (compiling, where its path compiles), computes the parity gate's outputs,
and its peak resident memory since it started is read (bench/memory.py). The
grid's cases, their peaks and the estimate's ratio to each are written, as
``measured.json`` and ``footprint.md``, to a folder of their own under
``--results-dir``:

    python -m bench.footprint --grid calibration  # the cases the estimate's constants are fitted to
    python -m bench.footprint --grid evidence     # more of them: larger features (docs/memory.md)
    python -m bench.footprint --grid holdout      # other sizes, batches and a spec: its evidence
    python -m bench.footprint --fit FOLDER...     # the constants from those folders' measured.json
    python -m bench.footprint --table FOLDER      # the table again, from FOLDER's measured.json

The grids share no case, so the evidence is never the data the constants were fitted to.
Forms are pinned (channels_last, the native up-conv, freezing on) so that a worker does not time
its alternatives.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench import environment
from bench.run_config import RunConfig, memory_kind
from bench.sweep import needed_bytes
from bench.sweep.process_worker import ProcessWorker
from bench.sweep.worker import WorkerError
from impls import convert, footprint
from impls.export import SUFFIXES
from impls.export import needed_bytes as export_needed_bytes
from impls.files import new_folder, write_text
from impls.spec import UNetSpec

PATHS = {
    "train": ("torch-eager", "torch-compile", "jax"),
    "infer": ("torch-eager", "torch-compile", "jax", "onnxruntime", "openvino"),
}
DEFAULT = UNetSpec()
GRIDS = {
    # (spec, size, batch)
    "calibration": [(DEFAULT, 128, 1), (DEFAULT, 256, 1), (DEFAULT, 256, 4), (DEFAULT, 512, 1)],
    "evidence": [
        (DEFAULT, 192, 2),
        (DEFAULT, 384, 2),
        (UNetSpec(width=32), 512, 2),
        (UNetSpec(padding="valid"), 572, 1),
        (DEFAULT, 512, 4),  # four times the calibration's largest features: the slope, extrapolated
    ],
    "holdout": [(DEFAULT, 320, 2), (UNetSpec(width=32), 384, 4), (DEFAULT, 640, 3)],
}
# (route, spec, size, batch): python -m impls.export, its own process, checked at that shape
EXPORTS = {
    "calibration": [
        (route, DEFAULT, size, batch)
        for route in ("onnx", "aoti", "jax")
        for size, batch in ((256, 1), (512, 4))
    ],
    "evidence": [
        *((route, DEFAULT, 384, 2) for route in ("onnx", "aoti", "jax")),
        ("onnx", UNetSpec(padding="valid"), 572, 3),
    ],
    "holdout": [(route, DEFAULT, 448, 3) for route in ("onnx", "aoti", "jax")],
}
CASE_SECONDS = 1200.0
ROOT = Path(__file__).resolve().parent.parent


def cases(grid: str) -> list[RunConfig]:
    """The grid's worker cases: every path of each task at each of its shapes."""
    return [
        RunConfig(
            path,
            spec,
            size,
            batch,
            task=task,
            upconv="native",
            memory_format="channels_last",
            freezing="on",
        )
        for spec, size, batch in GRIDS[grid]
        for task, paths in PATHS.items()
        for path in paths
    ]


def measure(config: RunConfig) -> dict:
    """One worker's peak resident memory over its first call and the gate's outputs."""
    record = {"case": config.to_dict(), "id": config.id}
    try:
        with ProcessWorker(config, deadline=time.monotonic() + CASE_SECONDS) as worker:
            worker.call("first_call")
            worker.outputs(config.task)
            record["peak_bytes"] = worker.peak_memory_bytes()
    except WorkerError as error:
        record["error"] = f"{error.status}: {str(error).splitlines()[0]}"
    return record


def measure_export(route: str, spec: UNetSpec, size: int, batch: int, folder: Path) -> dict:
    """The peak resident memory of ``python -m impls.export`` (its own process, as rusage gives it)."""
    record = {"export": {"route": route, "spec": json.loads(spec.to_json()), "size": size, "batch": batch}}
    checkpoint = folder / "weights.safetensors"
    rng = np.random.default_rng(0)
    weights = {  # any weights: the export is checked against its source model, whatever they are
        name: (np.ones(shape) if name.endswith("running_var") else rng.normal(0, 0.05, shape)).astype(
            np.float32
        )
        for name, shape in spec.param_shapes().items()
    }
    convert.save(checkpoint, weights, spec)
    out = folder / f"unet{SUFFIXES[route]}"
    command = [sys.executable, "-m", "impls.export", str(checkpoint), "--to", route, str(out)]
    command += ["--batch", str(batch), "--size", str(size), str(size), "--force"]
    log = folder / "export.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
    timer = threading.Timer(CASE_SECONDS, process.kill)
    timer.start()
    try:  # os.wait4, not Popen.wait: it gives the process's own rusage, its peak resident size among it
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # Ctrl-C: the export ends with this command
        process.kill()
        process.wait()
        raise
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        lines = log.read_text().strip().splitlines()
        record["error"] = lines[-1] if lines else f"exited with code {process.returncode}"
    else:
        record["peak_bytes"] = usage.ru_maxrss * 1024  # reported in kB
    return record


def _case(record: dict) -> tuple[UNetSpec, int, int, str, str, tuple[str, str], int]:
    """A record's spec, size, batch, task and path (an export's task is "export", its path the
    route), the kind of process and task its peak is fitted under, and the estimate for it."""
    if "export" in record:
        export = record["export"]
        spec, size, batch, route = (
            UNetSpec(**export["spec"]),
            export["size"],
            export["batch"],
            export["route"],
        )
        estimate = export_needed_bytes(spec, [(batch, spec.in_channels, *(size,) * spec.dims)], route)
        return spec, size, batch, "export", route, (f"export-{route}", "infer"), estimate
    config = RunConfig(**record["case"])
    fitted_as = (memory_kind(config.path), "train" if config.task == "train" else "infer")
    return config.spec, config.size, config.batch, config.task, config.path, fitted_as, needed_bytes(config)


def fitted(records: list[dict]) -> dict[tuple[str, str], tuple[int, float]]:
    """footprint.FITTED's entries from measured records: one fit per kind of process and task."""
    points: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for record in records:
        if record.get("peak_bytes") is None:
            continue
        spec, size, batch, _, _, key, _ = _case(record)
        weights = footprint.WEIGHT_COPIES[key[1]] * footprint.weight_bytes(spec)
        features = batch * footprint.feature_bytes(spec, size)
        points.setdefault(key, []).append((features, weights, record["peak_bytes"]))
    return {key: footprint.fit(found) for key, found in points.items()}


def table(records: list[dict]) -> pd.DataFrame:
    rows = []
    for record in records:
        spec, size, batch, task, path, _, estimate = _case(record)
        row = {
            "spec": f"w{spec.width} {spec.padding}",
            "size": size,
            "batch": batch,
            "task": task,
            "path": path,
        }
        peak = record.get("peak_bytes")
        row["measured_GiB"] = None if peak is None else round(peak / 2**30, 2)
        row["estimate_GiB"] = round(estimate / 2**30, 2)
        row["estimate/measured"] = None if peak is None else round(estimate / peak, 2)
        row["error"] = record.get("error", "")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(records: list[dict], grid: str) -> str:
    found = table(records)
    ratios = found["estimate/measured"].dropna()
    summary = (
        f"{len(ratios)} cases measured: estimate/measured from {ratios.min():.2f} to {ratios.max():.2f} "
        f"(the bar: from 1.00 to 2.00)"
        if len(ratios)
        else "no case measured"
    )
    return "\n".join(
        [
            f"# Memory estimate against measured peaks: grid {grid}",
            "",
            summary,
            "",
            found.to_markdown(index=False),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--grid", choices=sorted(GRIDS), help="measure this grid's cases")
    which.add_argument("--table", type=Path, metavar="FOLDER", help="rewrite FOLDER's footprint.md")
    which.add_argument(
        "--fit",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="print impls/footprint.py's FITTED from these folders' measured.json together",
    )
    parser.add_argument("--results-dir", type=Path, default=Path("results"), help="(default: results)")
    args = parser.parse_args(argv)
    if args.table or args.fit:
        saved = []
        for folder in args.fit or [args.table]:
            try:
                saved.append(json.loads((folder / "measured.json").read_text()))
            except (OSError, ValueError) as error:
                print(f"error: {folder / 'measured.json'}: {error}", file=sys.stderr)
                return 2
        if args.fit:
            print("FITTED = {")
            for key, value in fitted([record for run in saved for record in run["records"]]).items():
                print(f"    {key!r}: {value!r},")
            print("}")
        else:
            write_text(args.table / "footprint.md", markdown(saved[0]["records"], saved[0]["grid"]))
        return 0
    slug = environment.device_slug("cpu")
    folder = new_folder(args.results_dir, f"footprint-{datetime.date.today().isoformat()}-{slug}-{args.grid}")
    folder.mkdir(parents=True)
    saved: dict = {"grid": args.grid, "environment": environment.describe("cpu"), "records": []}
    records = saved["records"]
    jobs = [lambda config=config: measure(config) for config in cases(args.grid)]
    jobs += [lambda export=export: measure_export(*export, folder) for export in EXPORTS[args.grid]]
    for job in jobs:
        records.append(job())
        print(
            json.dumps({k: records[-1].get(k) for k in ("id", "export", "peak_bytes", "error")}), flush=True
        )
        write_text(folder / "measured.json", json.dumps(saved, indent=1))
    for scratch in ("weights.safetensors", "export.log", *(f"unet{suffix}" for suffix in SUFFIXES.values())):
        (folder / scratch).unlink(missing_ok=True)
    write_text(folder / "footprint.md", markdown(records, args.grid))
    print(folder / "footprint.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
