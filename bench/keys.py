"""Every digest and group key of the harness, each defined once.

Folders and files already on users' disks are named by these (compile folders, references, the
form choices and case times kept in the compile-cache folder, exported files): a key's fields and
text must not change, or every run after the change starts cold. tests/test_keys.py pins them.
Imports no framework.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bench import environment

if TYPE_CHECKING:
    from bench.run_config import RunConfig
    from impls.spec import UNetSpec

# The exact forms a group chooses (bench/sweep/form_choices.py): not part of what its cases share.
FORM_FIELDS = ("upconv", "memory_format", "freezing", "calibration_repeats")


def digest(text: str, length: int = 20) -> str:
    """The first ``length`` hex digits of ``text``'s sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def group_key(config: RunConfig) -> str:
    """What the competing cases of a group share: everything but the path (and its forms)."""
    fields = config.to_dict()
    for name in ("path", "weights_file", *FORM_FIELDS):
        fields.pop(name, None)
    return json.dumps(fields, sort_keys=True, default=str)


def compile_folder_key(config: RunConfig, device_name: str) -> str:
    """What a compiled artifact depends on: versions, device, the code, the spec and the case.

    The tiled task compiles the forward at the tile's shape, as the infer case does, but in a
    folder of its own: its group may choose other exact forms, and a shared folder would then be
    emptied and compiled afresh by each in turn.
    """
    case = config.to_dict()
    for label in ("weights_file", "scaling", "image_size"):  # the same graphs whatever these are
        case.pop(label)
    text = json.dumps(
        [environment.versions(), device_name, environment.code_hash(), case], sort_keys=True, default=str
    )
    return digest(text)


def reference_folder_key(spec: UNetSpec) -> str:
    """A spec's canonical weights and references: a function of the versions, the code and the spec."""
    return digest(json.dumps([environment.versions(), environment.code_hash(), spec.to_json()]))


def reference_file_key(
    reference_case: str, device_name: str, formats: Sequence[str], seeds: Sequence[int]
) -> str:
    """One reference's outputs: its case (as JSON), the device, its memory formats and batches."""
    return digest(json.dumps([reference_case, device_name, formats, seeds]))


def form_choice_key(config: RunConfig, owner: str) -> str:
    """The forms ``owner`` (a path or a framework) chose for ``config``'s group on this device."""
    device = environment.device_name(config.device)
    stamp = [environment.versions(), environment.code_hash(), device, group_key(config), owner]
    return digest(json.dumps(stamp))


def case_time_key(config: RunConfig) -> str:
    """A case's wall time kept for later estimates: its path and group on these versions."""
    return digest(json.dumps([config.path, group_key(config), environment.versions()]))


def export_key(config: RunConfig) -> str:
    """An exported file's: everything it depends on, the case and the code."""
    key = json.dumps(
        [
            config.path,
            config.spec.to_json(),
            config.batch,
            config.size,
            config.precision,
            config.device,
            environment.code_hash(),
        ]
    )
    return digest(key, 16)


def spec_key(spec: UNetSpec) -> str:
    """A weights file written for ``spec`` alone."""
    return digest(spec.to_json(), 16)
