"""Stand-ins for the tests of the sweep (no framework imported here)."""

from __future__ import annotations


class FakeBenchmark:
    """Stands in for pytest-benchmark's fixture: keeps the rounds the sweep hands it."""

    def __init__(self) -> None:
        self.extra_info: dict = {}
        self.rounds: list[float] = []

    def _make_stats(self, iterations: int):
        return type("Metadata", (), {"update": lambda _, seconds: self.rounds.append(seconds)})()
