"""A group's cases measured side by side: rotated blocks, the stopping rule, the memory fallback,
the forms a group shares, --max-minutes and the progress lines."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from bench import environment, measure, report, stats
from bench.measure import CaseSkipped, Sweep, rotation
from bench.runners import RunConfig
from bench.workers import Worker, leftover_processes
from impls.spec import UNetSpec
from tests.fakes import FakeBenchmark

SPEC = UNetSpec(width=4, depth=2)


OTHER_FORM = {"native": "matmul", "matmul": "native"}


def _cases(*paths: str, size: int = 16) -> list[RunConfig]:
    return [RunConfig(path, SPEC, size, 2, task="infer") for path in paths]


@pytest.fixture
def sweep(tmp_path, monkeypatch) -> Sweep:
    monkeypatch.setattr(environment, "peak_tflops", lambda *a: 1.0)  # not what is tested here
    return Sweep(
        progress_file=tmp_path / "progress.jsonl",
        compile_cache=tmp_path / "cache",
        min_rounds=4,
        max_time=0.05,
        replicates=1,  # each replicate restarts every worker: the test that needs more asks for them
        max_replicates=1,  # likewise: no worker is added for an undecided comparison unless asked
        announce=lambda line: None,
    )


def test_rotation_is_a_latin_square() -> None:
    assert [rotation(3, block) for block in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_a_group_is_timed_in_rotated_blocks_with_its_workers_alive(sweep, monkeypatch) -> None:
    calls = []
    time_round = Sweep.time_round

    def logged(self, worker):
        calls.append(worker.config.path)
        return time_round(self, worker)

    monkeypatch.setattr(Sweep, "time_round", logged)
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


def test_rounds_stop_at_the_target_interval_or_the_time_limit(sweep) -> None:
    sweep.cases = _cases("torch-eager")
    sweep.max_time, sweep.target_ci = 30.0, 100.0  # any interval will do: met at once
    quick = sweep.run(sweep.cases[0], FakeBenchmark())["stats"]["rounds"]
    fewest = max(measure.BLOCKS_PER_WORKER, math.ceil(sweep.min_rounds / sweep.replicates))
    assert quick == sweep.replicates * fewest
    sweep.replicates = 1
    sweep.cases = _cases("torch-eager", size=32)
    sweep.max_time, sweep.target_ci = 0.3, 1e-9  # never met: time decides
    seconds = sweep.run(sweep.cases[0], FakeBenchmark())["rounds_seconds"]
    assert len(seconds) >= sweep.min_rounds
    fewest = max(measure.BLOCKS_PER_WORKER, sweep.min_rounds)
    assert len(seconds) == fewest or sum(seconds[:-1]) < sweep.max_time  # it stopped in time
    if max(seconds) < sweep.max_time / (2 * fewest):  # quick rounds: time for more
        assert len(seconds) > fewest


def test_a_group_that_does_not_fit_is_measured_in_parts(sweep, monkeypatch) -> None:
    monkeypatch.setattr(environment, "memory_bytes", lambda device: 1)
    monkeypatch.setattr(measure, "memory_problem", lambda config: None)  # each fits alone, by its estimate
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
    again = Sweep(compile_cache=sweep.compile_cache, timing=False, cases=sweep.cases[:1])
    record = again.run(sweep.cases[0], FakeBenchmark())
    assert record["forms"]["torch"]["earlier_run"]
    assert record["forms"]["torch"]["chosen"] == torch_forms["chosen"]
    assert record["settings"]["memory_format_seconds"] is None


def test_a_compiled_path_times_its_memory_format_compiled_in_cold_workers(sweep, monkeypatch) -> None:
    # torch eager stands in for a compiled path: the mechanism is tested, without minutes of compiling
    monkeypatch.setattr(measure, "OWN_FORMS", {"torch-eager": ("memory_format", "upconv")})
    monkeypatch.setattr(measure, "compiles_nothing", lambda path: False)
    seconds = {"channels_last": 0.02, "contiguous": 0.01}
    calls: list[str] = []

    def time_round(self, worker) -> float:
        calls.append(worker.config.memory_format)
        return seconds[worker.config.memory_format]

    monkeypatch.setattr(Sweep, "time_round", time_round)
    sweep.cases = _cases("torch-eager")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    rounds = measure.OWN_FORM_ROUNDS
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
    again = Sweep(compile_cache=sweep.compile_cache, cases=sweep.cases, min_rounds=2, max_time=0.01)
    record = again.run(sweep.cases[0], FakeBenchmark())
    assert record["compile_cold_reused"] and record["forms"]["torch-eager"]["earlier_run"]
    assert record["compile_folder"] == str(folder) and set(calls) == {"contiguous"}


def test_a_compiled_path_whose_up_conv_form_and_freezing_lose_compiles_the_winners_cold(
    sweep, monkeypatch
) -> None:
    """A compiled path times its up-conv forms and (compiled inference on a CPU) freezing after its
    cold call (so as not to warm it); where the forms it was built in lose, the winners' cold call
    is measured in one fresh worker. (torch eager stands in for torch-compile, freezing put into its
    settings: the mechanism is tested, without minutes of compiling.)"""
    monkeypatch.setattr(measure, "OWN_FORMS", {"torch-eager": ("upconv", "freezing")})
    monkeypatch.setattr(measure, "compiles_nothing", lambda path: False)
    built: list[tuple[str, str]] = []
    timed: dict[str, float] = {}
    real_connect, real_call = Worker.connect, Worker.call

    def connect(self):
        real_connect(self)
        self.settings["freezing"] = "off" if self.config.freezing == "auto" else self.config.freezing

    def call(self, command: str, *args):
        if command == "first_call":
            built.append((self.settings["upconv"], self.settings["freezing"]))
        if command == "upconv_forms":  # the form the worker was built in loses
            timed.update({self.settings["upconv"]: 2.0, OTHER_FORM[self.settings["upconv"]]: 1.0})
            return dict(timed)
        if command == "freezing_forms":
            return {"on": 1.0, "off": 2.0}
        return real_call(self, command, *args)

    monkeypatch.setattr(Worker, "connect", connect)
    monkeypatch.setattr(Worker, "call", call)
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
    given = Sweep(compile_cache=sweep.compile_cache / "given", cases=[native])
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
    assert sweep.remaining() == (measure.GUESS_SECONDS["cpu"], 1)
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    later = Sweep(compile_cache=tmp_path / "cache", cases=sweep.cases)
    seconds, guessed = later.remaining()
    assert guessed == 0
    assert seconds < record["case_wall_seconds"]  # the cold compile is now reused
    monkeypatch.setattr(environment, "code_hash", lambda: "changed")  # a new folder: compiles again
    assert later.remaining() == (record["case_wall_seconds"], 0)


def test_a_case_that_fails_in_a_group_fails_alone(sweep, monkeypatch) -> None:
    monkeypatch.setenv("UNET_BENCH_FAULT", "rank=0,path=jax,command=first_call,action=exit")
    sweep.cases = _cases("torch-eager", "jax", "torch-plain")
    eager = sweep.run(sweep.cases[0], FakeBenchmark())
    with pytest.raises(measure.CaseFailure, match="exited with code 3"):
        sweep.run(sweep.cases[1], FakeBenchmark())
    plain = sweep.run(sweep.cases[2], FakeBenchmark())
    assert (eager["status"], plain["status"]) == ("ok", "ok")
    assert eager["round_blocks"] == plain["round_blocks"]  # still interleaved, the two of them
    assert leftover_processes() == []


def test_references_and_records_are_written_whole(tmp_path) -> None:
    """Through impls/files.py: renamed into place once complete, no temporary file left beside them."""
    reference = {"logits": np.arange(6.0).reshape(2, 3), "gradients": {"conv.weight": np.ones(3)}}
    file = tmp_path / "references" / "key.npz"
    measure._save_reference(file, reference, {"logits": 1e-6})
    loaded, noise = measure._load_reference(file)
    np.testing.assert_array_equal(loaded["logits"], reference["logits"])
    np.testing.assert_array_equal(loaded["gradients"]["conv.weight"], np.ones(3))
    assert noise == {"logits": 1e-6}
    sweep = Sweep(compile_cache=tmp_path / "cache")
    sweep._write_json(tmp_path / "cache" / "forms.json", {"key": {"chosen": "contiguous"}})
    assert sweep._read_json(tmp_path / "cache" / "forms.json") == {"key": {"chosen": "contiguous"}}
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["forms.json", "forms.json.sha256", "key.npz", "key.npz.sha256"]  # each with its digest


def test_a_spoiled_cache_entry_is_named_discarded_and_made_again(sweep, tmp_path) -> None:
    """A reference cut short and a forms file changed by hand, in the compile-cache folder: the next
    run names each, discards it, makes it again and measures the case."""
    sweep.cases = _cases("torch-eager")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    (reference,) = (tmp_path / "cache").rglob("*.npz")
    reference.write_bytes(reference.read_bytes()[:100])
    forms = tmp_path / "cache" / "forms.json"
    forms.write_text("{")
    said: list[str] = []
    again = Sweep(
        compile_cache=tmp_path / "cache", min_rounds=4, max_time=0.05, replicates=1, announce=said.append
    )
    again.cases = sweep.cases
    assert again.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    for file in (reference, forms):
        assert any(line.startswith(f"discarded {file}: its bytes no longer match") for line in said), said
    assert measure.seal_problem(reference) is None and measure.seal_problem(forms) is None  # made again
    assert leftover_processes() == []


def _timed_by_worker(monkeypatch, seconds) -> None:
    """Rounds of ``seconds(path, worker number)``: each fresh worker of a path gets the next number."""
    seen: list[Worker] = []  # kept, so that no two workers are told apart by a reused id

    def time_round(self, worker) -> float:
        if not any(w is worker for w in seen):
            seen.append(worker)
        return seconds(worker.config.path, next(i for i, w in enumerate(seen) if w is worker))

    monkeypatch.setattr(Sweep, "time_round", time_round)


def test_a_decided_group_stops_at_the_fewest_workers(sweep, monkeypatch) -> None:
    """An A/A pair whose rounds are identical is equivalent after --replicates workers: no more."""
    _timed_by_worker(monkeypatch, lambda path, number: 0.01)
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


def test_an_undecided_group_samples_more_workers_until_its_limit_or_budget(sweep, monkeypatch) -> None:
    """Workers 30% apart at random: the comparison stays inconclusive, so fresh workers are added up
    to --max-replicates; with a budget that one more would overrun, none is added."""
    luck = np.random.default_rng(0).lognormal(0.0, 0.3, 100)
    _timed_by_worker(monkeypatch, lambda path, number: 0.01 * luck[number])
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


def _logged_requests(monkeypatch) -> list[tuple[Worker, str]]:
    """Every command sent to a worker of the sweep (reference workers included), in order."""
    sent: list[tuple[Worker, str]] = []
    request = Worker.request

    def logged(self, command, *args, **kwargs):
        sent.append((self, command))
        return request(self, command, *args, **kwargs)

    monkeypatch.setattr(Worker, "request", logged)
    return sent


def test_every_timed_worker_is_checked_and_no_peak_holds_the_gate(sweep, monkeypatch) -> None:
    """Per worker of a case: the gate before the rounds, then the peak reset (the gate's gradient
    copies out of the figure); each later worker checked after its rounds, its peak read first."""
    sent = _logged_requests(monkeypatch)
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


def test_a_replicate_worker_that_computes_another_function_fails_the_case(sweep, monkeypatch) -> None:
    """The first worker passes the gate; a later one whose logits are off fails the case."""
    outputs, checked = Worker.outputs, []

    def off_after_the_first(self, task, seed=0):
        found = outputs(self, task, seed)
        checked.append(self.config.path)
        if checked.count(self.config.path) > 1 and self.config.path == "jax":
            found["logits"] = found["logits"] * 1.01
        return found

    monkeypatch.setattr(Worker, "outputs", off_after_the_first)
    sweep.replicates = sweep.max_replicates = 2
    sweep.cases = _cases("torch-eager", "jax")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    with pytest.raises(measure.CaseFailure, match=r"jax \(worker 2 of the case\) differs .* logits"):
        sweep.run(sweep.cases[1], FakeBenchmark())
    assert leftover_processes() == []


def _slowed(monkeypatch, seconds: dict[tuple[str, str], float]) -> None:
    """Each (path, command) of the sweep's workers ``seconds`` slower, as if the worker took them."""
    call = Worker.call

    def slow(self, command, *args, **kwargs):
        time.sleep(seconds.get((self.config.path, command), 0.0))
        return call(self, command, *args, **kwargs)

    monkeypatch.setattr(Worker, "call", slow)


def test_the_case_timeout_bounds_all_of_a_cases_phases_together(sweep, monkeypatch) -> None:
    """Set-up, rounds and a fresh worker, each 40% of --case-timeout: the case is a timeout (each
    phase under the limit used to pass), and well before twice the limit."""
    sweep.cases = _cases("torch-eager")  # the reference computed and kept first, outside the limit
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    limit = 20.0
    sweep.case_timeout, sweep.replicates, sweep.max_replicates = limit, 2, 2
    blocks = measure.BLOCKS_PER_WORKER
    _slowed(
        monkeypatch,
        {("torch-plain", "first_call"): 0.4 * limit, ("torch-plain", "time_calls"): 0.4 * limit / blocks},
    )
    sweep.cases = _cases("torch-plain")
    started = time.monotonic()
    with pytest.raises(measure.CaseFailure):
        sweep.run(sweep.cases[0], FakeBenchmark())
    record = sweep.records[-1]
    assert record["status"] == "timeout" and "--case-timeout" in record["message"]
    assert record["phase_seconds"]["first_call"] < limit / 2  # set-up alone was within the limit
    assert time.monotonic() - started < 2 * limit
    assert leftover_processes() == []


def test_the_other_paths_rounds_are_not_a_cases_time(sweep, monkeypatch) -> None:
    """Interleaved with a path whose rounds take the whole limit between them, a fast case is ok."""
    limit = 12.0
    sweep.case_timeout = limit
    _slowed(monkeypatch, {("torch-eager+0%", "time_calls"): 1.2 * limit / measure.BLOCKS_PER_WORKER})
    sweep.cases = _cases("torch-plain", "torch-eager+0%")
    record = sweep.run(sweep.cases[0], FakeBenchmark())
    assert record["status"] == "ok"
    assert [r["status"] for r in sweep.records] == ["ok", "timeout"]  # the slow one, on its own time
    assert leftover_processes() == []


def test_compiled_code_that_does_not_load_is_compiled_again_once(sweep, tmp_path, monkeypatch) -> None:
    """The next run's worker fails on what an earlier run compiled: the case's folder is cleared, the
    case compiled cold again and measured."""
    sweep.cases = _cases("jax")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    call, failed = Worker.call, []

    def failing_once(self, command, *args, **kwargs):
        if command == "first_call" and not failed and (Path(self.compile_cache) / "cold.json").exists():
            failed.append(self.compile_cache)
            raise measure.WorkerError("error", "RuntimeError: a corrupt cache entry\n(traceback)")
        return call(self, command, *args, **kwargs)

    monkeypatch.setattr(Worker, "call", failing_once)
    said: list[str] = []
    again = Sweep(
        compile_cache=tmp_path / "cache", min_rounds=4, max_time=0.05, replicates=1, announce=said.append
    )
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
    sweep, monkeypatch
) -> None:
    """Its estimate (measure.needed_bytes) above what the device has free: out-of-memory, not started."""
    real = measure.needed_bytes
    monkeypatch.setattr(measure, "needed_bytes", lambda c: 2**50 if c.path == "torch-plain" else real(c))
    started = []
    monkeypatch.setattr(
        measure, "Worker", lambda config, **kw: started.append(config.path) or Worker(config, **kw)
    )
    sweep.cases = _cases("torch-eager", "torch-plain")
    assert sweep.run(sweep.cases[0], FakeBenchmark())["status"] == "ok"
    with pytest.raises(measure.CaseFailure, match=r"^not started: "):
        sweep.run(sweep.cases[1], FakeBenchmark())
    by_path = {r["case"]["path"]: r for r in sweep.records}
    refused = by_path["torch-plain"]
    assert refused["status"] == "out-of-memory"
    assert refused["message"].startswith(f"not started: {sweep.cases[1].id} needs about 1048576.0 GiB")
    assert "torch-plain" not in started and "torch-eager" in started
    assert leftover_processes() == []
