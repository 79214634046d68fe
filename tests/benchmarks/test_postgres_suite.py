"""The PostgreSQL suite's runner works at a tiny size against a real server; timings are never asserted here."""

import math

import pytest

from benchmarks import postgres
from benchmarks._harness import TINY, Result
from tests import postgres as server

from ..conftest import skip_or_fail

LAG = "2 writers, worker process"
FAILOVER = "SIGKILL lease holder"


def expected(implementations: tuple[str, ...]) -> set[tuple[str, str, str]]:
    found = {(scenario, family, kind) for scenario in ("append",) for family in ("1 writer", "2 writers")
             for kind in implementations}
    found |= {("append_scaling", "2 writers / 1 writer", kind) for kind in implementations}
    found |= {(f"projection_lag_{q}", LAG, kind) for q in ("p50", "p99") for kind in implementations}
    found |= {(f"failover_{q}", FAILOVER, kind) for q in ("p50", "max") for kind in ("this", "poll_interval")}
    return found


def test_postgres_suite_measures_every_scenario_beside_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    server.require()
    monkeypatch.setattr(postgres, "DSN", server.DSN)
    lines: list[str] = []
    results = postgres.run(TINY, with_peers=True, progress=lines.append)
    assert all(r.suite == "postgres" for r in results)
    assert all(math.isfinite(r.median_ns) and r.median_ns > 0 for r in results)
    assert all(math.isfinite(r.ratio) and r.ratio > 0 for r in results)
    found = {(r.scenario, r.family, r.implementation) for r in results}
    assert len(results) == len(found)  # nothing measured twice
    assert sum("worker failover" in line for line in lines) == postgres.SIZES[TINY].failovers
    table = postgres.summary(results)
    assert "| append, 2 writer processes |" in table
    assert "| worker failover p50 / max" in table
    if not postgres.has_eventsourcing():
        assert found == expected(("this",))
        skip_or_fail("eventsourcing is not installed (pip install -e '.[peers]'), so the reference was not measured")
    assert found == expected(("this", "eventsourcing"))
    assert all(r.ratio == 1.0 for r in results if r.implementation in ("eventsourcing", "poll_interval")
               and r.scenario != "append_scaling")


def test_without_peers_only_our_side_runs_and_the_summary_says_so() -> None:
    results = [Result("postgres", s, f, k, 1e6, 1.0) for s, f, k in expected(("this",))]
    assert "eventsourcing was not measured" in postgres.summary(results)
    assert "not measured" in postgres.summary(results).splitlines()[2]
