"""Data-parallel training across devices: weak and strong scaling, per framework path.

Cases come from --devices (and --scaling, --sync-bn); on a multi-GPU host the
default is every power of two up to the GPU count, on a CPU there are none
unless asked for (then the devices are simulated and share the CPU's cores:
such runs test the machinery and say nothing of real scaling).
"""

from __future__ import annotations

from bench.run_config import RunConfig
from bench.sweep import Sweep


def test_scaling(scaling_case: RunConfig, sweep: Sweep, benchmark) -> None:
    benchmark.group = scaling_case.group
    sweep.run(scaling_case, benchmark)
