"""Cold compiles: a case's first call in a fresh worker with empty caches, each case's compile
folder, and the forms a compiled path chooses compiled (``COLD_TIMED_FORM``, ``TIMED_AFTER_COLD``).

A cold figure measured by an earlier run on the same folder (cold.json) is reused, and the caches
it left are kept.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import environment, keys
from bench.run_config import RunConfig
from bench.runners import form_timing
from bench.sweep.form_choices import FORM_VALUES, PINNED_FORMS, FormChoices, built_forms, own_forms
from bench.sweep.kept_files import KeptFiles
from bench.sweep.worker import StartWorker, Worker, time_round

COLD_TIMED_FORM = "memory_format"
# Timed in the cold worker after its cold call, by these worker commands (freezing only where it
# applies: compiled inference on a CPU)
TIMED_AFTER_COLD = {"upconv": "upconv_forms", "freezing": "freezing_forms"}
OWN_FORM_ROUNDS = 5  # rounds of each form, in turn, after the cold calls


@dataclass
class ColdCompiles:
    """The cold compiles of a run's cases, in their folders under ``compile_cache``."""

    compile_cache: Path
    files: KeptFiles
    choices: FormChoices
    start_worker: StartWorker

    def folder(self, asked: RunConfig) -> Path:
        """The compile folder of a case as asked for ("auto" forms: the choices are kept in
        forms.json), but with a compiled path's own form as chosen: each form compiles its own."""
        form = COLD_TIMED_FORM
        own = self.choices.saved(asked, asked.path) if form in own_forms(asked.path) else None
        if own is not None and form in own["chosen"] and getattr(asked, form) == "auto":
            asked = asked.replace(**{form: own["chosen"][form]})
        return self.compile_cache / keys.compile_folder_key(asked, environment.device_name(asked.device))

    def cold(self, asked: RunConfig, deadline: float) -> tuple[dict, RunConfig, Path]:
        """The cold first call, measured in a fresh worker with empty caches, or reused from an
        earlier run's folder; the case pinned to the forms it compiled, and its folder."""
        config = self.choices.pin(asked, timing=True)
        form = COLD_TIMED_FORM
        if form in own_forms(asked.path) and getattr(config, form) == "auto":
            cold = self._cold_per_form(asked, config, form, deadline)
            folder = self.folder(asked)  # the chosen form's, now that it is saved
        else:
            folder = self.folder(asked)
            saved = self.files.read_json(folder / "cold.json")
            if saved and all(getattr(config, n) in ("auto", v) for n, v in saved["forms"].items()):
                pinned = self.choices.remember(asked, built_forms(saved), timing=True)
                return {**saved, "reused": True}, pinned, folder
            cold, worker = self._cold_worker(config, folder, deadline)
            worker.close()
        # The same graphs from now on: the cached worker must not pick the other form.
        return {**cold, "reused": False}, self.choices.remember(asked, built_forms(cold), timing=True), folder

    def _cold_worker(self, config: RunConfig, folder: Path, deadline: float) -> tuple[dict, Worker]:
        """A fresh worker in an emptied folder, after its first call and the forms timed after
        it (``_after_cold``); the worker is left open."""
        cold, worker = self._cold_call(config, folder, deadline)
        return self._after_cold(config, cold, worker, folder, deadline)

    def _after_cold(
        self, config: RunConfig, cold: dict, worker: Worker, folder: Path, deadline: float
    ) -> tuple[dict, Worker]:
        """A compiled path that chooses its own up-conv form or freezing times them compiled in its
        cold worker after the cold call (``TIMED_AFTER_COLD``: compiling them before would warm the
        cold figure, 35 s instead of 45-50 s, seen here); where a form other than the one built
        wins, the winners' cold call is measured afresh in a new worker. The worker is left open."""
        timed = [
            form
            for form in TIMED_AFTER_COLD
            if form in own_forms(config.path) and getattr(config, form) == "auto" and form in cold["forms"]
        ]
        try:
            seconds = {form: worker.call(TIMED_AFTER_COLD[form]) for form in timed}
            chosen = {form: form_timing.fastest(seconds[form]) for form in timed}
            if any(chosen[form] != cold["forms"][form] for form in timed):
                worker.close()
                cold, worker = self._cold_call(config.replace(**chosen), folder, deadline)
        except BaseException:
            worker.close()
            raise
        for form in timed:
            cold["forms"][form] = chosen[form]
            cold["forms_seconds"][f"{form}_seconds"] = seconds[form]
        return cold, worker

    def _cold_call(self, config: RunConfig, folder: Path, deadline: float) -> tuple[dict, Worker]:
        """A fresh worker in an emptied folder, after its (cold) first call; left open."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        worker = self.start_worker(config, compile_cache=folder, deadline=deadline)
        try:
            first_call = worker.call("first_call")
        except BaseException:
            worker.close()
            raise
        cold = {
            "first_call_seconds": first_call,
            "forms": {n: worker.settings[n] for n in PINNED_FORMS[config.framework] if n in worker.settings},
            "forms_seconds": {
                f"{n}_seconds": worker.settings.get(f"{n}_seconds") for n in PINNED_FORMS[config.framework]
            },
            "worker_seconds": time.perf_counter() - started,
        }
        return cold, worker

    def _cold_per_form(self, asked: RunConfig, config: RunConfig, form: str, deadline: float) -> dict:
        """``form`` chosen compiled: one cold worker per value, each in an empty folder of its own,
        then ``OWN_FORM_ROUNDS`` rounds of each in turn. The choice and its timings go to forms.json;
        the faster's worker then times the forms chosen after a cold call (``_after_cold``: in the
        winner alone, each such compile being seconds), and its cold call is returned; its folder
        is the case's from now on."""
        folders = {v: self.folder(asked.replace(**{form: v})) for v in FORM_VALUES[form] if v != "auto"}
        colds: dict[str, dict[str, Any]] = {}
        workers: dict[str, Worker] = {}
        try:
            for value, folder in folders.items():
                candidate = config.replace(**{form: value})
                colds[value], workers[value] = self._cold_call(candidate, folder, deadline)
            rounds: dict[str, list[float]] = {value: [] for value in folders}
            for _ in range(OWN_FORM_ROUNDS):
                for value, worker in workers.items():
                    rounds[value].append(time_round(worker))
            seconds = {value: float(np.median(r)) for value, r in rounds.items()}
            chosen = form_timing.fastest(seconds)
            for value in folders:
                if value != chosen:
                    workers.pop(value).close()
                    shutil.rmtree(folders[value], ignore_errors=True)  # caches no worker will read
            winner = config.replace(**{form: chosen})
            cold, workers[chosen] = self._after_cold(
                winner, colds[chosen], workers[chosen], folders[chosen], deadline
            )
        finally:
            for worker in workers.values():
                worker.close()
        choice = {
            "chosen": {form: chosen},
            "seconds": {form: seconds},
            "by": {form: config.path},
            "timed": f"compiled, one cold worker per {form}, median of {OWN_FORM_ROUNDS} rounds each in turn",
        }
        self.choices.save(asked, asked.path, choice)
        return cold

    def keep(self, cold: dict[str, Any], folder: Path, compile_seconds: float) -> None:
        """A cold figure measured in this run, kept in its folder for a later run to reuse."""
        if cold["reused"] or cold.get("no_compiler"):
            return
        saved = {k: v for k, v in cold.items() if k != "reused"}
        self.files.write_json(folder / "cold.json", {**saved, "compile_seconds": compile_seconds})
