"""The conversion layer: layouts, the known traps, files, and strictness."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

from impls import convert, flax_unet, torch_unet
from impls.checks import err
from impls.flax_unet import BatchNorm
from impls.spec import UNetSpec
from tests import reference_numpy
from tests.helpers import assert_refused, channels_first, channels_last, random_weights

SPECS = [
    UNetSpec(in_channels=3, num_classes=2, width=5, depth=2),
    UNetSpec(
        in_channels=1, num_classes=3, width=4, depth=2, padding="valid", upsample="bilinear", conv_bias=False
    ),
    UNetSpec(in_channels=2, num_classes=2, width=4, depth=1, norm="none"),
]
SPECS_3D = [
    UNetSpec(
        in_channels=2, width=3, depth=2, dims=3, norm="instance", upsample="bilinear", activation="leaky_relu"
    ),
    UNetSpec(width=2, depth=1, dims=3, padding="valid", conv_bias=False),
]
DTYPES = [
    (np.float32, torch.float32, jnp.float32),
    (np.float64, torch.float64, jnp.float64),
    (ml_dtypes.bfloat16, torch.bfloat16, jnp.bfloat16),
]


@pytest.mark.parametrize(
    "spec", SPECS + SPECS_3D, ids=lambda s: f"{s.dims}d-{s.padding}-{s.upsample}-{s.norm}"
)
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: np.dtype(d[0]).name)
def test_round_trip_torch_flax_torch_is_bit_exact(spec: UNetSpec, dtypes: tuple) -> None:
    np_dtype, torch_dtype, jax_dtype = dtypes
    with jax.enable_x64(np_dtype == np.float64):
        source = convert.to_torch(random_weights(spec, seed=5), torch_unet.build(spec, dtype=torch_dtype))
        canonical = convert.from_torch(source)
        assert all(v.dtype == np_dtype for v in canonical.values())
        flax_model = convert.to_flax(canonical, flax_unet.abstract(spec, dtype=jax_dtype))
        back = convert.from_flax(flax_model)
    assert list(back) == list(canonical)
    target = convert.to_torch(back, torch_unet.build(spec, dtype=torch_dtype))
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_to_functions_load_into_the_module_dtype() -> None:
    spec = SPECS[0]
    weights = random_weights(spec, dtype=np.float64)
    t = convert.to_torch(weights, torch_unet.build(spec))
    f = convert.to_flax(weights, flax_unet.abstract(spec))
    for name, array in convert.from_torch(t).items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, weights[name].astype(np.float32))
    for name, array in convert.from_flax(f).items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, weights[name].astype(np.float32))


def test_from_torch_is_a_copy() -> None:
    model = torch_unet.build(SPECS[0])
    weights = convert.from_torch(model)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert not np.array_equal(weights["head.bias"], convert.from_torch(model)["head.bias"])


# -- the known traps, each on its own layer ------------------------------------


def _loaded_pair(spec: UNetSpec) -> tuple[torch.nn.Module, nnx.Module, dict]:
    weights = random_weights(spec, seed=6)
    return (
        convert.to_torch(weights, torch_unet.build(spec)),
        convert.to_flax(weights, flax_unet.abstract(spec)),
        weights,
    )


def test_conv_kernel_goes_oihw_to_hwio() -> None:
    t, f, weights = _loaded_pair(SPECS[0])  # 3 -> 5 channels: no transpose of in and out passes
    np.testing.assert_array_equal(
        f.down0.conv1.kernel[...], weights["down0.conv1.weight"].transpose(2, 3, 1, 0)
    )
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 11)).astype(np.float32)
    assert (
        err(
            channels_first(f.down0.conv1(jnp.asarray(channels_last(x)))),
            t.down0.conv1(torch.tensor(x)).detach(),
        )
        < 1e-6
    )


def test_transposed_conv_kernel_is_flipped() -> None:
    t, f, weights = _loaded_pair(SPECS[0])
    x = np.random.default_rng(0).normal(size=(2, 10, 3, 5)).astype(np.float32)
    want = t.up0.upconv(torch.tensor(x)).detach().numpy()
    got = channels_first(f.up0.upconv(jnp.asarray(channels_last(x))))
    assert got.shape == want.shape == (2, 5, 6, 10)
    assert err(got, want) < 1e-6
    # The trap is real: the same kernel without the flip computes something else.
    unflipped = weights["up0.upconv.weight"].transpose(2, 3, 0, 1)
    f.up0.upconv.kernel[...] = jnp.asarray(unflipped)
    assert err(channels_first(f.up0.upconv(jnp.asarray(channels_last(x)))), want) > 0.1


def test_3d_kernels_go_oidhw_to_dhwio_and_the_transposed_one_is_flipped_on_every_axis() -> None:
    t, f, weights = _loaded_pair(UNetSpec(in_channels=3, width=5, depth=1, dims=3))
    np.testing.assert_array_equal(
        f.down0.conv1.kernel[...], weights["down0.conv1.weight"].transpose(2, 3, 4, 1, 0)
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 7, 6)).astype(np.float32)
    got = channels_first(f.down0.conv1(jnp.asarray(channels_last(x))))
    assert err(got, t.down0.conv1(torch.tensor(x)).detach()) < 1e-6
    x = rng.normal(size=(2, 10, 3, 5, 4)).astype(np.float32)
    want = t.up0.upconv(torch.tensor(x)).detach().numpy()
    got = channels_first(f.up0.upconv(jnp.asarray(channels_last(x))))
    assert got.shape == want.shape == (2, 5, 6, 10, 8)
    assert err(got, want) < 1e-6
    # Each of the three flips is needed: without the depth axis's the function differs.
    kernel = weights["up0.upconv.weight"].transpose(2, 3, 4, 0, 1)
    f.up0.upconv.kernel[...] = jnp.asarray(kernel[:, ::-1, ::-1])
    assert err(channels_first(f.up0.upconv(jnp.asarray(channels_last(x)))), want) > 0.1


def test_instance_norm_is_torchs_per_sample_and_channel() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(2, 3, 4, 5, 4)).astype(np.float32)  # NDHWC, 60 voxels a channel
    scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    ours = flax_unet.InstanceNorm(4, param_dtype=jnp.float32)
    ours.scale[...], ours.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    reference = torch.nn.InstanceNorm3d(4, affine=True)  # eps 1e-5, biased variance, no statistics
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(scale))
        reference.bias.copy_(torch.tensor(bias))
    want = reference(torch.tensor(channels_first(x))).detach().numpy()
    assert err(channels_first(ours(jnp.asarray(x))), want) < 1e-6
    # The statistics are each sample's: the same affine after a batch-wide normalisation differs.
    batch_wide = BatchNorm(4, param_dtype=jnp.float32)
    batch_wide.scale[...], batch_wide.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    assert err(channels_first(batch_wide(jnp.asarray(x))), want) > 1e-2


def test_batchnorm_momentum_and_unbiased_running_var() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(2, 3, 3, 4)).astype(np.float32)  # 18 values a channel
    mean0, var0 = rng.normal(size=4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    ours = BatchNorm(4, param_dtype=jnp.float32)
    reference = torch.nn.BatchNorm2d(4)  # momentum 0.1, eps 1e-5
    flax_own = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    for bn in (ours, flax_own):
        bn.mean[...], bn.var[...] = jnp.asarray(mean0), jnp.asarray(var0)
    reference.running_mean.copy_(torch.tensor(mean0))
    reference.running_var.copy_(torch.tensor(var0))

    out_ref = reference(torch.tensor(x.transpose(0, 3, 1, 2))).detach().numpy()
    out = channels_first(ours(jnp.asarray(x)))
    flax_own(jnp.asarray(x))
    assert err(out, out_ref) < 1e-6
    batch_var = x.reshape(-1, 4).var(axis=0, ddof=1)
    np.testing.assert_allclose(reference.running_var.numpy(), 0.9 * var0 + 0.1 * batch_var, rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], reference.running_var.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.mean[...], reference.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    # Flax's own BatchNorm uses the biased variance: off by the factor 17/18 on the batch term.
    assert err(flax_own.var[...], reference.running_var.numpy()) > 1e-2


def test_batchnorm_epsilon() -> None:
    spec = UNetSpec(width=2, depth=1)
    weights = random_weights(spec, seed=7)
    weights = {k: (v * 1e-6 if k.endswith("running_var") else v) for k, v in weights.items()}
    t = convert.to_torch(weights, torch_unet.build(spec)).eval()
    f = convert.to_flax(weights, flax_unet.abstract(spec)).eval()
    x = np.random.default_rng(1).normal(size=(1, 1, 8, 8)).astype(np.float32)
    assert err(channels_first(f(jnp.asarray(channels_last(x)))), t(torch.tensor(x)).detach()) < 1e-5


def test_new_flax_model_starts_in_train_mode() -> None:
    f = flax_unet.abstract(SPECS[0])  # the modules build makes, without its random values
    assert f.down0.norm1.use_running_average is False
    assert f.eval() is f and f.down0.norm1.use_running_average is True
    assert f.train() is f and f.up0.norm2.use_running_average is False


# -- files -----------------------------------------------------------------------


@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: np.dtype(d[0]).name)
def test_save_load_keeps_dtype_and_spec(tmp_path, dtypes: tuple) -> None:
    spec = SPECS[1]
    weights = random_weights(spec, dtype=dtypes[0])
    convert.save(tmp_path / "w.safetensors", weights, spec)
    loaded, loaded_spec = convert.load(tmp_path / "w.safetensors")
    assert loaded_spec == spec
    assert list(loaded) == list(spec.param_shapes())
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name].view(np.uint8), array.view(np.uint8))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.padding}-{s.upsample}-{s.norm}")
def test_independent_reader_agrees_with_both_models(tmp_path, spec: UNetSpec) -> None:
    t = convert.to_torch(random_weights(spec, seed=8), torch_unet.build(spec)).eval()
    path = str(tmp_path / "unet.safetensors")
    convert.save(path, convert.from_torch(t), spec)

    weights, file_spec = reference_numpy.read(path)
    side = 8 if spec.padding == "same" else 44
    x = np.random.default_rng(2).normal(size=(2, spec.in_channels, side, side + 4 * 2**spec.depth))
    reference = reference_numpy.forward(weights, file_spec, x)
    x32 = x.astype(np.float32)
    f = convert.to_flax(convert.load(path)[0], flax_unet.abstract(spec)).eval()
    assert reference.shape == (2, spec.num_classes, *spec.output_size(*x.shape[2:]))
    assert err(t(torch.tensor(x32)).detach(), reference) < 1e-5
    assert err(channels_first(f(jnp.asarray(channels_last(x32)))), reference) < 1e-5


# -- strictness ------------------------------------------------------------------


def _broken(spec: UNetSpec) -> dict[str, np.ndarray]:
    weights = random_weights(spec)
    del weights["down0.conv1.weight"]
    weights["down0.extra.weight"] = np.zeros(3, np.float32)
    weights["head.bias"] = np.zeros(7, np.float32)
    return weights


def _assert_lists_all(message: str) -> None:
    assert "missing (1): down0.conv1.weight" in message
    assert "unexpected (1): down0.extra.weight" in message
    assert "wrong shape (1): head.bias (7,) (expected (2,))" in message


def test_to_torch_lists_every_bad_key() -> None:
    spec = SPECS[0]
    with pytest.raises(convert.WeightsMismatchError) as info:
        convert.to_torch(_broken(spec), torch_unet.build(spec))
    _assert_lists_all(str(info.value))


def test_to_flax_lists_every_bad_key() -> None:
    spec = SPECS[0]
    with pytest.raises(convert.WeightsMismatchError) as info:
        convert.to_flax(_broken(spec), flax_unet.abstract(spec))
    _assert_lists_all(str(info.value))


def test_save_refuses_weights_that_do_not_fit_the_spec(tmp_path) -> None:
    with pytest.raises(convert.WeightsMismatchError) as info:
        convert.save(tmp_path / "w.safetensors", _broken(SPECS[0]), SPECS[0])
    _assert_lists_all(str(info.value))
    assert not (tmp_path / "w.safetensors").exists()


def test_weights_of_another_spec_are_refused() -> None:
    weights = random_weights(UNetSpec(width=4, depth=2))
    with pytest.raises(
        convert.WeightsMismatchError, match=r"down0.conv1.weight \(4, 1, 3, 3\) \(expected \(8, 1, 3, 3\)\)"
    ):
        convert.to_torch(weights, torch_unet.build(UNetSpec(width=8, depth=2)))
    with pytest.raises(convert.WeightsMismatchError, match=r"missing.*up2\.upconv\.weight"):
        convert.to_flax(weights, flax_unet.abstract(UNetSpec(width=4, depth=3)))


def _write_raw(path, weights: dict, metadata: dict | None) -> None:
    tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def test_load_refuses_a_file_without_a_spec(tmp_path) -> None:
    spec = SPECS[0]
    _write_raw(tmp_path / "w.safetensors", random_weights(spec), None)
    with pytest.raises(
        convert.CheckpointError, match="a safetensors file with no 'unet_spec' in its metadata"
    ):
        convert.load(tmp_path / "w.safetensors")


def test_load_refuses_a_spec_that_does_not_match_the_tensors(tmp_path) -> None:
    spec = SPECS[0]
    stated = UNetSpec(in_channels=3, num_classes=2, width=5, depth=3)
    _write_raw(tmp_path / "w.safetensors", random_weights(spec), {"unet_spec": stated.to_json()})
    with pytest.raises(convert.WeightsMismatchError) as info:
        convert.load(tmp_path / "w.safetensors")
    assert "the spec stored in" in str(info.value)
    assert "missing (" in str(info.value) and "down3.conv1.weight" in str(info.value)


def test_load_refuses_an_invalid_spec(tmp_path) -> None:
    spec = SPECS[0]
    bad = json.loads(spec.to_json()) | {"padding": "reflect"}
    _write_raw(tmp_path / "w.safetensors", random_weights(spec), {"unet_spec": json.dumps(bad)})
    with pytest.raises(
        convert.CheckpointError, match=r"found an invalid spec in its metadata \(UNetSpec.padding='reflect'"
    ):
        convert.load(tmp_path / "w.safetensors")


# -- files that are not canonical, and where outputs go -------------------------------

SMALL = UNetSpec(width=4, depth=2)
CANONICAL = "expected a canonical unet-bench safetensors file"
REMAKE = "Fix: the file is incomplete or damaged (an interrupted write, copy or download?): make it again"


def _saved(folder: Path) -> Path:
    path = folder / "w.safetensors"
    convert.save(path, random_weights(SMALL), SMALL)
    return path


def _pth(folder: Path, **options: bool) -> tuple[Path, str, str]:
    path = folder / "unet.pth"
    torch.save(torch_unet.build(SMALL).state_dict(), path, **options)
    found = "found a PyTorch checkpoint (a zip file, as torch.save writes)"
    return path, found, f"python -m impls.convert from-milesial {path} OUT.safetensors"


def _legacy_pth(folder: Path) -> tuple[Path, str, str]:
    path, _, fix = _pth(folder, _use_new_zipfile_serialization=False)
    return path, "found a Python pickle (torch.save's legacy format)", fix


def _cut_header(folder: Path) -> tuple[Path, str, str]:
    path = _saved(folder)
    header = int.from_bytes(path.read_bytes()[:8], "little")
    path.write_bytes(path.read_bytes()[:20])
    return (
        path,
        f"a truncated safetensors file: its header says at least {8 + header} bytes, the file has 20",
        REMAKE,
    )


def _cut_data(folder: Path) -> tuple[Path, str, str]:
    path = _saved(folder)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-10])
    return (
        path,
        f"a truncated safetensors file: its header says {size} bytes, the file has {size - 10}",
        REMAKE,
    )


def _bad_dtype(folder: Path) -> tuple[Path, str, str]:
    path = folder / "w.safetensors"
    header = json.dumps({"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    return path, "found a corrupt safetensors file (", REMAKE


def _empty(folder: Path) -> tuple[Path, str, str]:
    path = folder / "w.safetensors"
    path.write_bytes(b"")
    return path, "found an empty file", REMAKE


def _text(folder: Path) -> tuple[Path, str, str]:
    path = folder / "w.safetensors"
    path.write_text("hello world\n")
    return path, "found a file in a format not read here (it starts with b'hello wo')", "impls.convert.save("


@pytest.mark.parametrize(
    "make", [_pth, _legacy_pth, _cut_header, _cut_data, _bad_dtype, _empty, _text], ids=lambda f: f.__name__
)
def test_load_says_what_a_file_is_and_what_to_do(tmp_path, make) -> None:
    path, found, fix = make(tmp_path)
    assert_refused(
        lambda: convert.load(path), f"{path}: ", found, CANONICAL, fix, error=convert.CheckpointError
    )


def test_load_names_a_missing_file(tmp_path) -> None:
    path = tmp_path / "nowhere.safetensors"
    assert_refused(
        lambda: convert.load(path),
        f"{path}: no such file; {CANONICAL}",
        error=convert.CheckpointNotFoundError,
    )
    with pytest.raises(FileNotFoundError):  # what it was before the messages
        convert.load(path)


def test_save_creates_the_folder_and_writes_with_ordinary_permissions(tmp_path) -> None:
    path = tmp_path / "new" / "w.safetensors"
    convert.save(path, random_weights(SMALL), SMALL)
    assert convert.load(path)[1] == SMALL
    assert os.listdir(path.parent) == ["w.safetensors"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_save_never_writes_over_an_input(tmp_path) -> None:
    path = _saved(tmp_path)
    before = path.read_bytes()
    assert_refused(
        lambda: convert.save(path, random_weights(SMALL, seed=1), SMALL, inputs=[path]),
        f"output {path} is also the input {path}",
    )
    assert path.read_bytes() == before


def test_save_names_a_folder_it_cannot_make(tmp_path) -> None:
    (tmp_path / "taken").write_text("")
    path = tmp_path / "taken" / "w.safetensors"
    assert_refused(
        lambda: convert.save(path, random_weights(SMALL), SMALL),
        f"{tmp_path / 'taken'} is a file, not a folder",
    )
