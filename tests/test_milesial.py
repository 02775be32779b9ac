"""Importing milesial/Pytorch-UNet checkpoints: exact at every size the original accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from impls import convert, flax_unet, torch_unet
from impls.checks import err
from impls.spec import UNetSpec
from tests import milesial_reference
from tests.helpers import assert_refused, channels_first, channels_last


@pytest.fixture(scope="module")
def original() -> torch.nn.Module:
    torch.manual_seed(0)
    model = milesial_reference.UNet(n_channels=3, n_classes=2, width=8)
    with torch.no_grad():  # random BatchNorm statistics and affine parameters, not the defaults
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(original, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("milesial") / "checkpoint.pth"
    torch.save({**original.state_dict(), "mask_values": [0, 1]}, path)  # as its train.py saves it
    return str(path)


@pytest.mark.parametrize(
    ("height", "width"), [(64, 48), (75, 50), (33, 17)], ids=["divisible", "odd", "tiny"]
)
def test_both_models_compute_what_the_original_computes(
    original, checkpoint, height: int, width: int
) -> None:
    weights, spec = convert.from_milesial(checkpoint)
    assert spec.pad_to_skip and not spec.conv_bias and spec.in_channels == 3 and spec.width == 8
    x = np.random.default_rng(0).normal(size=(2, 3, height, width)).astype(np.float32)
    with torch.no_grad():
        want = original(torch.tensor(x)).numpy()
    ours = convert.to_torch(weights, torch_unet.build(spec)).eval()
    with torch.no_grad():
        assert err(ours(torch.tensor(x)).numpy(), want) <= 1e-5
    flax_model = convert.to_flax(weights, flax_unet.abstract(spec)).eval()
    assert err(channels_first(flax_model(jnp.asarray(channels_last(x)))), want) <= 1e-5


def test_a_state_dict_in_memory_and_the_command_line(original, checkpoint, tmp_path) -> None:
    weights, spec = convert.from_milesial(original.state_dict())
    target = tmp_path / "new folder" / "unet.safetensors"  # created
    assert convert.main(["from-milesial", checkpoint, str(target)]) == 0
    loaded, loaded_spec = convert.load(target)
    assert loaded_spec == spec
    for name, array in weights.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_an_unknown_key_is_named(original) -> None:
    state = {**original.state_dict(), "down2.attention.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"down2\.attention\.weight"):
        convert.from_milesial(state)


def test_the_bilinear_variant_is_refused_with_what_differs(original) -> None:
    state = {k: v for k, v in original.state_dict().items() if ".up." not in k}  # no learned up-conv
    with pytest.raises(ValueError, match=r"bilinear=True.*align_corners=True"):
        convert.from_milesial(state)


def test_pad_to_skip_needs_same_padding() -> None:
    with pytest.raises(ValueError, match="pad_to_skip=True: expected padding='same'"):
        convert.UNetSpec(pad_to_skip=True, padding="valid")


# -- what is not a milesial checkpoint, each said with the file and the fix -----------

EXPECTED = "expected a milesial/Pytorch-UNet UNet(bilinear=False) state_dict"
SAVE_STATE = "Fix: torch.save(model.state_dict(), 'weights.pth'), then convert weights.pth"
ROOT = Path(__file__).parent.parent


def _refused(source: object, *parts: str, error: type[Exception] = convert.CheckpointError) -> str:
    name = source if isinstance(source, Path) else "the state_dict given"
    return assert_refused(lambda: convert.from_milesial(source), f"{name}: ", *parts, error=error)


def _saved(folder: Path, value: object) -> Path:
    path = folder / "in.pth"
    torch.save(value, path)
    return path


def test_a_missing_file_is_named(tmp_path) -> None:
    _refused(tmp_path / "nowhere.pth", f"no such file; {EXPECTED}", error=convert.CheckpointNotFoundError)


@pytest.mark.parametrize(
    ("content", "found", "fix"),
    [
        (
            b"hello world\n",
            "a file in a format not read here (it starts with b'hello wo')",
            "give the .pth file",
        ),
        (b"", "an empty file", "the file is incomplete or damaged"),
    ],
    ids=["text", "empty"],
)
def test_a_file_that_is_no_torch_checkpoint(tmp_path, content: bytes, found: str, fix: str) -> None:
    path = tmp_path / "in.pth"
    path.write_bytes(content)
    _refused(path, f"found {found}; {EXPECTED}", f"Fix: {fix}")


def test_a_truncated_checkpoint(checkpoint, tmp_path) -> None:
    path = tmp_path / "cut.pth"
    path.write_bytes(Path(checkpoint).read_bytes()[:1000])
    _refused(path, "found an unreadable PyTorch checkpoint (", EXPECTED, "make it again")


def test_a_safetensors_file_is_sent_to_load(tmp_path) -> None:
    path = tmp_path / "unet.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2)}, str(path))
    _refused(path, "found a safetensors file", "it is converted already: read it with impls.convert.load")


def test_a_pickled_list(original, tmp_path) -> None:
    path = _saved(tmp_path, list(original.state_dict().values())[:3])
    _refused(path, "found a list of 3 items, not a dict of tensors", EXPECTED, SAVE_STATE)


def test_a_whole_pickled_model_is_explained_not_unpickled(original, tmp_path) -> None:
    path = _saved(tmp_path, original)
    _refused(
        path,
        "found a whole model saved with torch.save(model) (pickled classes: tests.milesial_reference.",
        "weights_only=False, unsafe",
        EXPECTED,
        "Fix: where the model is defined, torch.save(model.state_dict(), 'weights.pth')",
        f"only if you trust the file, torch.save(torch.load('{path}', weights_only=False).state_dict(), ",
    )


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model", "net"])
def test_a_training_checkpoint_names_the_key_to_unwrap(original, tmp_path, key: str) -> None:
    path = _saved(tmp_path, {"epoch": 3, key: original.state_dict(), "optimizer_state_dict": {"lr": 0.1}})
    fix = f"Fix: torch.save(torch.load('{path}')[{key!r}], 'weights.pth'), then convert weights.pth"
    _refused(path, f"holding the state_dict under {key!r}", EXPECTED, fix)
    torch.save(torch.load(path)[key], tmp_path / "weights.pth")  # the fix, followed
    assert convert.from_milesial(tmp_path / "weights.pth")[1].width == 8


def test_a_training_checkpoint_in_memory(original) -> None:
    _refused({"net": original.state_dict()}, "under 'net'", "Fix: pass checkpoint['net'] instead")


@pytest.mark.parametrize(
    ("state", "fix"),
    [
        (lambda o: torch_unet.build(UNetSpec(width=4, depth=2)).state_dict(), "unet-bench's own names"),
        (lambda o: {f"module.{k}": v for k, v in o.state_dict().items()}, "strip the 'module.'"),
        (lambda o: {"encoder.0.weight": torch.zeros(1)}, "only milesial/Pytorch-UNet's UNet is imported"),
    ],
    ids=["unet-bench", "data-parallel", "other"],
)
def test_a_state_dict_of_another_model(original, state, fix: str) -> None:
    _refused(state(original), "found a dict that is not a milesial/Pytorch-UNet state_dict", EXPECTED, fix)


def test_entries_that_are_not_tensors(original) -> None:
    state = {**original.state_dict(), "outc.conv.bias": [0.0, 1.0]}
    _refused(state, "found entries that are not tensors: outc.conv.bias", "pass model.state_dict() instead")


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "impls.convert", "from-milesial", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_error(stderr: str, *parts: str) -> None:
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert all(part in stderr for part in parts), stderr


def test_the_command_refuses_to_write_over_its_input(checkpoint, tmp_path) -> None:
    source = tmp_path / "checkpoint.pth"
    shutil.copy(checkpoint, source)
    before = source.read_bytes()
    done = _command(str(source), str(source))
    assert done.returncode == 1
    _assert_one_line_error(done.stderr, f"output {source} is also the input {source}: choose another")
    assert source.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # no temporary file left


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "other.safetensors",
            "other.safetensors already exists: choose another name, or replace it with --force",
        ),
        ("m.onnx", "m.onnx: this format's files end in .safetensors: name it m.safetensors"),
    ],
)
def test_the_command_keeps_a_file_the_user_has(checkpoint, tmp_path, capsys, name: str, message: str) -> None:
    """An existing file is replaced only with --force; an output's name must fit its format."""
    target = tmp_path / name
    target.write_bytes(b"another checkpoint")
    assert convert.main(["from-milesial", checkpoint, str(target)]) == 1
    _assert_one_line_error(capsys.readouterr().err, "error: output ", message)
    assert target.read_bytes() == b"another checkpoint" and os.listdir(tmp_path) == [name]
    if name.endswith(".safetensors"):
        assert convert.main(["from-milesial", checkpoint, str(target), "--force"]) == 0
        assert convert.load(target)[1].width == convert.from_milesial(checkpoint)[1].width


def test_the_command_names_a_missing_input(tmp_path) -> None:
    done = _command(str(tmp_path / "nowhere.pth"), str(tmp_path / "out.safetensors"))
    assert done.returncode == 1
    _assert_one_line_error(done.stderr, f"error: {tmp_path / 'nowhere.pth'}: no such file; {EXPECTED}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content", ["list", "model", "wrapper", "text"])
def test_the_command_says_each_refusal_in_one_line(original, tmp_path, capsys, content: str) -> None:
    path = tmp_path / "in.pth"
    if content == "text":
        path.write_text("hello")
    else:
        torch.save(
            {"list": [1, 2], "model": original, "wrapper": {"model": original.state_dict()}}[content], path
        )
    assert convert.main(["from-milesial", str(path), str(tmp_path / "out.safetensors")]) == 1
    _assert_one_line_error(capsys.readouterr().err, f"error: {path}: found ", EXPECTED, "Fix: ")
    assert os.listdir(tmp_path) == ["in.pth"]
