"""The read-model suite's runner works at a tiny size; timings are never asserted here."""

from benchmarks import sync
from benchmarks._harness import TINY

from ..conftest import skip_or_fail


def test_sync_suite_measures_every_scenario_beside_its_reference() -> None:
    results = sync.run(TINY, with_peers=True, progress=lambda line: None)
    scenarios = {(r.scenario, r.implementation) for r in results}
    for expected in [("projection_apply", "raw"), ("projection_apply", "this"), ("rebuild", "this"),
                     ("framework_tax", "hand-coded"), ("framework_tax", "this"), ("lag_p50", "this"),
                     ("lag_p99", "this"), ("read_your_writes_p50", "1.5 x lag + 1 ms"),
                     ("read_your_writes_p99", "this")]:
        assert expected in scenarios, expected
    assert all(r.median_ns > 0 and r.suite == "sync" for r in results)
    if ("catch_up", "eventsourcing") not in scenarios:
        skip_or_fail("eventsourcing is not installed (pip install -e '.[peers]'), so the peer was not measured")
    assert "| framework tax |" in sync.summary(results)
