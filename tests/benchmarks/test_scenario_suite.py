"""The scenario suite's runner works at a tiny size, and its correctness check catches shops that disagree.

Timings are never asserted here.
"""

import itertools
import random
import time
from pathlib import Path

import pytest

from benchmarks import _shopdata as shopdata
from benchmarks import scenario
from benchmarks._harness import TINY
from mediator.readmodels.sqlite import connect
from tests import redis_server

READS = ("order_details", "customer_orders", "products_by_category", "dashboard", "daily_sales")


def test_scenario_suite_measures_every_scenario_beside_its_reference() -> None:
    lines: list[str] = []
    results = scenario.run(TINY, progress=lines.append)
    found = {(r.scenario, r.family, r.implementation) for r in results}
    expected = {(f"{read}_{q}", f"{size} orders", kind) for read in READS for q in ("p50", "p99")
                for size in ("100", "400") for kind in ("crud", "cqrs")}
    expected |= {(f"{read}_growth", "x4 orders", kind) for read in READS for kind in ("crud", "cqrs")}
    expected |= {("load", "400 orders", "crud"), ("load", "400 orders", "cqrs"), ("load_write", "400 orders", "cqrs"),
                 ("load_projections", "400 orders", "cqrs"), ("load_floor_append", "400 orders", "cqrs"),
                 ("load_floor_read", "400 orders", "cqrs"), ("checkout", "runner stopped", "cqrs")}
    loads = ("under dashboard load", "under a flat-out dashboard reader")
    for kind in ("crud", "cqrs"):
        expected |= {("checkout", "alone", kind)}
        expected |= {(scenario_, load, kind) for scenario_ in ("checkout_loaded", "dashboard_reader") for load in loads}
    paced = ("paced alone", "paced under dashboard load")
    expected |= {("checkout_paced", family, "cqrs") for family in paced}
    expected |= {(f"projection_lag_{q}", family, "cqrs") for q in ("p50", "p99")
                 for family in ("alone", *loads, *paced)}
    expected |= {("checkout_idempotency", family, "cqrs") for family in ("plain", "keyed", "repeat")}
    redis_missing = redis_server.available()
    if redis_missing is None:  # the inventory read model served from SQLite and from Redis, side by side
        expected |= {(f"inventory_{q}", "read store", kind) for q in ("p50", "p99") for kind in ("sqlite", "redis")}
    else:
        assert any("no Redis read store" in line for line in lines), lines
    assert found == expected
    assert len(results) == len(found)  # no scenario measured twice
    assert all(r.suite == "scenario" and r.median_ns > 0 and r.ratio > 0 for r in results)
    assert all(r.ratio == 1.0 for r in results if r.implementation == "crud" and r.scenario.endswith(("_p50", "_p99")))
    assert sum("checking both shops agree" in line for line in lines) == 2
    table = scenario.summary(results)
    assert "| dashboard p50, 400 orders |" in table
    assert "| throughput kept under dashboard load |" in table
    assert "| throughput kept under a flat-out dashboard reader |" in table
    assert "| daily sales p50, 400 orders |" in table
    assert "| checkout with an idempotency key vs without (p50, in turn) |" in table


def test_generated_data_is_the_same_for_the_same_seed() -> None:
    data = shopdata.catalog(7)
    assert data == shopdata.catalog(7)
    assert shopdata.history(data, 7, orders=80, parts=(1, 3)) == shopdata.history(data, 7, orders=80, parts=(1, 3))
    first, rest = shopdata.history(data, 7, orders=80, parts=(1, 3))
    assert (len(first.orders), len(rest.orders)) == (20, 60)
    assert not {o.order_id for o in first.orders} & {o.order_id for o in rest.orders}


def test_the_check_agrees_on_a_fresh_load_and_catches_a_read_that_differs(tmp_path: Path) -> None:
    data = shopdata.catalog(3, categories=3, per_category=40)
    with scenario.shops(tmp_path, data) as both:
        both.load(shopdata.block(data, 3, orders=60), first=True)
        scenario.check_agreement(both, random.Random(3))  # the bulk-loaded read models answer as the joins do
        both.crud.db.execute("UPDATE order_items SET quantity = quantity + 1 WHERE rowid = 1")
        with pytest.raises(scenario.Disagreement, match="differs"):
            scenario.check_agreement(both, random.Random(3))


@pytest.mark.parametrize("kind", ["crud", "cqrs"])
def test_the_paced_dashboard_reader_never_reads_ahead_of_its_rate(tmp_path: Path, kind: str) -> None:
    data = shopdata.catalog(3, categories=3, per_category=40)
    with scenario.shops(tmp_path, data) as both:
        both.load(shopdata.block(data, 3, orders=60), first=True)
    def run() -> float:
        time.sleep(0.5)
        return 7.0

    rate = 40
    result, per_read = scenario.under_load(kind, tmp_path, run, rate)
    assert result == 7.0  # what the run beside the reader returned
    # On its schedule the reader makes at most one read more than the rate allows in the time it ran (at least
    # the run's 0.5 s): flat out, a read of so few orders takes well under a millisecond.
    assert per_read >= 0.95 / rate


def test_paced_checkouts_keep_to_their_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    sent: list[tuple[float, str]] = []

    def place(customer_id: str, items: object) -> None:
        sent.append((now[0], customer_id))
        now[0] += 0.01 if len(sent) <= 20 else 0.001  # the first twenty are slower than the schedule

    monkeypatch.setattr(time, "perf_counter", lambda: now[0])  # the module scenario.paced reads them from
    monkeypatch.setattr(time, "sleep", lambda seconds: now.__setitem__(0, now[0] + seconds))
    orders = [("a", ()), ("b", ())]
    per_checkout = scenario.paced(place, orders, 1.0, 200.0)
    assert len(sent) == 200  # 200 a second offered for a second: no more, and the late ones caught up
    assert [c for _, c in sent[:4]] == ["a", "b", "a", "b"]
    late = [t - 100.0 for t, _ in sent[:20]]
    assert late == sorted(late)
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(late))  # back to back while late
    on_time = [t - 100.0 for t, _ in sent[-50:]]
    assert all(t == pytest.approx(i / 200, abs=1e-9) for t, i in zip(on_time, range(150, 200), strict=True))
    assert per_checkout == pytest.approx(1.0 / 200)


def test_quiesce_copies_every_wal_back_into_its_database(tmp_path: Path) -> None:
    connections = [connect(tmp_path / name) for name in scenario.DATABASES]
    try:
        for connection in connections:
            connection.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the WAL until a checkpoint
            connection.execute("CREATE TABLE t (n TEXT)")
            connection.executemany("INSERT INTO t VALUES (?)", [("x" * 100,) for _ in range(1_000)])
        assert all((tmp_path / name).stat().st_size < 100_000 for name in scenario.DATABASES)  # the rows: in the WAL
        scenario.quiesce(tmp_path)
        assert all((tmp_path / name).stat().st_size > 100_000 for name in scenario.DATABASES)
        assert [c.execute("SELECT COUNT(*) FROM t").fetchone()[0] for c in connections] == [1_000] * 3
        for connection in connections:  # the next commit starts the WAL over: it does not grow
            wal = tmp_path.joinpath(connection.execute("PRAGMA database_list").fetchone()[2] + "-wal")
            size = wal.stat().st_size
            connection.execute("INSERT INTO t VALUES ('y')")
            assert wal.stat().st_size == size
    finally:
        for connection in connections:
            connection.close()
