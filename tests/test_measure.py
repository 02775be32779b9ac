"""A group's cases measured side by side: rotated blocks, the stopping rule, the memory fallback,
the forms a group shares, --max-minutes and the progress lines.

The sweeps here run their cases' runners in this process (InProcessWorker): what is tested is the
sweep's scheduling and records. A test that needs a worker to misbehave gives the sweep a worker
type of its own; the process-based worker's faults are tested with real processes (and here, a
case that crashes among others)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench import environment, report, stats
from bench.runners import RunConfig
from bench.sweep import CaseFailure, CaseSkipped, Sweep, capacity, case_setup, cold, estimates, form_choices
from bench.sweep.in_process_worker import InProcessWorker
from bench.sweep.kept_files import KeptFiles
from bench.sweep.process_worker import ProcessWorker, leftover_processes
from bench.sweep.references import load_reference, save_reference
from bench.sweep.rounds import BLOCKS_PER_WORKER, rotation
from bench.sweep.worker import WorkerError
from impls.files import seal_problem
from impls.spec import UNetSpec
from tests import faults
from tests.fakes import FakeBenchmark

SPEC = UNetSpec(width=4, depth=2)


OTHER_FORM = {"native": "matmul", "matmul": "native"}


def _cases(*paths: str, size: int = 16) -> list[RunConfig]:
    return [RunConfig(path, SPEC, size, 2, task="infer") for path in paths]


@pytest.fixture
def make_sweep(tmp_path, monkeypatch) -> Callable[..., Sweep]:
    """Sweeps with quick settings, their workers in this process; ``options`` change any."""
    monkeypatch.setattr(environment, "peak_tflops", lambda *a: 1.0)  # not what is tested here

    def make(**options) -> Sweep:
        quick = {
            "progress_file": tmp_path / "progress.jsonl",
            "compile_cache": tmp_path / "cache",
            "min_rounds": 4,
            "max_time": 0.05,
            "warm_up": 0.0,  # one untimed block: the warm-up's length is not what is tested here
            "replicates": 1,  # each replicate restarts every worker: the test that needs more asks
            "max_replicates": 1,  # likewise: no worker is added for an undecided comparison unless asked
            "announce": lambda line: None,
            "start_worker": InProcessWorker,
        }
        return Sweep(**{**quick, **options})

    return make


@pytest.fixture
def sweep(make_sweep) -> Sweep:
    return make_sweep()


class Answering(InProcessWorker):
    """An in-process worker whose answers to some commands a test gives: ``answer`` returns the
    reply, or None for the runner's own."""

    def answer(self, command: str, *args) -> object | None:
        return None

    def request(self, command: str, *args, timeout: float | None = None) -> list:
        reply = self.answer(command, *args)
        return super().request(command, *args, timeout=timeout) if reply is None else [reply]


def test_rotation_is_a_latin_square() -> None:
    assert [rotation(3, block) for block in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_a_group_is_timed_in_rotated_blocks_with_its_workers_alive(make_sweep) -> None:
    calls = []

    class Logged(Answering):
        def answer(self, command, *args):
            if command == "time_calls":
                calls.append(self.config.path)

    sweep = make_sweep(start_worker=Logged)
    sweep.replicates = sweep.max_replicates = 2
    sweep.min_rounds = 6  # three blocks at least in each replicate
    sweep.cases = _cases("torch-eager", "torch-plain", "jax")
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    a, b, c = (case.path for case in sweep.cases)
    assert calls[:9] == [a, b, c, b, c, a, c, a, b]  # the first worker of each; then fresh ones
    blocks = records[0]["round_blocks"]
    assert len(blocks) >= sweep.min_rounds and all(r["round_blocks"] == blocks for r in records)
    for record in records:
        assert record["status"] == "ok" and record["schedule"] == "interleaved"
        assert len(record["rounds_seconds"]) == len(blocks) == record["stats"]["rounds"]
        assert sorted(set(record["round_workers"])) == list(range(sweep.replicates))
        low, high = record["stats"]["estimate_interval"]
        assert low <= record["stats"]["estimate"] <= high
        rounds = (record["rounds_seconds"], record["round_blocks"], record["round_workers"])
        assert record["stats"]["estimate"] == pytest.approx(stats.estimate(rounds))
    assert leftover_processes() == []


@pytest.mark.parametrize(("warm_up", "blocks"), [(0.0, (1, 1)), (0.5, (2, 6))])
def test_the_warm_up_runs_untimed_blocks_for_its_seconds_one_at_least(make_sweep, warm_up, blocks) -> None:
    """Each untimed block calls every case once, 0.05 s a call here: 0.1 s a block."""
    untimed: dict[str, int] = {}
    timed: set[str] = set()

    class Counted(Answering):
        def answer(self, command, *args):
            path = self.config.path
            if command == "time_calls":
                timed.add(path)
            elif command == "call" and path not in timed:
                untimed[path] = untimed.get(path, 0) + 1
                time.sleep(0.05)

    sweep = make_sweep(start_worker=Counted, warm_up=warm_up)
    sweep.cases = _cases("torch-eager", "torch-plain")
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert untimed["torch-eager"] == untimed["torch-plain"]  # whole blocks
    fewest, most = blocks
    assert fewest <= untimed["torch-eager"] <= most, untimed


def test_rounds_stop_at_the_target_interval_or_the_time_limit(sweep) -> None:
    sweep.cases = _cases("torch-eager")
    sweep.max_time, sweep.target_ci = 30.0, 100.0  # any interval will do: met at once
    quick = sweep.run(sweep.cases[0], FakeBenchmark())["stats"]["rounds"]
    fewest = max(BLOCKS_PER_WORKER, math.ceil(sweep.min_rounds / sweep.replicates))
    assert quick == sweep.replicates * fewest
    sweep.replicates = 1
    sweep.cases = _cases("torch-eager", size=32)
    sweep.max_time, sweep.target_ci = 0.3, 1e-9  # never met: time decides
    seconds = sweep.run(sweep.cases[0], FakeBenchmark())["rounds_seconds"]
    assert len(seconds) >= sweep.min_rounds
    fewest = max(BLOCKS_PER_WORKER, sweep.min_rounds)
    assert len(seconds) == fewest or sum(seconds[:-1]) < sweep.max_time  # it stopped in time
    if max(seconds) < sweep.max_time / (2 * fewest):  # quick rounds: time for more
        assert len(seconds) > fewest


def test_a_group_that_does_not_fit_is_measured_in_parts(sweep, monkeypatch) -> None:
    monkeypatch.setattr(environment, "memory_bytes", lambda device: 1)
    monkeypatch.setattr(capacity, "memory_problem", lambda config: None)  # each fits alone, by its estimate
    sweep.cases = _cases("torch-eager", "jax")
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert all(r["schedule"].startswith("sequential: ") for r in records)
    assert "workers would need about" in records[0]["schedule"]


def test_untimed_torch_compile_uses_the_forms_torch_eager_chose_for_the_group(sweep) -> None:
    sweep.timing = False  # no cold workers: the forms torch eager keeps are tested
    sweep.cases = _cases("torch-eager", "torch-compile", "torch-plain")
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    eager, compiled, plain = (r["settings"] for r in records)
    for form in ("upconv", "memory_format"):
        assert compiled[form] == eager[form]
    assert compiled["memory_format_seconds"] is None  # pinned, not measured again
    assert (plain["upconv"], plain["memory_format"]) == ("native", "contiguous")
    torch_forms = records[1]["forms"]["torch"]
    assert torch_forms["by"] == {"upconv": "torch-eager", "memory_format": "torch-eager"}
    assert not torch_forms["earlier_run"]
    assert set(torch_forms["seconds"]["memory_format"]) == {"channels_last", "contiguous"}
    # a later run on the same versions, code and device takes the same choice, not a new draw
    again = Sweep(
        compile_cache=sweep.compile_cache, timing=False, cases=sweep.cases[:1], start_worker=InProcessWorker
    )
    record = again.run(sweep.cases[0], FakeBenchmark())
    assert record["forms"]["torch"]["earlier_run"]
    assert record["forms"]["torch"]["chosen"] == torch_forms["chosen"]
    assert record["settings"]["memory_format_seconds"] is None


def test_a_compiled_path_times_its_memory_format_compiled_in_cold_workers(make_sweep, monkeypatch) -> None:
    # torch eager stands in for a compiled path: the mechanism is tested, without minutes of compiling
    monkeypatch.setattr(form_choices, "OWN_FORMS", {"torch-eager": ("memory_format", "upconv")})
    monkeypatch.setattr(case_setup, "compiles_nothing", lambda path: False)
    seconds = {"channels_last": 0.02, "contiguous": 0.01}
    calls: list[str] = []

    class Timed(Answering):
        def answer(self, command, *args):
            if command == "time_calls":
                calls.append(self.config.memory_format)
                return [seconds[self.config.memory_format]]

    sweep = make_sweep(start_worker=Timed)
    sweep.cases = _cases("torch-eager")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    rounds = cold.OWN_FORM_ROUNDS
    assert calls[: 2 * rounds] == ["channels_last", "contiguous"] * rounds  # the two cold workers in turn
    assert set(calls[2 * rounds :]) == {"contiguous"}  # then the chosen form alone
    choice = record["forms"]["torch-eager"]
    assert choice["chosen"] == {"memory_format": "contiguous", "upconv": record["settings"]["upconv"]}
    assert choice["seconds"]["memory_format"] == seconds
    assert choice["by"] == {"memory_format": "torch-eager", "upconv": "torch-eager"}  # the path's own
    assert set(choice["seconds"]["upconv"]) == {"native", "matmul"}  # timed in its cold worker
    assert "torch" not in record["forms"]  # nothing chosen for the framework's other paths
    assert record["settings"]["memory_format"] == "contiguous" and not record["compile_cold_reused"]
    folder = Path(record["compile_folder"])
    assert (folder / "cold.json").exists()
    kept = {p.name for p in sweep.compile_cache.iterdir() if p.is_dir() and p.name != "references"}
    assert kept == {folder.name}  # the slower form's caches are gone
    # the next run keeps the choice and its cold figure: no cold workers, no rounds of the other form
    calls.clear()
    again = Sweep(
        compile_cache=sweep.compile_cache,
        cases=sweep.cases,
        min_rounds=2,
        max_time=0.01,
        warm_up=0.0,
        start_worker=Timed,
    )
    record = again.run(sweep.cases[0], FakeBenchmark())
    assert record["compile_cold_reused"] and record["forms"]["torch-eager"]["earlier_run"]
    assert record["compile_folder"] == str(folder) and set(calls) == {"contiguous"}


def test_a_compiled_path_whose_up_conv_form_and_freezing_lose_compiles_the_winners_cold(
    make_sweep, monkeypatch
) -> None:
    """A compiled path times its up-conv forms and (compiled inference on a CPU) freezing after its
    cold call (so as not to warm it); where the forms it was built in lose, the winners' cold call
    is measured in one fresh worker. (torch eager stands in for torch-compile, freezing put into its
    settings: the mechanism is tested, without minutes of compiling.)"""
    monkeypatch.setattr(form_choices, "OWN_FORMS", {"torch-eager": ("upconv", "freezing")})
    monkeypatch.setattr(case_setup, "compiles_nothing", lambda path: False)
    built: list[tuple[str, str]] = []
    timed: dict[str, float] = {}

    class Freezing(Answering):
        def connect(self):
            super().connect()
            self.settings["freezing"] = "off" if self.config.freezing == "auto" else self.config.freezing

        def answer(self, command, *args):
            if command == "first_call":
                built.append((self.settings["upconv"], self.settings["freezing"]))
            if command == "upconv_forms":  # the form the worker was built in loses
                timed.update({self.settings["upconv"]: 2.0, OTHER_FORM[self.settings["upconv"]]: 1.0})
                return dict(timed)
            if command == "freezing_forms":
                return {"on": 1.0, "off": 2.0}
            return None

    sweep = make_sweep(start_worker=Freezing)
    sweep.cases = _cases("torch-eager")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    winner = OTHER_FORM[built[0][0]]
    assert built[0][1] == "off"
    assert built[1:] == [(winner, "on")] * (len(built) - 1)  # one fresh cold worker, then the cached one
    assert record["settings"]["upconv"] == winner and not record["compile_cold_reused"]
    choice = record["forms"]["torch-eager"]
    assert choice["chosen"] == {"upconv": winner, "freezing": "on"}
    assert choice["seconds"] == {"upconv": timed, "freezing": {"on": 1.0, "off": 2.0}}
    native = sweep.cases[0].replace(upconv="native", freezing="off")
    given = Sweep(
        compile_cache=sweep.compile_cache / "given", cases=[native], warm_up=0.0, start_worker=Freezing
    )
    built.clear()
    assert given.run(given.cases[0], FakeBenchmark())["settings"]["upconv"] == "native"
    assert set(built) == {("native", "off")}  # a form given is never timed


def test_max_minutes_skips_the_cases_not_begun(sweep) -> None:
    lines: list[str] = []
    sweep.announce = lines.append
    sweep.max_minutes = 10
    sweep.cases = _cases("torch-eager", "jax") + _cases("torch-eager", size=32)
    for case in sweep.cases[:2]:
        assert sweep.run(case, FakeBenchmark())["status"] == "ok"
    sweep.started -= 11 * 60  # as if the first group had taken eleven minutes
    with pytest.raises(CaseSkipped, match=r"--max-minutes 10 reached \(1\d\.\d min into the run\)"):
        sweep.run(sweep.cases[2], FakeBenchmark())
    records = [json.loads(line) for line in sweep.progress_file.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "skipped"]
    assert lines[0].startswith("[1/3] infer-torch-eager-16px-b2-fp32: ok in ")
    assert "left" in lines[0] and "left" not in lines[2]
    assert lines[2].startswith("[3/3] infer-torch-eager-32px-b2-fp32: skipped: --max-minutes 10")


def test_estimates_take_earlier_runs_less_a_cold_compile_still_reusable(sweep, tmp_path, monkeypatch) -> None:
    sweep.cases = _cases("jax")
    assert sweep.remaining() == (estimates.GUESS_SECONDS["cpu"], 1)
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    later = Sweep(compile_cache=tmp_path / "cache", cases=sweep.cases)
    seconds, guessed = later.remaining()
    assert guessed == 0
    assert seconds < record["case_wall_seconds"]  # the cold compile is now reused
    monkeypatch.setattr(environment, "code_hash", lambda: "changed")  # a new folder: compiles again
    assert later.remaining() == (record["case_wall_seconds"], 0)


def test_a_case_that_fails_in_a_group_fails_alone(make_sweep, monkeypatch) -> None:
    faults.inject(monkeypatch, "rank=0,path=jax,command=first_call,action=exit")
    sweep = make_sweep(start_worker=ProcessWorker)  # a worker process that exits
    sweep.cases = _cases("torch-eager", "jax", "torch-plain")
    eager = sweep.run(sweep.cases[0], FakeBenchmark())
    with pytest.raises(CaseFailure, match="exited with code 3"):
        sweep.run(sweep.cases[1], FakeBenchmark())
    plain = sweep.run(sweep.cases[2], FakeBenchmark())
    assert (eager["status"], plain["status"]) == ("ok", "ok")
    assert eager["round_blocks"] == plain["round_blocks"]  # still interleaved, the two of them
    assert leftover_processes() == []


def test_references_and_records_are_written_whole(tmp_path) -> None:
    """Through impls/files.py: renamed into place once complete, no temporary file left beside them."""
    reference = {"logits": np.arange(6.0).reshape(2, 3), "gradients": {"conv.weight": np.ones(3)}}
    file = tmp_path / "references" / "key.npz"
    save_reference(file, reference, {"logits": 1e-6})
    loaded, noise = load_reference(file)
    np.testing.assert_array_equal(loaded["logits"], reference["logits"])
    np.testing.assert_array_equal(loaded["gradients"]["conv.weight"], np.ones(3))
    assert noise == {"logits": 1e-6}
    files = KeptFiles(say=lambda line: None)
    files.write_json(tmp_path / "cache" / "forms.json", {"key": {"chosen": "contiguous"}})
    assert files.read_json(tmp_path / "cache" / "forms.json") == {"key": {"chosen": "contiguous"}}
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["forms.json", "forms.json.sha256", "key.npz", "key.npz.sha256"]  # each with its digest


def test_a_spoiled_cache_entry_is_named_discarded_and_made_again(sweep, make_sweep, tmp_path) -> None:
    """A reference cut short and a forms file changed by hand, in the compile-cache folder: the next
    run names each, discards it, makes it again and measures the case."""
    sweep.cases = _cases("torch-eager")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    (reference,) = (tmp_path / "cache").rglob("*.npz")
    reference.write_bytes(reference.read_bytes()[:100])
    forms = tmp_path / "cache" / "forms.json"
    forms.write_text("{")
    said: list[str] = []
    again = make_sweep(progress_file=None, announce=said.append)
    again.cases = sweep.cases
    assert again.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    for file in (reference, forms):
        assert any(line.startswith(f"discarded {file}: its bytes no longer match") for line in said), said
    assert seal_problem(reference) is None and seal_problem(forms) is None  # made again
    assert leftover_processes() == []


def _timed_by_worker(seconds) -> type[InProcessWorker]:
    """Rounds of ``seconds(path, worker number)``: each fresh worker of a path gets the next number."""
    seen: list[InProcessWorker] = []  # kept, so that no two workers are told apart by a reused id

    class Timed(Answering):
        def answer(self, command, *args):
            if command != "time_calls":
                return None
            if not any(w is self for w in seen):
                seen.append(self)
            return [seconds(self.config.path, next(i for i, w in enumerate(seen) if w is self))]

    return Timed


def test_a_decided_group_stops_at_the_fewest_workers(make_sweep) -> None:
    """An A/A pair whose rounds are identical is equivalent after --replicates workers: no more."""
    sweep = make_sweep(start_worker=_timed_by_worker(lambda path, number: 0.01))
    sweep.replicates, sweep.max_replicates, sweep.group_budget = 2, 5, 600.0
    sweep.cases = _cases("torch-eager", "torch-eager+0%")
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    for record in records:
        assert record["sampling"]["workers"] == 2 and record["sampling"]["stopped"] == "decided"
        assert sorted(set(record["round_workers"])) == [0, 1]
    assert record["settings"]["calibration_repeats"] >= 0 and record["forms"]["torch-eager+0%"]["by"] == {
        "calibration_repeats": "torch-eager+0%"
    }
    assert leftover_processes() == []


def test_an_undecided_group_samples_more_workers_until_its_limit_or_budget(make_sweep) -> None:
    """Workers 30% apart at random: the comparison stays inconclusive, so fresh workers are added up
    to --max-replicates; with a budget that one more would overrun, none is added."""
    luck = np.random.default_rng(0).lognormal(0.0, 0.3, 100)
    sweep = make_sweep(start_worker=_timed_by_worker(lambda path, number: 0.01 * luck[number]))
    sweep.replicates, sweep.max_replicates, sweep.group_budget = 2, 4, 600.0
    sweep.cases = _cases("torch-eager", "torch-eager+0%")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    assert record["sampling"]["workers"] == 4
    assert record["sampling"]["stopped"] == "undecided after --max-replicates 4"
    assert sorted(set(record["round_workers"])) == [0, 1, 2, 3]
    sweep.group_budget = 1e-6
    sweep.cases = _cases("torch-eager", "torch-eager+0%", size=32)
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    assert record["sampling"]["workers"] == 2
    assert record["sampling"]["stopped"].startswith("undecided when the group budget")
    assert leftover_processes() == []


def test_every_timed_worker_is_checked_and_no_peak_holds_the_gate(make_sweep) -> None:
    """Per worker of a case: the gate before the rounds, then the peak reset (the gate's gradient
    copies out of the figure); each later worker checked after its rounds, its peak read first."""
    sent: list[tuple[InProcessWorker, str]] = []  # every command to a worker, reference workers' too

    class Logged(Answering):
        def answer(self, command, *args):
            sent.append((self, command))

    sweep = make_sweep(start_worker=Logged)
    sweep.replicates = sweep.max_replicates = 3
    sweep.cases = [RunConfig(path, SPEC, 16, 2, task="train") for path in ("torch-eager", "jax")]
    records = [sweep.run(case, FakeBenchmark()) for case in sweep.cases]
    assert all(r["status"] == "ok" and r["peak_memory_bytes"] > 0 for r in records)
    timed = list(dict.fromkeys(w for w, command in sent if command == "call"))
    assert len(timed) == 2 * 3
    for worker in timed:
        commands = [command for w, command in sent if w is worker]
        assert "outputs" in commands, f"{worker.config.path}: a timed worker never checked"
        assert "peak_memory_bytes" in commands
        for i, command in enumerate(commands):
            checks = [j for j in range(i) if commands[j] == "outputs"]
            # (a read just before the reset is the footprint the group is scheduled by)
            if command == "peak_memory_bytes" and checks and commands[i + 1 : i + 2] != ["reset_peak_memory"]:
                assert "reset_peak_memory" in commands[checks[-1] : i], commands


def test_a_replicate_worker_that_computes_another_function_fails_the_case(make_sweep) -> None:
    """The first worker passes the gate; a later one whose logits are off fails the case."""
    checked = []

    class OffAfterTheFirst(InProcessWorker):
        def outputs(self, task, seed=0):
            found = super().outputs(task, seed)
            checked.append(self.config.path)
            if checked.count(self.config.path) > 1 and self.config.path == "jax":
                found["logits"] = found["logits"] * 1.01
            return found

    sweep = make_sweep(start_worker=OffAfterTheFirst)
    sweep.replicates = sweep.max_replicates = 2
    sweep.cases = _cases("torch-eager", "jax")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    with pytest.raises(CaseFailure, match=r"jax \(worker 2 of the case\) differs .* logits"):
        sweep.run(sweep.cases[1], FakeBenchmark())
    assert leftover_processes() == []


def _slowed(seconds: dict[tuple[str, str], float]) -> type[InProcessWorker]:
    """Workers whose (path, command)s take ``seconds`` longer, as if the worker took them."""

    class Slowed(Answering):
        def answer(self, command, *args):
            time.sleep(seconds.get((self.config.path, command), 0.0))

    return Slowed


def test_the_case_timeout_bounds_all_of_a_cases_phases_together(make_sweep) -> None:
    """Set-up, rounds and a fresh worker, each 40% of --case-timeout: the case is a timeout (each
    phase under the limit used to pass), and well before twice the limit."""
    limit = 8.0  # the phases are sleeps, the runner in this process: seconds of it are waiting
    blocks = BLOCKS_PER_WORKER
    slowed = {("torch-plain", "first_call"): 0.4 * limit, ("torch-plain", "time_calls"): 0.4 * limit / blocks}
    sweep = make_sweep(start_worker=_slowed(slowed))
    sweep.cases = _cases("torch-eager")  # the reference computed and kept first, outside the limit
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    sweep.case_timeout, sweep.replicates, sweep.max_replicates = limit, 2, 2
    sweep.cases = _cases("torch-plain")
    started = time.monotonic()
    with pytest.raises(CaseFailure):
        sweep.run(sweep.cases[0], FakeBenchmark())
    record = sweep.records[-1]
    assert record["status"] == "timeout" and "--case-timeout" in record["message"]
    assert record["phase_seconds"]["first_call"] < limit / 2  # set-up alone was within the limit
    assert time.monotonic() - started < 2 * limit
    assert leftover_processes() == []


def test_the_other_paths_rounds_are_not_a_cases_time(make_sweep) -> None:
    """Interleaved with a path whose rounds take the whole limit between them, a fast case is ok."""
    limit = 12.0
    sweep = make_sweep(
        start_worker=_slowed({("torch-eager+0%", "time_calls"): 1.2 * limit / BLOCKS_PER_WORKER})
    )
    sweep.case_timeout = limit
    sweep.cases = _cases("torch-plain", "torch-eager+0%")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    assert record["status"] == "ok"
    assert [r["status"] for r in sweep.records] == ["ok", "timeout"]  # the slow one, on its own time
    assert leftover_processes() == []


def test_compiled_code_that_does_not_load_is_compiled_again_once(sweep, make_sweep) -> None:
    """The next run's worker fails on what an earlier run compiled: the case's folder is cleared, the
    case compiled cold again and measured."""
    sweep.cases = _cases("jax")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    failed = []

    class FailingOnce(Answering):
        def answer(self, command, *args):
            if command == "first_call" and not failed and (Path(self.compile_cache) / "cold.json").exists():
                failed.append(self.compile_cache)
                raise WorkerError("error", "RuntimeError: a corrupt cache entry\n(traceback)")

    said: list[str] = []
    again = make_sweep(progress_file=None, announce=said.append, start_worker=FailingOnce)
    again.cases = sweep.cases
    record = again.run(sweep.cases[0], FakeBenchmark())
    assert record["status"] == "ok" and len(failed) == 1
    assert record["compile_cold_reused"] is False  # compiled again, not the earlier run's figure
    assert any("did not load (RuntimeError: a corrupt cache entry); the folder is cleared" in s for s in said)
    assert leftover_processes() == []


def test_a_peak_probe_that_fails_leaves_the_cases_measured(sweep, monkeypatch, tmp_path) -> None:
    """The device's peak, measured in a process of its own, is lost (its process killed): the run
    goes on, its cases measured without utilization, and the report is written."""

    def killed(*args):
        raise environment.ProbeError(
            "python -m bench.environment peak cpu fp32 ieee failed: killed by SIGKILL"
        )

    monkeypatch.setattr(environment, "peak_tflops", killed)
    said: list[str] = []
    sweep.announce = said.append
    sweep.cases = _cases("torch-eager")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    assert record["status"] == "ok" and record["utilization"] is None
    assert record["device_peak_problem"].endswith("killed by SIGKILL")
    assert sum("the device's peak could not be measured" in line for line in said) == 1
    measured = report.load(tmp_path)[0]  # the sweep's progress.jsonl
    assert measured.utilization.isna().all() and (measured.img_per_s > 0).all()


def test_a_case_that_cannot_fit_is_recorded_without_a_worker_and_the_group_goes_on(
    make_sweep, monkeypatch
) -> None:
    """Its estimate (capacity.needed_bytes) above what the device has free: out-of-memory, not started."""
    real = capacity.needed_bytes
    monkeypatch.setattr(capacity, "needed_bytes", lambda c: 2**50 if c.path == "torch-plain" else real(c))
    started = []
    sweep = make_sweep(
        start_worker=lambda config, **kw: started.append(config.path) or InProcessWorker(config, **kw)
    )
    sweep.cases = _cases("torch-eager", "torch-plain")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    with pytest.raises(CaseFailure, match=r"^not started: "):
        sweep.run(sweep.cases[1], FakeBenchmark())
    by_path = {r["case"]["path"]: r for r in sweep.records}
    refused = by_path["torch-plain"]
    assert refused["status"] == "out-of-memory"
    assert refused["message"].startswith(f"not started: {sweep.cases[1].id} needs about 1048576.0 GiB")
    assert "torch-plain" not in started and "torch-eager" in started
    assert leftover_processes() == []
