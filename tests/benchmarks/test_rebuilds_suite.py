"""The rebuilds suite's runner works at a tiny size: a rebuild's check timed beside the rebuild. Timings are never
asserted here."""

from benchmarks import rebuilds
from benchmarks._harness import TINY


def test_rebuilds_suite_times_the_check_beside_the_rebuild() -> None:
    lines: list[str] = []
    results = rebuilds.run(TINY, progress=lines.append)
    assert [r.scenario for r in results] == ["rebuild", "verify"]
    assert all(r.suite == "rebuilds" and r.median_ns > 0 and r.ratio > 0 for r in results)
    assert results[0].ratio == 1.0
    assert lines
    assert "| check (compare with the live generation, every row) |" in rebuilds.summary(results)
