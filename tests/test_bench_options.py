"""The benchmark suite's command line, as a user meets it (each in a fresh pytest process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_every_axis() -> None:
    out = _pytest("--help").stdout
    for option in (
        "--paths",
        "--tasks",
        "--sizes",
        "--batches",
        "--precisions",
        "--device",
        "--width",
        "--depth",
        "--padding",
        "--tf32",
        "--upconv",
        "--results-dir",
        "--case-timeout",
        "--compile-cache",
        "--memory-format",
        "--target-ci",
        "--max-minutes",
    ):
        assert option in out, option


def test_options_override_the_matrix() -> None:
    result = _pytest(
        "--benchmark-only",
        "--collect-only",
        "-q",
        "bench/test_unet.py",
        "--paths",
        "jax,torch-eager",
        "--tasks",
        "infer",
        "--sizes",
        "32,64",
        "--batches",
        "3",
        "--precisions",
        "bf16",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [line for line in result.stdout.splitlines() if "test_unet[" in line]
    assert len(ids) == 4
    assert "test_unet[infer-jax-64px-b3-bf16]" in result.stdout


def test_the_main_command_collects_no_unit_test() -> None:
    result = _pytest("--benchmark-only", "--collect-only", "-q", "--device", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests/" not in result.stdout and "bench/test_unet.py::test_unet[" in result.stdout


def test_default_cpu_matrix() -> None:
    result = _pytest("--benchmark-only", "--collect-only", "-q", "bench/test_unet.py", "--device", "cpu")
    ids = [line for line in result.stdout.splitlines() if "test_unet[" in line]
    # paths (with the two plain ones) x train and infer x sizes x batches x fp32; no tiled image
    assert len(ids) == 5 * 2 * 2 * 1
    assert "test_unet[train-torch-compile-128px-b2-fp32]" in result.stdout
    assert "test_unet[infer-jax-plain-64px-b2-fp32]" in result.stdout
    assert "tiled" not in result.stdout


def test_scaling_cases_on_simulated_devices() -> None:
    result = _pytest(
        "--benchmark-only",
        "--collect-only",
        "-q",
        "bench/test_scaling.py",
        "--device",
        "cpu",
        "--devices",
        "1,2",
        "--sizes",
        "32",
        "--batches",
        "2",
        "--paths",
        "jax",
    )
    ids = [line for line in result.stdout.splitlines() if "test_scaling[" in line]
    # weak: 2 per device (global 2, 4); strong: global 4 (per device 4, 2)
    assert sorted(ids) == sorted(
        f"bench/test_scaling.py::test_scaling[train-jax-32px-b{b}-fp32-{mode}-{n}dev]"
        for mode, n, b in (("weak", 1, 2), ("weak", 2, 4), ("strong", 1, 4), ("strong", 2, 4))
    )
    none = _pytest("--benchmark-only", "--collect-only", "-q", "bench/test_scaling.py", "--device", "cpu")
    assert "dev]" not in none.stdout  # on a CPU, only when asked for


def test_the_sweeps_process_imports_no_framework() -> None:
    """Every framework runs in worker processes, each with its own settings and caches."""
    modules = "bench.plugin, bench.measure, bench.workers, bench.report, bench.environment, bench.runners"
    code = f"import sys, {modules}; print(sorted({{'torch', 'jax'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--sizes", "100"),
            "--sizes 100: UNetSpec(depth=4, padding='same'): height 100 is not a valid input size",
        ),
        (("--padding", "valid", "--sizes", "570"), "nearest valid: 556 and 572"),
        (("--paths", "jax,pytorch"), "--paths pytorch: expected some of"),
        (("--paths", "torch-compile-reduce-overhead", "--device", "cpu"), "need a CUDA device"),
        (("--width", "0"), "UNetSpec.width=0"),
        (("--case-timeout", "0"), "--case-timeout 0: expected a number of seconds > 0"),
        (("--target-ci", "2"), "--target-ci 2: expected a share between 0 and 1"),
        (("--max-minutes", "-1"), "--max-minutes -1: expected a number of minutes > 0"),
    ],
)
def test_bad_options_are_refused_with_the_fix(args: tuple, message: str) -> None:
    result = _pytest("--benchmark-only", "--collect-only", "-q", "bench/test_unet.py", *args)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
