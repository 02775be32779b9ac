"""impls/export.py: each route's file computes what its source model computes, at small widths.

AOTInductor's compile is the slow part on a CPU (about 20 s for the smallest model): one test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from impls import convert, export, torch_unet
from impls.checks import err
from impls.spec import UNetSpec
from tests.helpers import random_weights

SAME = UNetSpec(width=4, depth=2)  # valid sides 4, 8, 12, ...
DEEP = UNetSpec(width=4, depth=3)  # 8, 16, 24, ...: torch.onnx alone failed dynamic exports from depth 3 on
SAME_ANY_SIZE = UNetSpec(width=4, depth=2, pad_to_skip=True)  # as a milesial import
PAPER = UNetSpec(width=4, depth=2, padding="valid", upsample="bilinear", conv_bias=False)  # 44, 48, ...
VOLUME = UNetSpec(width=2, depth=2, dims=3, norm="instance", activation="leaky_relu")  # 4, 8, 12, ... a side
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    named = (("same", SAME), ("deep", DEEP), ("paper", PAPER), ("skip", SAME_ANY_SIZE), ("volume", VOLUME))
    for name, spec in named:
        paths[name] = folder / f"{name}.safetensors"
        convert.save(paths[name], random_weights(spec, seed=3), spec)
    return paths


def _torch_logits(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    weights, spec = convert.load(checkpoint)
    model = convert.to_torch(weights, torch_unet.build(spec)).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _x(*shape: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _run_without_the_project(script: str, *args: str) -> str:
    """Run ``script`` in a fresh interpreter outside the repository, with no path to its code."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=Path(args[0]).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# -- ONNX ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dynamic_onnx(checkpoints, tmp_path_factory) -> tuple[Path, export.Export]:
    out = tmp_path_factory.mktemp("onnx") / "unet.onnx"
    return out, export.to_onnx(checkpoints["deep"], out, batch=2, size=(16, 24), dynamic=True)


def test_dynamic_onnx_takes_other_batches_and_sizes(checkpoints, dynamic_onnx) -> None:
    out, result = dynamic_onnx
    assert [shape for shape, _ in result.checks] == [(2, 1, 16, 24), (3, 1, 24, 40)]
    assert all(e <= export.TOLERANCE for _, e in result.checks)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, "8*h", "8*w"]  # the spec's valid sides
    assert session.get_outputs()[0].shape == ["batch", 2, "8*h", "8*w"]
    assert session.get_modelmeta().custom_metadata_map["unet_spec"] == DEEP.to_json()
    assert {o.version for o in onnx.load(str(out)).opset_import if o.domain == ""} == {18}
    for shape in [(1, 1, 16, 16), (4, 1, 40, 24)]:  # neither is the traced one
        x = _x(*shape)
        got = session.run(None, {"x": x})[0]
        assert err(got, _torch_logits(checkpoints["deep"], x)) <= 1e-5, shape
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.Fail, match="Concat"):
        session.run(None, {"x": _x(1, 1, 36, 32)})  # 36 is not a multiple of 2**depth


def test_the_onnx_file_runs_in_openvino(checkpoints, dynamic_onnx) -> None:
    import openvino

    # In fp32: on a CPU with AMX or AVX512-BF16 OpenVINO computes in bfloat16 unless told (err 1.2e-2 here)
    compiled = openvino.Core().compile_model(str(dynamic_onnx[0]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = _x(2, 1, 24, 16)
    assert err(compiled(x)[0], _torch_logits(checkpoints["deep"], x)) <= 1e-5


@pytest.mark.parametrize("name", ["same", "paper"])
def test_flax_route_to_onnx_computes_what_the_torch_route_computes(checkpoints, tmp_path, name) -> None:
    size = (20, 28) if name == "same" else (48, 52)
    via_torch = export.to_onnx(checkpoints[name], tmp_path / "torch.onnx", batch=2, size=size)
    via_flax = export.to_onnx(checkpoints[name], tmp_path / "flax.onnx", batch=2, size=size, via="flax")
    assert via_flax.route == "onnx (Flax through jax2onnx)" and via_flax.layout == "NCHW"
    x = _x(2, 1, *size)
    outputs = [
        onnxruntime.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for f in ("torch.onnx", "flax.onnx")
    ]
    assert (
        outputs[0].shape == outputs[1].shape == (2, 2, *convert.load(checkpoints[name])[1].output_size(*size))
    )
    assert err(outputs[1], outputs[0]) <= 1e-5
    assert via_torch.input_shape == via_flax.input_shape == f"(2, 1, {size[0]}, {size[1]})"


# -- AOTInductor ----------------------------------------------------------------------------


def test_dynamic_aoti_package_loads_without_the_project_and_refuses_invalid_sizes(
    checkpoints, tmp_path
) -> None:
    out = tmp_path / "unet.pt2"
    result = export.to_aoti(checkpoints["same"], out, size=(8, 12), dynamic=True)
    assert [shape for shape, _ in result.checks] == [(1, 1, 8, 12), (2, 1, 12, 20)]
    x = _x(3, 1, 16, 8)
    np.save(tmp_path / "x.npy", x)
    script = """
        import sys, numpy as np, torch
        from torch._inductor import aoti_load_package
        model = aoti_load_package(sys.argv[1])
        print(model.get_metadata()["unet_spec"])
        np.save(sys.argv[2], model(torch.from_numpy(np.load(sys.argv[3]))).numpy())
        try:
            model(torch.zeros(1, 1, 18, 16))
        except RuntimeError as error:
            print("refused:", str(error).splitlines()[0])
    """
    printed = _run_without_the_project(script, str(out), str(tmp_path / "y.npy"), str(tmp_path / "x.npy"))
    assert printed.splitlines()[0] == SAME.to_json()
    assert "refused: Expected Eq(Mod(" in printed and "received 18" in printed
    assert err(np.load(tmp_path / "y.npy"), _torch_logits(checkpoints["same"], x)) <= 1e-5


# -- jax.export ------------------------------------------------------------------------------


def test_dynamic_jax_export_reloads_without_the_project(checkpoints, tmp_path) -> None:
    out = tmp_path / "unet.stablehlo"
    result = export.to_jax(checkpoints["paper"], out, size=(44, 48), dynamic=True)
    assert result.layout == "NHWC" and result.input_shape == "(batch, 4*h, 4*w, 1)"
    assert [shape for shape, _ in result.checks] == [(1, 44, 48, 1), (2, 48, 56, 1)]
    x = _x(3, 1, 52, 44)
    np.save(tmp_path / "x.npy", x.transpose(0, 2, 3, 1))
    script = """
        import sys, numpy as np, jax
        exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
        print(",".join(exported.platforms))
        np.save(sys.argv[2], np.asarray(exported.call(np.load(sys.argv[3]))))
        try:
            exported.call(np.zeros((1, 46, 48, 1), np.float32))
        except ValueError as error:
            print("refused:", str(error).splitlines()[0])
    """
    printed = _run_without_the_project(script, str(out), str(tmp_path / "y.npy"), str(tmp_path / "x.npy"))
    assert printed.splitlines()[0] == "cpu,cuda"
    assert "refused: Input shapes do not match the polymorphic shapes specification" in printed
    got = np.load(tmp_path / "y.npy").transpose(0, 3, 1, 2)
    assert err(got, _torch_logits(checkpoints["paper"], x)) <= 1e-5  # and the same as PyTorch's
    assert str(export.load_jax(out).in_avals[0].shape) == "(batch, 4*h, 4*w, 1)"


# -- volumes -----------------------------------------------------------------------------------


def test_a_3d_checkpoint_exports_dynamic_on_every_route_that_takes_one(checkpoints, tmp_path) -> None:
    """ONNX (torch route), AOTInductor and jax.export take NCDHW or NDHWC volumes of symbolic batch
    and sides; each file run at a batch and size other than the ones it was checked at."""
    x = _x(3, 1, 12, 8, 16)
    want = _torch_logits(checkpoints["volume"], x)

    onnx_file = export.to_onnx(checkpoints["volume"], tmp_path / "v.onnx", size=8, dynamic=True)
    assert onnx_file.layout == "NCDHW" and onnx_file.input_shape == "(batch, 1, 4*d, 4*h, 4*w)"
    assert [shape for shape, _ in onnx_file.checks] == [(1, 1, 8, 8, 8), (2, 1, 12, 16, 16)]
    session = onnxruntime.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    assert err(session.run(None, {"x": x})[0], want) <= 1e-5

    jax_file = export.to_jax(checkpoints["volume"], tmp_path / "v.stablehlo", size=(8, 8, 12), dynamic=True)
    assert jax_file.layout == "NDHWC" and jax_file.input_shape == "(batch, 4*d, 4*h, 4*w, 1)"
    got = np.asarray(export.load_jax(tmp_path / "v.stablehlo").call(np.moveaxis(x, 1, -1)))
    assert err(np.moveaxis(got, -1, 1), want) <= 1e-5

    aoti_file = export.to_aoti(checkpoints["volume"], tmp_path / "v.pt2", size=8, dynamic=True)
    assert aoti_file.input_shape.startswith("(batch, 1, depth, height, width), depth, height and width 4*k")
    package = torch._inductor.aoti_load_package(str(tmp_path / "v.pt2"))
    with torch.no_grad():
        assert err(package(torch.from_numpy(x)).numpy(), want) <= 1e-5


def test_an_export_that_differs_is_refused_and_not_written(checkpoints, tmp_path, monkeypatch) -> None:
    real = jax.export.deserialize

    class Off:
        def __init__(self, exported) -> None:
            self.exported, self.in_avals = exported, exported.in_avals

        def call(self, x):
            return self.exported.call(x) * 1.001

    monkeypatch.setattr(jax.export, "deserialize", lambda blob: Off(real(blob)))
    out = tmp_path / "unet.stablehlo"
    with pytest.raises(export.ExportError) as info:
        export.to_jax(checkpoints["same"], out, size=(8, 8))
    message = str(info.value)
    assert message.startswith(f"{out}: the exported StableHLO differs from the source model")
    assert "(1, 8, 8, 1): err 0.001 > 1e-05; nothing written" in message
    assert os.listdir(tmp_path) == []  # no file, no partial one


def test_exports_in_a_process_set_to_ieee_fp32_by_the_new_api(checkpoints, tmp_path) -> None:
    """The benchmark runners choose IEEE fp32 through ``fp32_precision``, after which torch's legacy
    TF32 getter, which torch.export calls, raises (pytorch#179445): the export works around it and
    leaves the process's choice as it was."""
    from bench.runners.torch_precision import conv_fp32_precision, set_precision

    set_precision(False)
    try:
        result = export.to_onnx(checkpoints["same"], tmp_path / "unet.onnx", batch=1, size=(8, 8))
        assert result.checks[0][1] < export.TOLERANCE
        assert conv_fp32_precision() == "ieee"
    finally:
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "tf32"


# -- the command ------------------------------------------------------------------------------


def test_command_writes_and_says_what_it_checked(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "new" / "unet.stablehlo"
    code = export.main(
        [str(checkpoints["same"]), "--to", "jax", str(out), "--batch", "2", "--size", "8", "12"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"wrote {out}: jax (jax.export, StableHLO for cpu and cuda), NHWC float32 input"
    )
    assert "(2, 8, 12, 1): err" in printed
    assert export.load_jax(out).in_avals[0].shape == (2, 8, 12, 1)
    # the same output again: kept unless --force, then replaced
    argv = [str(checkpoints["same"]), "--to", "jax", str(out), "--size", "8", "8"]
    assert export.main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert export.load_jax(out).in_avals[0].shape == (2, 8, 12, 1)
    assert export.main([*argv, "--force"]) == 0
    assert export.load_jax(out).in_avals[0].shape == (1, 8, 8, 1)


def test_command_runs_as_a_module(checkpoints, tmp_path) -> None:
    command = [sys.executable, "-m", "impls.export", str(checkpoints["same"]), "--to", "onnx"]
    done = subprocess.run(
        [*command, str(tmp_path / "o.onnx"), "--size", "30", "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: size 30x30 for ") and "nearest valid: 28 and 32" in done.stderr


@pytest.mark.parametrize(("to", "absent"), [("jax", "torch"), ("onnx", "jax")])
def test_each_route_imports_only_its_own_framework(checkpoints, tmp_path, to, absent) -> None:
    argv = [
        str(checkpoints["same"]),
        "--to",
        to,
        str(tmp_path / f"o{export.SUFFIXES[to]}"),
        "--size",
        "8",
        "8",
    ]
    script = f"""
        import sys
        from impls import export
        assert "torch" not in sys.modules and "jax" not in sys.modules, "imported by impls.export itself"
        assert export.main({argv!r}) == 0
        print(",".join(name for name in ("torch", "jax", "onnxruntime") if name in sys.modules))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.splitlines()[-1].split(",")
    assert to.replace("onnx", "torch") in loaded and absent not in loaded


# -- bad input ----------------------------------------------------------------------------


def _another_users_file(path: Path) -> Path:
    path.write_bytes(b"a package the user made earlier")
    return path


def _text_file(folder: Path) -> Path:
    path = folder / "notes.safetensors"
    path.write_text("hello world\n")
    return path


BAD = {
    "not a checkpoint": (
        lambda c, t: [str(_text_file(t)), "--to", "onnx", str(t / "o.onnx")],
        ["notes.safetensors: found a file in a format not read here", "expected a canonical unet-bench"],
    ),
    "no such checkpoint": (
        lambda c, t: [str(t / "nowhere.safetensors"), "--to", "jax", str(t / "o")],
        ["nowhere.safetensors: no such file; expected a canonical unet-bench safetensors file"],
    ),
    "a size the spec rejects": (
        lambda c, t: [str(c["same"]), "--to", "aoti", str(t / "o.pt2"), "--size", "32", "30"],
        [
            "size 32x30 for ",
            "width 30 is not a valid input size (padding='same' needs a multiple of 2**depth = 4); "
            "nearest valid: 28 and 32",
        ],
    ),
    "a size the paper's spec rejects": (
        lambda c, t: [str(c["paper"]), "--to", "jax", str(t / "o"), "--size", "50", "44"],
        ["height 50 is not a valid input size", "nearest valid: 48 and 52"],
    ),
    "an output under a file": (
        lambda c, t: [str(c["same"]), "--to", "onnx", str(_text_file(t) / "o.onnx")],
        ["output ", "notes.safetensors is a file, not a folder"],
    ),
    "an output that is a folder": (
        lambda c, t: [str(c["same"]), "--to", "jax", str(t)],
        ["output {t} is a folder: give a file name inside it"],
    ),
    "the checkpoint as output": (
        lambda c, t: [str(c["same"]), "--to", "jax", str(c["same"])],
        ["is also the input", "choose another output file"],
    ),
    "an output of another format": (
        lambda c, t: [str(c["same"]), "--to", "onnx", str(t / "unet.safetensors")],
        ["output {t}/unet.safetensors: this format's files end in .onnx: name it unet.onnx"],
    ),
    "an output that exists": (
        lambda c, t: [str(c["same"]), "--to", "aoti", str(_another_users_file(t / "other.pt2"))],
        ["other.pt2 already exists: choose another name, or replace it with --force"],
    ),
    "a batch of 0": (
        lambda c, t: [str(c["same"]), "--to", "jax", str(t / "o"), "--batch", "0"],
        ["batch=0: expected an integer >= 1"],
    ),
    "--via for aoti": (
        lambda c, t: [str(c["same"]), "--to", "aoti", str(t / "o.pt2"), "--via", "flax"],
        ["via='flax' is for to='onnx' only; to='aoti' exports the PyTorch model"],
    ),
    "--dynamic through jax2onnx": (
        lambda c, t: [str(c["same"]), "--to", "onnx", str(t / "o.onnx"), "--via", "flax", "--dynamic"],
        [
            "jax2onnx 0.13.0 keeps no symbolic size through a max-pool",
            "take the dynamic ONNX file from via='torch'",
        ],
    ),
    "--dynamic ONNX of a spec that takes any size": (
        lambda c, t: [str(c["skip"]), "--to", "onnx", str(t / "o.onnx"), "--size", "9", "10", "--dynamic"],
        ["pad_to_skip=True) with dynamic=True to ONNX", "ONNX keeps no asserts", "dynamic to aoti or jax"],
    ),
    "a volume's size with two sides": (
        lambda c, t: [str(c["volume"]), "--to", "jax", str(t / "o"), "--size", "8", "8"],
        ["size (8, 8) for ", "its 3D U-Net takes one side or 3 (D H W)"],
    ),
    "a volume's side the spec rejects": (
        lambda c, t: [str(c["volume"]), "--to", "onnx", str(t / "o.onnx"), "--size", "8", "10", "8"],
        ["size 8x10x8 for ", "height 10 is not a valid input size", "nearest valid: 8 and 12"],
    ),
    "a volume through jax2onnx": (
        lambda c, t: [str(c["volume"]), "--to", "onnx", str(t / "o.onnx"), "--via", "flax", "--size", "8"],
        ["via='flax' takes 2D U-Nets only", "take the ONNX file from via='torch', which exports 3D"],
    ),
    "--dynamic below the sizes torch.export takes": (
        lambda c, t: [str(c["same"]), "--to", "onnx", str(t / "o.onnx"), "--size", "4", "8", "--dynamic"],
        ["size 4x8 for ", "made at a side of at least 8", "give --size 8 8 or larger"],
    ),
}


@pytest.mark.parametrize("bad", list(BAD))  # not "case": bench/plugin.py parametrizes that
def test_bad_input_is_one_line_and_exit_1(checkpoints, tmp_path, capsys, bad) -> None:
    argv, parts = BAD[bad]
    args = argv(checkpoints, tmp_path)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    folders = sorted(path for path in tmp_path.rglob("*") if path.is_dir())
    assert export.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    for part in parts:
        assert part.format(t=tmp_path) in captured.err, captured.err
    # nothing written, nothing changed
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert sorted(path for path in tmp_path.rglob("*") if path.is_dir()) == folders


def test_functions_refuse_what_the_command_cannot_be_given(checkpoints, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"to='tflite': expected one of onnx, aoti, jax"):
        export.export(checkpoints["same"], "tflite", tmp_path / "o")
    with pytest.raises(ValueError, match=r"via='tf': expected one of torch, flax"):
        export.to_onnx(checkpoints["same"], tmp_path / "o", via="tf")
    with pytest.raises(ValueError, match=r"size height=2.5: expected an integer >= 1"):
        export.to_jax(checkpoints["same"], tmp_path / "o", size=(2.5, 8))
    with pytest.raises(convert.CheckpointError):
        export.to_aoti(_text_file(tmp_path), tmp_path / "o.pt2")
    assert sorted(os.listdir(tmp_path)) == ["notes.safetensors"]
