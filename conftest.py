# The benchmark suite's options, matrix and report live in a plugin, registered
# here at the root so that `pytest --benchmark-only --paths jax` knows them.
import pytest

pytest_plugins = ["bench.plugin"]

SHARED_SCOPES = ("module", "session")
PROJECT_PACKAGES = ("tests.", "bench.")  # not pytest's own (tmp_path_factory is session-wide)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` spreads the tests over two processes (pytest-xdist, --dist loadgroup): the tests of
    a file that share a module fixture, and the tests that share a session fixture, stay in one
    process each, so that the fixture is computed once."""
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        definitions = fixtures.name2fixturedefs.values() if fixtures else ()
        # the last definition of a name is the one the test gets (a test file's own `sweep`, not the plugin's)
        shared = [defs[-1] for defs in definitions if defs[-1].scope in SHARED_SCOPES]
        shared = [d for d in shared if d.func.__module__.startswith(PROJECT_PACKAGES)]
        if shared:
            session = [d.func.__module__ for d in shared if d.scope == "session"]
            item.add_marker(pytest.mark.xdist_group(min(session, default=item.nodeid.split("::")[0])))
