# The benchmark suite's options, matrix and report live in a plugin, registered
# here at the root so that `pytest --benchmark-only --paths jax` knows them.
pytest_plugins = ["bench.plugin"]
