"""The live suite's runner works at a tiny size: a subscription's latency beside a read-your-writes query's, in
one process and across two. Timings are never asserted here."""

from benchmarks import live
from benchmarks._harness import TINY


def test_live_suite_measures_subscriptions_beside_read_your_writes() -> None:
    lines: list[str] = []
    results = live.run(TINY, progress=lines.append)
    assert [(r.scenario, r.implementation) for r in results] == [
        (f"{mode}:{statistic}", reader) for mode in live.MODES for statistic in ("p50", "p99")
        for reader in ("subscription", "read_your_writes")]
    assert all(r.suite == "live" and r.median_ns > 0 and r.ratio > 0 for r in results)
    assert all(r.ratio == 1.0 for r in results if r.implementation == "read_your_writes")
    assert lines
    table = live.summary(results)
    assert "| across processes, p99 |" in table
