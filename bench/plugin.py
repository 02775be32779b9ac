"""The benchmark suite's pytest plugin: pytest's hooks and fixtures, each delegating.

Loaded from the repository's root conftest.py, so that pytest knows the options before it looks
into bench/. The options are bench/options.py's table, the cases bench/matrix.py's, the run's folder
and its end bench/session.py's. It imports no framework: every case runs in worker processes
(bench/sweep/process_worker.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from bench import matrix, options
from bench.run_config import RunConfig
from bench.session import Run, finish, json_target, start, update_json
from bench.sweep import Sweep

RUN_KEY = pytest.StashKey[Run]()
ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(*options.TITLE)
    for option in options.table():
        group.addoption(option.flag, **option.settings())


def pytest_report_header(config: pytest.Config) -> str | None:
    run = config.stash.get(RUN_KEY, None)
    problem = ((run and run.environment) or {}).get("torch_facts_problem")
    return f"the thread count and CUDA versions are not recorded: {problem}" if problem else None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Every option is checked here, before anything runs: a mistake is one line, not a traceback.
    try:
        run = Run(_matrix(config))
        config.stash[RUN_KEY] = run
        # A run is saved by the main command, `pytest --benchmark-only`.
        measured = config.getoption("benchmark_only")
        if config.getoption("resume") is not None and not measured:
            raise matrix.OptionError("--resume continues a measured run: use it with --benchmark-only")
        if measured and run.matrix.cases and not config.option.collectonly:
            start(run, config.getoption("resume"))
            if not config.getoption("benchmark_json"):
                config.option.benchmark_json = json_target(run.run_dir / "benchmark.json")
    except matrix.OptionError as error:
        raise pytest.UsageError(str(error)) from None
    timing = not config.getoption("benchmark_disable")
    shared = run.matrix.options
    run.sweep = Sweep(
        progress_file=run.run_dir / "progress.jsonl" if run.run_dir else None,
        compile_cache=run.matrix.compile_cache,
        case_timeout=shared["case_timeout"],
        timing=timing,
        min_rounds=shared["min_rounds"],
        max_time=shared["max_time"],
        target_ci=shared["target_ci"],
        warm_up=shared["warm_up"],
        replicates=shared["replicates"] if timing else 1,
        max_replicates=shared["max_replicates"],
        group_budget=shared["group_budget"],
        margin=shared["margin"],
        run_spread=shared["run_spread"],
        max_minutes=shared["max_minutes"],
        cases=run.cases,
        announce=_announcer(config),
    )


def _matrix(config: pytest.Config) -> matrix.Matrix:
    """The command line's matrix; pytest-benchmark's --benchmark-max-time, where not given, set to
    the device's default, which its own rounds then follow too."""
    given = "--benchmark-max-time" in " ".join(config.invocation_params.args)
    cases = matrix.build(
        config.option,
        max_time=float(config.option.benchmark_max_time) if given else None,
        min_rounds=int(config.getoption("benchmark_min_rounds")),
    )
    if not given:
        config.option.benchmark_max_time = str(cases.max_time)
    return cases


def _announcer(config: pytest.Config):
    """Progress lines written to the terminal at once, past pytest's output capture."""

    def announce(line: str) -> None:
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if terminal is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            terminal.write_line(f"unet-bench {line}")

    return announce


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The main command measures: it skips collecting the unit tests (which import both frameworks)."""
    tests = ROOT / "tests"
    if config.getoption("benchmark_only") and (collection_path == tests or tests in collection_path.parents):
        return True
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    run = metafunc.config.stash[RUN_KEY]
    for name, cases in (("case", run.matrix.cases), ("scaling_case", run.matrix.scaling)):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def sweep(request: pytest.FixtureRequest) -> Sweep:
    run = request.config.stash[RUN_KEY]
    sweep = run.sweep
    if sweep.timing:
        # The device's peak, measured before any case runs: nothing else is busy yet.
        for case in {(c.device, c.precision, c.tf32): c for c in run.cases}.values():
            sweep.peak_tflops(case)
        seconds, guessed = sweep.remaining()
        basis = f"{guessed} of them never run here, guessed" if guessed else "from earlier runs"
        sweep.announce(f"{len(sweep.cases)} cases, about {seconds / 60:.0f} min ({basis})")
    return sweep


@pytest.fixture(scope="session")
def bench_cases(request: pytest.FixtureRequest) -> list[RunConfig]:
    return request.config.stash[RUN_KEY].matrix.cases


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    update_json(config.stash[RUN_KEY], output_json)


def pytest_sessionfinish(session: pytest.Session) -> None:
    status = finish(session.config.stash[RUN_KEY])
    if status is not None:
        session.exitstatus = status


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.summary:
        terminalreporter.write_sep("=", "unet-bench comparison")
        terminalreporter.write_line(run.summary)
