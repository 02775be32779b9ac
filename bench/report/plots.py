"""The run's plots: throughput against image size, and data-parallel scaling. matplotlib is imported
when a plot is drawn, not with the package: every pytest run loads bench.report, and matplotlib's import
complains of an unusable home folder before the run can refuse it in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.cases import counted, path_order
from impls.files import atomic_output


def _subplots(panels: int, width: float, height: float) -> tuple[Any, Any]:
    """A figure of ``panels`` side by side."""
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


def plot_scaling(table: pd.DataFrame, file: Path, title: str) -> None:
    modes = sorted(set(table.scaling))
    fig, axes = _subplots(len(modes), 5, 3.8)
    for ax, mode in zip(axes[0], modes, strict=True):
        part = table[table.scaling == mode]
        for name in path_order(set(part.path)):
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
        for name in path_order(set(panel.path)):
            line = panel[panel.path == name].sort_values("size")
            ax.plot(line["size"], line["img_per_s"], marker="o", label=name)
        noun = counted(panel)
        ax.set(
            title=f"{task}, {precision}, batch {batch}",
            xlabel="volume side (voxels)" if noun == "volumes" else "image side (px)",
            ylabel=f"{noun} / s",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(panel["size"])), [str(s) for s in sorted(set(panel["size"]))])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(measured.device_name.iloc[0])
    fig.tight_layout()
    _save_figure(fig, file)
