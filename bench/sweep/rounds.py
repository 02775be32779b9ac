"""A group's rounds: a warm-up, then blocks of one round per case in rotated order, replicates in
fresh workers until the group's comparisons are decided, each case within its --case-timeout."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench import stats
from bench.run_config import verdict_roles
from bench.sweep.case import Prepared, parity_failure
from bench.sweep.references import References
from bench.sweep.worker import StartWorker, Worker, WorkerError, time_round

T = TypeVar("T")

# --warm-up's default: untimed interleaved blocks before each replicate's rounds. In an A/A pilot of
# this session (torch eager against an identical path, train 64 px; the run was made with the engine
# before this line and not kept) the first block after the group's fresh workers started ran about
# 60% slower on every path, and the slowdown lasted into the next block: the machine settling after
# several processes start, which the first timed places of every replicate then paid (the identical
# path came out 0.89x, all five workers alike). With this warm-up the next pilot's A/A came out 1.02x.
WARM_UP_SECONDS = 3.0
# Timed blocks per worker at least, for its fastest round to be a clean one (stats.worker_figures):
# rounds here run 20-50% slow now and then, in stretches, on any path.
BLOCKS_PER_WORKER = 5
MAX_ROUNDS = 1000  # per case, whatever the interval


def rotation(count: int, block: int) -> list[int]:
    """The order of a group's paths in a block: A B C, then B C A, then C A B, ..."""
    return [(block + i) % count for i in range(count)]


def _larger(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else max(a or 0, b or 0)


@dataclass(frozen=True)
class RoundRules:
    """When a group's sampling stops (the run's options of the same names)."""

    min_rounds: int
    max_time: float
    target_ci: float
    warm_up: float
    replicates: int  # fresh worker processes per case, one after another, for the process's luck
    max_replicates: int  # the most, while a comparison is undecided and the budget allows
    group_budget: float  # seconds of sampling per group (rounds and fresh workers), after set-up
    margin: float
    run_spread: float
    case_timeout: float


@dataclass(frozen=True)
class Rounds:
    """Times the rounds of a group's prepared cases."""

    rules: RoundRules
    references: References
    start_worker: StartWorker

    def once(self, prepared: list[Prepared]) -> dict[Prepared, WorkerError]:
        """Untimed (--benchmark-disable): one call of each case."""
        failures = {}
        for p in prepared:
            try:
                self._charged(p, lambda p=p: p.worker.call("call"))
            except WorkerError as error:
                failures[p] = error
        return failures

    def sample(self, prepared: list[Prepared]) -> tuple[dict[Prepared, WorkerError], dict[str, Any]]:
        """Replicates until the group is decided: at least ``replicates`` (fresh workers for every
        path, each with its blocks of rounds), then one more while a comparison is inconclusive and
        another would end within ``group_budget`` seconds (at the mean cost of those so far), up to
        ``max_replicates``. The rounds' time goes where the answer is still open."""
        rules = self.rules
        started = time.perf_counter()
        failures = self._interleave(prepared, 0)
        replicate, stopped = 1, "decided"
        while True:
            live = [p for p in prepared if p not in failures]
            spent = time.perf_counter() - started
            if not live:
                stopped = "no case left"
                break
            if replicate >= rules.replicates:
                judgement = self._judgement(live)
                if judgement is None or judgement.decided:
                    stopped = "decided" if judgement is not None else "nothing to compare"
                    break
                if replicate >= rules.max_replicates:
                    stopped = f"undecided after --max-replicates {rules.max_replicates}"
                    break
                if spent + spent / replicate > rules.group_budget:
                    stopped = f"undecided when the group budget ({rules.group_budget:g} s) ran out"
                    break
            failures |= self._restart(live)
            failures |= self._interleave([p for p in live if p not in failures], replicate)
            replicate += 1
        seconds = time.perf_counter() - started
        return failures, {
            "workers": replicate,
            "seconds": seconds,
            "seconds_per_worker": seconds / replicate,
            "group_budget": rules.group_budget,
            "margin": rules.margin,
            "run_spread": rules.run_spread,
            "stopped": stopped,
        }

    def retire(self, p: Prepared) -> WorkerError | None:
        """After a worker's rounds: its peak (where it holds no gate), then, for a worker that did
        not go through the gate before its rounds, its outputs against the gated reference, within
        the gate's allowances; the failure, if any (the worker is left to the caller to close)."""
        return self._charged(p, lambda: self._check_retired(p))

    def _judgement(self, live: list[Prepared]) -> stats.Judgement | None:
        """The group's comparisons as the report will judge them; None with fewer than two paths."""
        rounds = {p.config.path: (p.rounds, p.blocks, p.workers) for p in live}
        competing, calibration, plain = verdict_roles(rounds)
        if not competing or len(competing) + len(calibration) + len(plain) < 2:
            return None
        return stats.judge(rounds, competing, calibration, self.rules.margin, self.rules.run_spread, plain)

    def _deadline(self, p: Prepared) -> float:
        """When what is left of the case's --case-timeout runs out, from now."""
        return time.monotonic() + max(0.0, self.rules.case_timeout - p.spent)

    def _charged(self, p: Prepared, command: Callable[[], T]) -> T:
        """``command`` for ``p``'s worker, within what is left of the case's --case-timeout, its time
        added to the case's own: all of a case's phases and workers draw on the one limit."""
        p.worker.deadline = self._deadline(p)
        started = time.perf_counter()
        try:
            return command()
        finally:
            p.spent += time.perf_counter() - started

    def _restart(self, prepared: list[Prepared]) -> dict[Prepared, WorkerError]:
        """Fresh workers for another replicate: each with its own luck of the process. They find
        the compiled code in the cases' folders; their first call (loading it) is not timed. All
        are started before any is waited for, so that their imports and builds overlap (the
        group's workers fit together: they just ran so)."""
        failures: dict[Prepared, WorkerError] = {}
        for p in prepared:
            try:
                error = self.retire(p)
            finally:
                p.worker.close()
            if error is not None:
                failures[p] = error
        started: dict[Prepared, tuple[Worker, float]] = {}
        try:
            for p in prepared:
                if p in failures:
                    continue
                folder = Path(p.record["compile_folder"])
                worker = self.start_worker(
                    p.config, compile_cache=folder, deadline=self._deadline(p), connect=False
                )
                started[p] = worker, time.perf_counter()
            for p, (worker, at) in started.items():
                try:
                    worker.connect()
                    worker.call("first_call")
                except WorkerError as error:
                    worker.close()
                    failures[p] = error
                else:
                    p.worker, p.gated, p.peak_counts = worker, False, True
                finally:
                    p.spent += time.perf_counter() - at
        except BaseException:
            for worker, _ in started.values():
                worker.close()
            raise
        return failures

    def _check_retired(self, p: Prepared) -> WorkerError | None:
        if p.peak_counts:
            p.peak_memory_bytes = _larger(p.peak_memory_bytes, p.worker.peak_memory_bytes())
        if p.gated:
            return None
        try:
            result = self.references.check(p.config, p.worker, p.worker.deadline)
        except WorkerError as error:
            return error
        if result.passed:
            return None
        replicate = p.workers[-1] if p.workers else 0
        return WorkerError("parity-failed", parity_failure(p.config, result, replicate))

    def _warm_up(self, prepared: list[Prepared]) -> dict[Prepared, WorkerError]:
        """Untimed blocks, interleaved as the timed ones, for ``warm_up`` seconds (one at least)."""
        failures: dict[Prepared, WorkerError] = {}
        started, live, block = time.perf_counter(), list(prepared), 0
        while live and (block == 0 or time.perf_counter() - started < self.rules.warm_up):
            for index in rotation(len(live), block):
                p = live[index]
                try:
                    self._charged(p, lambda p=p: p.worker.call("call"))
                except WorkerError as error:
                    failures[p] = error
            live = [p for p in live if p not in failures]
            block += 1
        return failures

    def _interleave(self, prepared: list[Prepared], replicate: int) -> dict[Prepared, WorkerError]:
        """After a warm-up, blocks of one round per case, in rotated order (continued across
        replicates, so that every path takes every place in a block), until every median of this
        replicate is known to ``target_ci`` (checked at growing intervals: the bootstrap is not
        free) or its share of the time is up."""
        rules = self.rules
        failures = self._warm_up(prepared)
        budget = rules.max_time * len(prepared) / rules.replicates
        fewest = max(BLOCKS_PER_WORKER, math.ceil(rules.min_rounds / rules.replicates))
        first = 1 + max((b for p in prepared for b in p.blocks), default=-1)
        started = time.perf_counter()
        live, block, next_check = [p for p in prepared if p not in failures], 0, fewest
        while live:
            for index in rotation(len(live), first + block):
                p = live[index]
                try:
                    p.rounds.append(self._charged(p, lambda p=p: time_round(p.worker)))
                    p.blocks.append(first + block)
                    p.workers.append(replicate)
                except WorkerError as error:
                    failures[p] = error
            live = [p for p in live if p not in failures]
            block += 1
            if block < fewest or not live:
                continue
            if block >= MAX_ROUNDS or time.perf_counter() - started >= budget:
                break
            if block >= next_check:
                next_check = math.ceil(block * 1.25)
                if all(
                    stats.median_interval(p.rounds[-block:]).relative_half_width() <= rules.target_ci
                    for p in live
                ):
                    break
        return failures
