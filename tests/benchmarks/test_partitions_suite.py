"""The partitions suite's runner works at a tiny size on PostgreSQL: every pair of partitions and workers timed in
one run, each read model checked to add up. Timings are never asserted."""

import pytest

from benchmarks import partitions
from benchmarks._harness import TINY
from tests import postgres as server


def test_partitions_suite_times_every_pair_of_partitions_and_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    server.require()
    monkeypatch.setattr(partitions, "DSN", server.DSN)
    monkeypatch.setenv("MEDIATOR_BENCH_POSTGRES", server.DSN)  # the workers' processes read it
    lines: list[str] = []
    results = partitions.run(TINY, progress=lines.append)
    assert {(r.scenario, r.family) for r in results} == {
        (f"{p} partitions", f"{w} workers") for p in (1, 2, 4) for w in (1, 2, 4)}
    assert all(r.suite == "partitions" and r.median_ns > 0 and r.ratio > 0 for r in results)
    assert len(lines) == len(partitions.PAIRS)
    table = partitions.summary(results)
    assert "| 4 partitions |" in table
    assert table.count("x)") == 9
