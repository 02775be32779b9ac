"""The benchmark suite's command line, as a user meets it.

Refusals are checked in-process: the command line parsed with bench/options.py's table, as pytest
parses it, and handed to bench/matrix.py, whose ``OptionError`` bench/plugin.py makes pytest's usage
error; a few command lines run in a fresh pytest process, to show that it does, and what pytest
collects.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import environment, matrix, options

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
        "--warm-up",
        "--max-minutes",
        "--margin",
        "--group-budget",
        "--max-replicates",
        "--run-spread",
        "--calibration",
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
    ids = [case.id for case in _matrix("--device", "cpu").cases]  # test_unet's, as pytest_generate_tests
    # paths (jax-plain, torch-plain only when asked for) x train and infer x sizes x batches x fp32
    assert len(ids) == 4 * 2 * 1 * 1
    assert "train-torch-compile-128px-b2-fp32" in ids
    assert "infer-jax-plain-128px-b2-fp32" in ids
    assert "torch-plain" not in " ".join(ids) and "tiled" not in " ".join(ids)


def test_calibration_adds_its_paths_to_every_group() -> None:
    cases = _matrix(
        "--paths", "torch-eager", "--calibration", "0,20", "--tasks", "train", "--sizes", "128"
    ).cases
    ids = [case.id for case in cases]
    assert ids == [
        "train-torch-eager-128px-b2-fp32",
        "train-torch-eager+0%-128px-b2-fp32",
        "train-torch-eager+20%-128px-b2-fp32",
    ]


def test_scaling_cases_on_simulated_devices() -> None:
    scaling = _matrix(
        "--device", "cpu", "--devices", "1,2", "--sizes", "32", "--batches", "2", "--paths", "jax"
    )
    ids = [case.id for case in scaling.scaling]  # test_scaling's, as pytest_generate_tests
    # weak: 2 per device (global 2, 4); strong: global 4 (per device 4, 2)
    assert sorted(ids) == sorted(
        f"train-jax-32px-b{b}-fp32-{mode}-{n}dev"
        for mode, n, b in (("weak", 1, 2), ("weak", 2, 4), ("strong", 1, 4), ("strong", 2, 4))
    )
    none = _matrix("--device", "cpu").scaling
    assert not any(case.id.endswith("dev") for case in none)  # on a CPU, only when asked for


EMPTY = [
    (("--paths", ""), "--paths is empty: expected some of torch-eager, torch-compile,"),
    (("--sizes", ","), "--sizes is empty: expected whole numbers >= 1, e.g. "),
    (("--scaling", ""), "--scaling is empty: expected some of weak, strong"),
    (("--results-dir", ""), "--results-dir is empty: expected a folder (default results)"),
]

REPEATED = [
    (("--sizes", "32,32"), "--sizes 32,32: 32 repeats; expected each value once"),
    (
        ("--paths", "jax,torch-eager,jax"),
        "--paths jax,torch-eager,jax: jax repeats; expected each value once",
    ),
    (("--devices", "1,2,2", "--device", "cpu"), "--devices 1,2,2: 2 repeats; expected each value once"),
]

BELOW_ONE = [
    (("--batches", "0"), "--batches 0: expected whole numbers >= 1, e.g. "),
    (("--batches=-1",), "--batches -1: expected whole numbers >= 1"),
    (("--width", "0"), "--width 0: expected a number of channels >= 1"),
    (("--depth=-2",), "--depth -2: expected a number of poolings >= 1"),
    (("--image-size", "0"), "--image-size 0: expected a number of pixels >= 1"),
    (("--case-timeout", "nan"), "--case-timeout nan: expected a number of seconds > 0"),
    (("--max-minutes", "-1"), "--max-minutes -1: expected a number of minutes > 0"),
]

UNKNOWN = [
    (("--paths", "jax,torch-eagr"), "--paths torch-eagr: expected some of torch-eager, "),
    (
        ("--tasks", "trian"),
        "--tasks trian: expected some of train, infer, tiled, window; nearest valid: train",
    ),
    (("--padding", "vaild"), "--padding vaild: expected one of same, valid; nearest valid: valid"),
    (
        ("--scaling", "weak,stong"),
        "--scaling stong: expected some of weak, strong; nearest valid: strong",
    ),
    (("--upconv", "nativ"), "argument --upconv: invalid choice: 'nativ' (choose from 'auto', 'native',"),
    (("--sizes", "64,big"), "argument --sizes: 64,big: expected comma-separated whole numbers"),
    (("--device", "gpu"), "--device gpu: expected cpu, cuda or cuda:N"),
]

SIZES = [
    (
        ("--sizes", "100"),
        "--sizes 100: UNetSpec(depth=4, padding='same'): side 100 is not a valid input size "
        "(padding='same' needs a multiple of 2**depth = 16); nearest valid: 96 and 112",
    ),
    (
        ("--padding", "valid", "--sizes", "188,570"),
        "--sizes 570: UNetSpec(depth=4, padding='valid'): side 570 is not a valid input size (padding="
        "'valid' needs an even size at every 2x2 max-pool and a positive one after every unpadded conv); "
        "nearest valid: 556 and 572",
    ),
    (
        ("--depth", "99", "--sizes", "64"),
        "--depth 99: with --padding same no input side below 65536 px is valid; "
        "expected a depth from 1 to 15",
    ),
    (
        ("--depth", "8", "--device", "cpu"),
        "--depth 8: the default sizes 128 do not fit it: UNetSpec(depth=8, padding='same'): side 128 "
        "is not a valid input size (padding='same' needs a multiple of 2**depth = 256); nearest valid: "
        "256; give valid ones with --sizes",
    ),
    (
        ("--padding", "valid", "--device", "cpu"),
        "--padding valid: the default sizes 128 do not fit it",
    ),
]

BAD = [
    (("--paths", "torch-compile-reduce-overhead", "--device", "cpu"), "needs a CUDA device"),
    (  # only the paths given, once (in pytest's output too: test_a_refusal_is_pytests_usage_error_...)
        ("--paths", "torch-eager,tensorrt", "--device", "cpu"),
        "--paths: tensorrt needs a CUDA device; this run's device is cpu",
    ),
    (("--target-ci", "2"), "--target-ci 2: expected a share between 0 and 1"),
    (("--warm-up", "-1"), "--warm-up -1: expected a number of seconds >= 0 (0: one block)"),
    (("--warm-up", "nan"), "--warm-up nan: expected a number of seconds >= 0"),
    (("--warm-up", "inf"), "--warm-up inf: expected a number of seconds >= 0"),
    (("--margin", "0"), "--margin 0: expected a share between 0 and 1, e.g. 0.05"),
    (("--run-spread", "-0.1"), "--run-spread -0.1: expected an sd on logs from 0 to 1"),
    (
        ("--replicates", "5", "--max-replicates", "4"),
        "--max-replicates 4: expected at least --replicates (5)",
    ),
    (("--group-budget", "0"), "--group-budget 0: expected a number of seconds > 0"),
    (("--calibration", "10,10"), "expected distinct whole percentages from 0 to 100"),
    (("--calibration", "101"), "expected distinct whole percentages from 0 to 100"),
    (("--paths", "jax", "--calibration", "10"), "--calibration: its paths are measured against torch-eager"),
    (("--paths", "torch-eager+10%"), "--paths torch-eager+10%: expected some of"),
    (("--dims", "3", "--tasks", "tiled"), "--tasks tiled: with --dims 3, the whole-input task is window"),
    (("--tasks", "window"), "--tasks window: with --dims 2, the whole-input task is tiled"),
    (
        ("--dims", "3", "--devices", "2", "--device", "cpu"),
        "--devices: data-parallel runs take 2D U-Nets only, not --dims 3",
    ),
    # instance norm over a 2x2x2 bottleneck: 8 voxels per channel
    (
        ("--dims", "3", "--sizes", "16", "--device", "cpu"),
        "--sizes 16: side 16 leaves a 2-voxel-wide bottleneck to instance-normalise at depth 3 (more than "
        "2 needed); expected a side of 24 or more, or a smaller --depth",
    ),
    (
        ("--dims", "3", "--depth", "5", "--device", "cpu"),
        "--depth 5: the default sizes 48 do not fit it: UNetSpec(depth=5, padding='same', dims=3): side 48",
    ),
]


DEVICE_NOT_HERE = ("--device", "cuda:99")


def _collect(*args: str) -> subprocess.CompletedProcess:
    return _pytest("--benchmark-only", "--collect-only", "-q", "bench/test_unet.py", *args)


def _values(*args: str) -> argparse.Namespace:
    """A command line's option values, parsed with the table pytest registers (bench/plugin.py)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    for option in options.table():
        parser.add_argument(option.flag, **option.settings())
    return parser.parse_args(args)


def _matrix(*args: str) -> matrix.Matrix:
    return matrix.build(_values(*args), max_time=None, min_rounds=1)


def _refused(*args: str) -> str:
    """The one line a command line is refused with, before anything runs: argparse's, or the
    matrix's OptionError, which pytest shows as a usage error (exit code 4), not a traceback
    (test_a_refusal_is_pytests_usage_error_in_one_line); any other exception fails the test."""
    with pytest.raises((argparse.ArgumentError, matrix.OptionError)) as refusal:
        _matrix(*args)
    message = str(refusal.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize(("args", "message"), EMPTY)
def test_an_empty_option_is_refused_not_read_as_the_default(args: tuple, message: str) -> None:
    """An unset shell variable must not run the whole default matrix."""
    assert message in _refused(*args)


@pytest.mark.parametrize(("args", "message"), REPEATED)
def test_a_repeated_value_is_refused_not_run_twice(args: tuple, message: str) -> None:
    assert message in _refused(*args)


@pytest.mark.parametrize(("args", "message"), BELOW_ONE)
def test_a_count_below_one_is_refused(args: tuple, message: str) -> None:
    assert message in _refused(*args)


@pytest.mark.parametrize(("args", "message"), UNKNOWN)
def test_an_unknown_value_is_refused_with_the_nearest_valid(args: tuple, message: str) -> None:
    out = _refused(*args)
    assert message in out
    if args[0] == "--paths":
        assert "; nearest valid: torch-eager" in out


def test_dims_3_has_its_own_network_and_matrix() -> None:
    """--dims 3 measures nnU-Net's kind of network (instance norm, leaky ReLU) on volumes; the window
    task, when asked for, at the largest size; --width and --depth still override it."""
    volumes = _matrix("--dims", "3", "--device", "cpu")
    spec = volumes.cases[0].spec
    assert (spec.dims, spec.width, spec.depth, spec.norm, spec.activation) == (
        3,
        16,
        3,
        "instance",
        "leaky_relu",
    )
    assert {c.task for c in volumes.cases} == {"train", "infer"} and {c.size for c in volumes.cases} == {48}
    assert {c.path for c in volumes.cases} == {"torch-eager", "torch-compile", "jax"}
    window = _matrix("--dims", "3", "--tasks", "window", "--device", "cpu").cases
    assert {(c.size, c.batch, c.image_size) for c in window} == {(48, 2, 96)}
    assert window[0].id == "window-torch-eager-48vox-b2-fp32" and not volumes.scaling
    narrower = _matrix("--dims", "3", "--width", "8", "--depth", "2", "--sizes", "16", "--device", "cpu")
    assert (narrower.cases[0].spec.width, narrower.cases[0].spec.depth) == (8, 2)
    # a runtime asked to train is recorded as not applicable, not estimated (it once crashed here)
    assert (
        len(_matrix("--paths", "torch-eager,onnxruntime", "--tasks", "train", "--device", "cpu").cases) == 2
    )
    images = _matrix("--device", "cpu").cases[0].spec
    assert (images.dims, images.width, images.norm) == (2, 64, "batch")


def test_a_device_that_is_not_here_is_refused_naming_those_that_are() -> None:
    out = _refused(*DEVICE_NOT_HERE)
    assert "--device cuda:99: " in out and "; devices here: cpu" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # the matrix's OptionError: pytest's usage error, the message alone in the output
        (
            ("--paths", "torch-eager,tensorrt", "--device", "cpu"),
            "ERROR: --paths: tensorrt needs a CUDA device; this run's device is cpu\n",
        ),
        # argparse's own refusal of a value, as pytest reports it
        (("--upconv", "nativ"), "argument --upconv: invalid choice: 'nativ' (choose from 'auto', 'native',"),
    ],
)
def test_a_refusal_is_pytests_usage_error_in_one_line(args: tuple, message: str) -> None:
    """End to end, in a pytest process of its own: exit code 4, the message, no traceback."""
    assert _usage_error(_collect(*args)).count(message) == 1


def _usage_error(result: subprocess.CompletedProcess) -> str:
    """The output of a command line pytest refused as a usage error (exit code 4), in one line of its
    own, not a traceback."""
    out = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    return out


@pytest.mark.parametrize(
    ("gpus", "device", "message"),
    [
        (0, "cuda", "--device cuda: no CUDA device on this machine; devices here: cpu"),
        (0, "cuda:0", "--device cuda:0: no CUDA device on this machine; devices here: cpu"),
        (2, "cuda:3", "--device cuda:3: no such device; devices here: cpu, cuda:0, cuda:1"),
        (2, "cuda", None),
        (2, "cuda:1", None),
        (0, "cpu", None),
    ],
)
def test_the_devices_here_are_named(monkeypatch, gpus: int, device: str, message: str | None) -> None:
    """As on a machine with that many GPUs, which this test needs not have."""
    monkeypatch.setattr(environment, "gpus", lambda: ("GPU",) * gpus)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    problem = environment.device_problem(device)
    assert (None if problem is None else f"--device {device}: {problem}") == message


@pytest.mark.parametrize(
    ("option", "problem"),
    [("--results-dir", "file"), ("--results-dir", "under a file"), ("--compile-cache", "file")],
)
def test_a_folder_that_cannot_be_written_is_refused(tmp_path: Path, option: str, problem: str) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("")
    folder = file / "runs" if problem == "under a file" else file
    out = _refused(option, str(folder))
    assert f"{option} {folder}: {file} is a file, not a folder" in out


def test_an_unusable_default_compile_cache_is_refused_naming_the_option_to_give(
    tmp_path: Path, monkeypatch
) -> None:
    """A home folder that cannot hold the default cache (here a file) stops the run before any case,
    in one line that names the folder and the option, not the user's --compile-cache (not given)."""
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    out = _usage_error(_collect())  # in a pytest process: nothing but the line is printed
    folder = home / ".cache" / "unet-bench" / "compile"
    assert (
        f"ERROR: the default compile cache folder {folder}: {home} is a file, not a folder; "
        "give --compile-cache FOLDER\n" in out
    )
    assert [line for line in out.splitlines() if line.strip()] == [out.strip()]  # nothing else: one line
    assert out.count("--compile-cache") == 1 and home.read_text() == ""


def test_a_read_only_results_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("this user may write anywhere (root)")
    out = _refused("--results-dir", str(folder / "results"))
    assert f"--results-dir {folder / 'results'}: {folder} is not writable" in out


@pytest.mark.parametrize(("args", "message"), SIZES)
def test_a_size_the_network_cannot_take_blames_the_option_at_fault(args: tuple, message: str) -> None:
    assert message in _refused(*args)


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_options_are_refused_with_the_fix(args: tuple, message: str) -> None:
    assert _refused(*args).count(message) == 1


@pytest.mark.parametrize(
    ("told", "paths", "refused"),
    [
        ("cuda", "torch-eager,jax", True),
        ("tpu,gpu", "jax-plain", True),
        ("cpu", "jax", False),
        ("cuda", "torch-eager", False),
    ],
)
def test_a_jax_platform_the_run_cannot_use_is_refused_up_front(monkeypatch, told, paths, refused) -> None:
    """JAX_PLATFORMS=cuda on this CPU: one line before anything runs, not an empty AssertionError per
    case; a run without jax paths is not concerned."""
    monkeypatch.setenv("JAX_PLATFORMS", told)
    args = ("--paths", paths, "--device", "cpu")
    if refused:
        message = f"--paths {paths}: JAX_PLATFORMS={told} leaves out cpu, the run's device (cpu): unset it"
        assert _refused(*args).count(message) == 1
    else:
        assert _matrix(*args).cases


def test_a_device_hidden_by_cuda_visible_devices_says_so(monkeypatch) -> None:
    monkeypatch.setattr(environment, "gpus", lambda: ())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert environment.device_problem("cuda") == (
        "no CUDA device on this machine; devices here: cpu (CUDA_VISIBLE_DEVICES= hides the others)"
    )
