"""The benchmark suite's command line: the option table, in groups, and the defaults per device.

Each option is listed once, as argparse takes it: pytest registers the table (bench/plugin.py) and
the tests parse command lines with it in-process (tests/test_bench_options.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench import stats
from bench.run_config import FREEZINGS, LOSSES, MEMORY_FORMATS, PATHS, PRECISIONS
from bench.sweep import WARM_UP_SECONDS, default_compile_cache
from impls.spec import PADDINGS, UNetSpec

# The network of --width, --depth and --padding's defaults, per --dims. In 3D, nnU-Net's and MLPerf's
# choices (instance norm, leaky ReLU) on a network small enough for a CPU run.
DEFAULT_SPECS = {
    2: UNetSpec(),
    3: UNetSpec(dims=3, width=16, depth=3, norm="instance", activation="leaky_relu"),
}
# The plain references are in no verdict. On a CPU the default run measures jax against jax-plain
# (is the project's JAX at its best?); torch-plain, and on a GPU both, run when asked for with --paths:
# their set-up and rounds would go to time that deciding the verdicts needs more.
DEFAULT_PATHS = ("torch-eager", "torch-compile", "jax")
# The default matrix fits the machine: small images on a CPU, large ones on a GPU.
# bf16 on a CPU (slow under XLA's CPU backend, rare in practice) is asked for with --precisions.
DEFAULTS = {
    "cpu": {
        "tasks": ["train", "infer"],  # tiled when asked for: 3 minutes more, past the 15 the run fits in
        # One size: each group's set-up (torch-compile's two cold compiles, about 2 minutes to train)
        # and a sampling budget that decides its comparisons (docs/verdicts.md) fit 15 minutes twice
        # over, four groups did not. --sizes 64,128 adds a size.
        "sizes": [128],
        "batches": [2],
        "precisions": ["fp32"],
        "image_size": 256,
        "paths": [*DEFAULT_PATHS, "jax-plain"],
        "case_timeout": 900,
        "max_time": 3.0,
        "replicates": 3,
        "group_budget": 240.0,
    },
    # About 52 minutes from cold caches on one H200 (docs/running.md, "How long a run takes": each
    # phase measured there, then added up): worker starts and compiles are most of it, so two
    # sizes, one batch, and the default compile mode only (max-autotune and reduce-overhead when
    # asked for with --paths).
    "cuda": {
        "tasks": ["train", "infer", "tiled"],
        "sizes": [256, 1024],
        "batches": [8],
        "precisions": list(PRECISIONS),
        "image_size": 4096,
        "paths": list(DEFAULT_PATHS),
        "case_timeout": 1800,
        "max_time": 2.0,
        "replicates": 3,
        "group_budget": 60.0,
    },
}
# --dims 3: volumes. On a CPU one side and two groups, as in 2D, without jax-plain: with it, or with
# the window task, the run passed 15 minutes from cold caches (docs/running.md). 32^3 is not the
# default: there the deepest gradients are 1e-4 of the head's and fp32 rounding at leaky-ReLU kinks
# moves JAX's past the parity gate (docs/methodology.md). On a GPU, MLPerf Training's 128^3 patches
# at batch 2 and a smaller 96^3. "window" is a whole volume by sliding window, in tiles of the
# largest size.
DEFAULTS_3D = {
    "cpu": {
        "tasks": ["train", "infer"],
        "sizes": [48],
        "batches": [2],
        "image_size": 96,
        "paths": list(DEFAULT_PATHS),
        "group_budget": 120.0,
    },
    "cuda": {"tasks": ["train", "infer", "window"], "sizes": [96, 128], "batches": [2], "image_size": 256},
}
MAX_REPLICATES = 12  # workers per case at most, while a comparison is undecided and the budget allows
SCALING_PATHS = ("torch-eager", "torch-compile", "jax")


def defaults(device: str, dims: int = 2) -> dict[str, Any]:
    """The defaults of the axes and budgets on ``device``'s kind, for U-Nets of ``dims``."""
    kind = "cpu" if device == "cpu" else "cuda"
    return DEFAULTS[kind] if dims == 2 else {**DEFAULTS[kind], **DEFAULTS_3D[kind]}


def csv(kind: type = str) -> Callable[[str], list]:
    """A comma-separated list option's parser, its items of ``kind``."""

    def parse(text: str) -> list:
        try:
            return [kind(item.strip()) for item in text.split(",") if item.strip()]
        except ValueError:  # only whole numbers can be malformed
            raise argparse.ArgumentTypeError(f"{text}: expected comma-separated whole numbers") from None

    return parse


def _shown_defaults(name: str) -> str:
    """An axis's defaults as the help shows them: "64,128 on a CPU, 256,1024 on a GPU"."""

    def shown(value) -> str:
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)

    text = f"{shown(DEFAULTS['cpu'][name])} on a CPU, {shown(DEFAULTS['cuda'][name])} on a GPU"
    if name in DEFAULTS_3D["cpu"]:
        text += f"; with --dims 3: {shown(DEFAULTS_3D['cpu'][name])} and {shown(DEFAULTS_3D['cuda'][name])}"
    return text


@dataclass(frozen=True)
class Option:
    """One command-line option, with argparse's settings (those left None are argparse's defaults)."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: tuple[Any, ...] | None = None
    action: str | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of argparse's add_argument (and pytest's addoption)."""
        named = {"type": self.type, "default": self.default, "choices": self.choices}
        named |= {"action": self.action, "metavar": self.metavar, "help": self.help}
        return {name: value for name, value in named.items() if value is not None}


AXES = (
    Option("--paths", f"framework paths, of: {', '.join(PATHS)}", csv()),
    Option(
        "--tasks",
        "train, infer, tiled (a whole image in tiles of the largest size and batch), window (its "
        "counterpart for volumes: a whole volume by sliding window, Gaussian-blended); default: "
        f"{_shown_defaults('tasks')}",
        csv(),
    ),
    Option("--sizes", f"input sides in pixels or voxels (default: {_shown_defaults('sizes')})", csv(int)),
    Option("--batches", f"batch sizes (default: {_shown_defaults('batches')})", csv(int)),
    Option("--precisions", "fp32, bf16 (default: fp32 on CPU, both on GPU)", csv()),
    Option("--device", "cpu, cuda or cuda:N (default: cuda if there is one, else cpu)"),
)


def _shown_network_default(name: str) -> str:
    """A network field's defaults as the help shows them: "64; 16 with --dims 3"."""
    return f"{getattr(DEFAULT_SPECS[2], name)}; {getattr(DEFAULT_SPECS[3], name)} with --dims 3"


NETWORK = (
    Option(
        "--dims",
        "2: images; 3: volumes (3D U-Nets with instance norm and leaky ReLU, nnU-Net's; default 2)",
        int,
        2,
        choices=(2, 3),
    ),
    Option("--width", f"channels of the first level (default {_shown_network_default('width')})", int),
    Option("--depth", f"number of poolings (default {_shown_network_default('depth')})", int),
    Option(
        "--padding",
        f"one of {', '.join(PADDINGS)} (default {DEFAULT_SPECS[2].padding})",
        default=DEFAULT_SPECS[2].padding,
    ),
)
CASE_SETTINGS = (
    Option("--tf32", "let fp32 convs use TF32 on CUDA, in every framework", action="store_true"),
    Option(
        "--upconv",
        "form of the transposed convs (default auto: the faster, measured per device)",
        default="auto",
        choices=("auto", "native", "matmul"),
    ),
    Option(
        "--memory-format",
        "torch's memory format (default auto: the faster for the case's task, measured per device)",
        default="auto",
        choices=MEMORY_FORMATS,
    ),
    Option(
        "--freezing",
        "inductor's freezing for torch-compile inference on a CPU (default auto: the faster, "
        "measured compiled)",
        default="auto",
        choices=FREEZINGS,
    ),
    Option(
        "--loss",
        "ce: softmax cross-entropy; weighted: the paper's pixel-weighted one (default ce)",
        default="ce",
        choices=LOSSES,
    ),
    Option(
        "--image-size",
        "side of the tiled and window tasks' whole image or volume "
        f"(default: {_shown_defaults('image_size')})",
        int,
    ),
)
SCALING = (
    Option(
        "--devices",
        "data-parallel device counts for bench/test_scaling.py, e.g. 1,2,4,8 (default: 1 to every GPU; "
        "on a CPU none: pass them to simulate devices)",
        csv(int),
    ),
    Option("--scaling", "weak, strong (default both)", csv()),
    Option("--sync-bn", "data-parallel BatchNorm over the global batch", action="store_true"),
)
SAMPLING = (
    Option("--results-dir", "where timed runs are written (default results/)", default="results"),
    Option(
        "--case-timeout",
        "seconds a case may take, all its phases and all its workers together (not the other paths' "
        "rounds interleaved with its own), before its worker is killed and the case recorded as timeout "
        f"(default {DEFAULTS['cpu']['case_timeout']} on a CPU, "
        f"{DEFAULTS['cuda']['case_timeout']} on a GPU: several times the slowest healthy default case)",
        float,
    ),
    Option(
        "--target-ci",
        "rounds are added until each case's median has a 95%% interval within this share of it "
        "(default 0.02: +-2%%), up to --benchmark-max-time of rounds per case (default here: "
        f"{DEFAULTS['cpu']['max_time']:g} s on a CPU, {DEFAULTS['cuda']['max_time']:g} s on a GPU)",
        float,
        0.02,
    ),
    Option(
        "--warm-up",
        f"seconds of untimed blocks, interleaved as the timed ones, before each worker set's rounds "
        f"(default {WARM_UP_SECONDS:g}; one block at least): the first blocks after workers start "
        "run slow",
        float,
    ),
    Option(
        "--replicates",
        "fresh worker processes per case, one after another, sharing its rounds (default 3): "
        "the intervals then cover each process's own luck, which moved a case by up to 7%% "
        "between runs",
        int,
    ),
    Option(
        "--max-replicates",
        "the most worker processes per case while a comparison is undecided (default 12)",
        int,
    ),
    Option(
        "--group-budget",
        "seconds of sampling per group after its set-up (rounds and fresh workers): replicates "
        "are added past --replicates while a comparison is inconclusive and the next fits "
        f"(default {DEFAULTS['cpu']['group_budget']:g} on a CPU, "
        f"{DEFAULTS['cuda']['group_budget']:g} on a GPU)",
        float,
    ),
)
VERDICTS = (
    Option(
        "--margin",
        f"practical margin: a speed-up within it either way is equivalent (default {stats.MARGIN:g}: 5%%)",
        float,
    ),
    Option(
        "--run-spread",
        f"run-to-run sd of a log speed-up added to every interval (default {stats.RUN_SPREAD:g}, "
        "from calibration: docs/verdicts.md)",
        float,
    ),
    Option(
        "--calibration",
        "add paths torch-eager+N%% for each N (e.g. 0,5,10,20): torch eager plus N%% more of the same "
        "work, to measure how often the rule calls known effects",
        csv(int),
    ),
)
SESSIONS = (
    Option(
        "--max-minutes",
        "start no case after this many minutes; the rest are recorded as skipped (default: no limit)",
        float,
    ),
    Option(
        "--resume",
        "continue RUN_DIR, a run stopped early (--max-minutes, Ctrl-C, a lost machine): measure "
        "the cases it has no record of into it, reported as one run; refused unless it was measured "
        "with this engine, these versions and this device",
        metavar="RUN_DIR",
    ),
    Option(
        "--compile-cache",
        "folder of the on-disk compile caches, one subfolder per case, kept between runs "
        f"(default {default_compile_cache()}; delete it to start cold)",
    ),
)
# In the order --help lists them, under one heading
GROUPS = (AXES, NETWORK, CASE_SETTINGS, SCALING, SAMPLING, VERDICTS, SESSIONS)
TITLE = ("unet-bench", "unet-bench benchmark axes (comma-separated lists)")


def table() -> Iterator[Option]:
    """Every option, group by group."""
    for group in GROUPS:
        yield from group


def flag(dest: str) -> str:
    """An option as the user writes it: ``case_timeout`` is --case-timeout."""
    return "--" + dest.replace("_", "-")
