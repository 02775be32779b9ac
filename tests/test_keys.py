"""Every digest and group key keeps the value it had: folders and files on users' disks are named by
them (compile folders, references, forms.json, case-seconds.json, exported files). The values were
computed at commit 7410845, before the keys moved to bench/keys.py, for fixed configs, versions,
code hash and device name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import environment, keys
from bench.runners import RunConfig
from bench.runners.runtime_runner import artifact_name
from bench.sweep.references import References
from impls.spec import UNetSpec

SPEC = UNetSpec(width=4, depth=2)
INFER = RunConfig("torch-compile", SPEC, 16, 2, task="infer")
TRAIN = RunConfig("jax", SPEC, 32, 4, task="train", precision="bf16")


@pytest.fixture(autouse=True)
def fixed_environment(monkeypatch) -> None:
    monkeypatch.setattr(environment, "versions", lambda: {"python": "3.11.0", "torch": "2.0", "jax": "0.4"})
    monkeypatch.setattr(environment, "code_hash", lambda: "0123456789abcdef")
    monkeypatch.setattr(environment, "device_name", lambda device: "A test CPU")


def test_the_group_key_is_the_case_without_its_path_and_forms() -> None:
    assert keys.group_key(INFER) == (
        '{"batch": 2, "device": "cpu", "devices": null, "image_size": null, "learning_rate": 0.0001, '
        '"loss": "ce", "precision": "fp32", "scaling": null, "size": 16, "spec": {"conv_bias": true, '
        '"depth": 2, "in_channels": 1, "norm": "batch", "num_classes": 2, "pad_to_skip": false, '
        '"padding": "same", "upsample": "transpose", "width": 4}, "sync_bn": false, "task": "infer", '
        '"tf32": false}'
    )
    assert keys.group_key(INFER.replace(path="jax", upconv="matmul")) == keys.group_key(INFER)


def test_the_digests_keep_their_values() -> None:
    assert keys.compile_folder_key(INFER, "A test CPU") == "543373bac2a76fd40f13"
    assert keys.compile_folder_key(TRAIN, "other") == "8ca2bcc820fc8112c790"
    assert keys.reference_folder_key(SPEC) == "7e1da1efb1c8460a7fea"
    assert keys.form_choice_key(INFER, "torch") == "3fb37115a4b8b846778c"
    assert keys.form_choice_key(INFER, "torch-compile") == "89b60e720547cf07286d"
    assert keys.form_choice_key(TRAIN, "jax") == "600f50af86230873d115"
    assert keys.case_time_key(INFER) == "c67a2e0cabaa5fd60eb0"
    assert keys.case_time_key(TRAIN) == "cd097473f557805e1eff"
    assert artifact_name(RunConfig("onnxruntime", SPEC, 16, 2, task="infer"), ".onnx") == (
        "onnxruntime-e5feb3e5e67e434d.onnx"
    )
    assert keys.spec_key(SPEC) == "84309c08a7b47aeb"  # a runtime worker's own weights-<key>.safetensors


class _Computed(Exception):
    """Raised where a reference would be computed: its file's name is known by then."""


class _Files:
    """The kept files as a first run finds them: the weights file there, no reference."""

    def __init__(self) -> None:
        self.asked: list[Path] = []

    def whole(self, file: Path) -> bool:
        self.asked.append(file)
        return file.name == "weights.safetensors"


def _no_worker(*args, **kwargs):
    raise _Computed


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (INFER, "fd9a12ede5987cc522d7.npz"),
        (TRAIN, "a8b0d9d1a8fa48656396.npz"),
        (INFER.replace(precision="bf16"), "248339fabdfc58f0597d.npz"),
        (TRAIN.replace(task="infer", precision="fp32"), "0f1db9f4c70be2787b16.npz"),
    ],
)
def test_a_reference_file_keeps_its_name(tmp_path, config: RunConfig, name: str) -> None:
    files = _Files()
    references = References(tmp_path, files, _no_worker)
    with pytest.raises(_Computed):
        references.reference(config, deadline=0.0)
    weights, reference = files.asked
    assert weights == tmp_path / "references" / "7e1da1efb1c8460a7fea" / "weights.safetensors"
    assert reference == weights.parent / name
