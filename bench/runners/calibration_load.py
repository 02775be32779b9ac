"""The extra work a calibration path (torch-eager+N%) adds to each call: real convolutions on a layer
of its own, so that a known effect can be measured beside the nominal one (bench/calibration.py)."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.run_config import RunConfig, calibration_effect
from bench.runners import form_timing

CALIBRATION_ROWS = 8  # a slice of extra work covers 1/8 of the input's rows: fine steps of work


class CalibrationLoad:
    """The extra work of a calibration path: ``repeats`` slices, each a 3x3 convolution at the first
    level's width on 1/8 of the input's rows, as the case runs it (its memory format and autocast;
    forward and backward where it trains), on a layer and tensors of its own: the model, its
    gradients and its optimizer never see it. Real work on the same kernels and threads as the call,
    never a sleep, so that it slows with the machine as the call does. Each call's extra seconds are
    kept (``settings["calibration"]``), for the effect measured beside the nominal one."""

    def __init__(
        self,
        config: RunConfig,
        batch: int,
        device: torch.device,
        memory_format: torch.memory_format,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        width, rows = config.spec.width, max(1, config.size // CALIBRATION_ROWS)
        self.conv = torch.nn.Conv2d(width, width, 3, padding=1).to(device, memory_format=memory_format)
        seeded = torch.Generator().manual_seed(0)  # the process's own generator stays untouched
        self.input = torch.randn(batch, width, rows, config.size, generator=seeded).to(device)
        self.input = self.input.to(memory_format=memory_format).requires_grad_(config.task == "train")
        self.backward, self.device, self.autocast = config.task == "train", device, autocast
        self.repeats = 0
        self.timed: dict[str, float] | None = None
        self.effect = calibration_effect(config.path)
        self.extra_seconds: list[float] = []  # one per call, the first (untimed) call's too

    def _slices(self, count: int) -> None:
        for _ in range(count):
            with self.autocast(), torch.set_grad_enabled(self.backward):
                out = self.conv(self.input).float().sum()
            if self.backward:
                out.backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def repeats_for(self, effect: float, call: Callable[[], None]) -> tuple[int, dict[str, float]]:
        """How many slices take ``effect`` of ``call``'s time, from both timed in turn here: a first
        guess from one slice, then the guessed run of slices timed whole (a lone slice pays its
        start-up each time; the pilot's first guesses added 60-75% of the nominal work)."""
        seconds = form_timing.time_forms({"call": call, "slice": functools.partial(self._slices, 1)})
        guess = max(1, round(effect * seconds["call"] / seconds["slice"]))
        run = form_timing.time_forms({"call": call, "slices": functools.partial(self._slices, guess)})
        repeats = round(effect * guess * run["call"] / run["slices"])
        return repeats, {"call": run["call"], f"{guess} slices": run["slices"]}

    def run(self) -> None:
        start = time.perf_counter()
        self._slices(self.repeats)
        self.extra_seconds.append(time.perf_counter() - start)

    @property
    def settings(self) -> dict[str, Any]:
        """As a runner's settings name them: the repeats (a form, pinned for the group's later
        workers) and the seconds they were chosen from; the extra seconds, a list that grows."""
        return {
            "calibration_repeats": self.repeats,
            "calibration_repeats_seconds": self.timed,
            "calibration": {"effect": self.effect, "extra_seconds": self.extra_seconds},
        }
