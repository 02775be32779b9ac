"""The exact forms a group's cases run in (memory format, up-conv, freezing, calibration repeats):
who chooses each, and the choices kept in the compile-cache folder (forms.json).

A form is one of interchangeable exact ways to compute the same thing (bench/runners/form_timing.py
times them). A framework's first path chooses its forms for the framework's other paths of the
group, so that every worker compiles the same graphs; a compiled path chooses its own
(``OWN_FORMS``). Choices are kept between runs on the same versions, code and device, so that runs
replicate rather than re-draw a choice between forms within a few percent of each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import keys
from bench.run_config import (
    COMPILED_TORCH_PATHS,
    FREEZINGS,
    MEMORY_FORMATS,
    PLAIN_PATHS,
    UPCONVS,
    RunConfig,
    calibration_effect,
)
from bench.sweep.kept_files import KeptFiles

# Runtime paths run the file exported from the model as built (native up-conv, NCHW): their
# runtimes choose their own layouts and kernels.
PINNED_FORMS = {"torch": keys.FORM_FIELDS, "jax": ("upconv",), "runtime": ()}
# Compiled code's best forms are not eager's (run -7: eager chose NCHW for inference at 64 px,
# where compiled NCHW took 94 ms and compiled channels_last 67 ms). So compiled torch paths choose
# their own, compiled: the memory format with a cold worker per format, since it changes the whole
# graph; the up-conv form in those workers, on the layer (bench/runners/torch_runner.py).
OWN_FORMS = {path: ("memory_format", "upconv", "freezing") for path in COMPILED_TORCH_PATHS}
CALIBRATION_FORMS = ("calibration_repeats",)  # a calibration path's own: its extra work, timed once
FORM_VALUES = {"upconv": UPCONVS, "memory_format": MEMORY_FORMATS, "freezing": FREEZINGS}  # each with "auto"


def own_forms(path: str) -> tuple[str, ...]:
    """The forms a path chooses itself rather than take its framework's (``OWN_FORMS``)."""
    return CALIBRATION_FORMS if calibration_effect(path) is not None else OWN_FORMS.get(path, ())


def owner(config: RunConfig, form: str) -> str:
    """Who chooses ``form`` for ``config``: its path (``OWN_FORMS``) or its framework's first path."""
    return config.path if form in own_forms(config.path) else config.framework


def built_forms(cold: dict[str, Any]) -> dict[str, Any]:
    """The forms a cold worker was built in, with the seconds each was timed at, as its settings
    name them."""
    return {**cold["forms"], **cold.get("forms_seconds", {})}


@dataclass
class FormChoices:
    """The run's form choices, by ``keys.form_choice_key``, read from forms.json once."""

    compile_cache: Path
    files: KeptFiles
    _choices: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return self.compile_cache / "forms.json"

    def saved(self, config: RunConfig, chooser: str) -> dict[str, Any] | None:
        """What ``chooser`` (a path or a framework) chose for ``config``'s group, if anything."""
        key = keys.form_choice_key(config, chooser)
        if key not in self._choices:
            saved = self.files.read_json(self.file).get(key)
            if saved is not None:
                self._choices[key] = {**saved, "earlier_run": True}
        return self._choices.get(key)

    def save(self, config: RunConfig, chooser: str, entry: dict[str, Any]) -> None:
        key = keys.form_choice_key(config, chooser)
        self.files.write_json(self.file, {**self.files.read_json(self.file), key: entry})
        self._choices[key] = {**entry, "earlier_run": False}

    def by_owner(self, config: RunConfig) -> dict[str, dict[str, Any]]:
        """The exact forms chosen for ``config``'s group, by owner (its framework, and its path for
        ``OWN_FORMS``), with the timings behind each choice: in this run, or in an earlier one on the
        same versions, code and device (a record's "forms")."""
        owners = dict.fromkeys([config.framework, config.path])
        return {o: entry for o in owners if (entry := self.saved(config, o)) is not None}

    def pin(self, config: RunConfig, timing: bool) -> RunConfig:
        """``config`` with the group's chosen forms, so that every worker of the framework compiles
        the same graphs: each form as its owner chose it (untimed, where nothing is measured, the
        framework's choice stands in for a path's own); plain paths keep their fixed forms."""
        if config.path in PLAIN_PATHS:
            return config
        chosen: dict[str, str] = {}
        for chooser, entry in self.by_owner(config).items():  # the framework's, then the path's own
            own = {n: v for n, v in entry["chosen"].items() if owner(config, n) == chooser}
            chosen.update(own if timing else entry["chosen"])
        return config.replace(**{n: v for n, v in chosen.items() if getattr(config, n) == "auto"})

    def remember(self, config: RunConfig, settings: dict[str, Any], timing: bool) -> RunConfig:
        """Keep the forms a worker chose, for its path or its framework's group (whoever owns
        each), where none were chosen yet; ``config`` pinned to the choices."""
        if config.path in PLAIN_PATHS:
            return config
        for chooser in dict.fromkeys([config.framework, config.path]):
            entry = self.saved(config, chooser) or {"chosen": {}, "seconds": {}, "by": {}}
            new = [
                n
                for n in PINNED_FORMS[config.framework]
                if n in settings and n not in entry["chosen"] and owner(config, n) == chooser
            ]
            if new:
                self.save(
                    config,
                    chooser,
                    {
                        **entry,
                        "chosen": {**entry["chosen"], **{n: settings[n] for n in new}},
                        "seconds": {**entry["seconds"], **{n: settings.get(f"{n}_seconds") for n in new}},
                        "by": {**entry["by"], **dict.fromkeys(new, config.path)},
                    },
                )
        return self.pin(config, timing)
