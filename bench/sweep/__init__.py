"""The cases of one group, measured side by side in fresh worker processes.

A group is the cases that compete: the same task, shape, precision and device,
one per framework path. For each case of a group, with its compile caches in a
folder of their own under ``--compile-cache`` (keyed by versions, device, code,
spec and case):

1. cold: a fresh worker with empty caches times its first call (compilation
   from nothing, plus one call). If an earlier run on the same key measured
   it, that figure is reused and marked so, and the caches it left are kept.
   A compiled torch path whose memory format is not yet chosen starts one
   cold worker per format, each with empty caches of its own, times a few
   rounds of each in turn and keeps the faster (``COLD_TIMED_FORM``); its
   up-conv form each such worker times on the layer, compiled (``OWN_FORMS``);
2. cached: a fresh worker that finds the caches the cold one wrote times its
   first call again, as a second run would. It stays alive through the group;
3. that worker's outputs from the initial weights go through the parity gate
   against torch eager fp32 (TF32 off), computed by a torch-eager worker: the
   forward, and for training the first step's gradients and the second
   step's loss, each within twice torch eager's own error in the case's
   precision (bench/gate.py); a path that fails gets no number.

Then the rounds: one call each (a train step, a forward or a whole tiled
image), timed inside its worker with the device synchronised, the paths
interleaved in rotated blocks (A B C, B C A, C A B, ...) so that a machine's
drift falls on every path alike. Blocks are added until every case's median
has a 95% bootstrap interval within ``target_ci`` of it, after at least
``min_rounds`` blocks and at most ``max_time`` seconds of rounds per case.
Where the device cannot hold every worker of a group at once, the group is
measured in parts, one after the other, and the records say so. Peak memory
is each worker's own, since it started (bench/runners/*).

Compile seconds are a first call's time less the median round. Every wait is
bounded by ``--case-timeout``; whatever happens, each case is recorded in
``progress.jsonl`` with its status (ok, parity-failed, error, out-of-memory,
crashed, timeout, interrupted, skipped; not-applicable and not-installed for a case its path
cannot run by design or lacks a package for, which starts no worker), and its workers are ended.

The parts, each a module: references.py (torch eager's references, the weights file, the gate's
call), form_choices.py (the forms a group runs in, kept in forms.json), cold.py (cold compiles and
compile folders), case_setup.py (one case up to its rounds), rounds.py (warm-up, interleaved
blocks, replicates, fresh workers), metrics.py (a record's figures), estimates.py (case times,
what is left, progress lines), capacity.py (what fits the device), kept_files.py (the compile-cache
folder's files); coordinator.py's ``Sweep`` composes them. The worker front end is worker.py's
interface, with process_worker.py (every measured case) and in_process_worker.py (tests).
"""

from bench.sweep.capacity import memory_problem, needed_bytes
from bench.sweep.case import CaseFailure, CaseSkipped
from bench.sweep.coordinator import Sweep
from bench.sweep.kept_files import default_compile_cache
from bench.sweep.process_worker import leftover_processes
from bench.sweep.rounds import WARM_UP_SECONDS

__all__ = [
    "WARM_UP_SECONDS",
    "CaseFailure",
    "CaseSkipped",
    "Sweep",
    "default_compile_cache",
    "leftover_processes",
    "memory_problem",
    "needed_bytes",
]
