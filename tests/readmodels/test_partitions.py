"""Partitioned projections: one projection split by its events' keys, each partition with its own checkpoint, dead
letters and lease, run by up to that many runners at once; on every backend, and across processes on PostgreSQL
with a worker SIGKILLed and its partitions taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mediator.readmodels import (
    Delivery,
    ProjectionConfigError,
    ReadModels,
    RoutedStorage,
    Storage,
    consistent,
    last_token,
)
from mediator.readmodels._projections import partition_of
from tests import storages

from .bank import Balances, Bank, Deposit, GetBalance, PartitionedBalances, PartitionedCents, event_types, make_bank

ACCOUNTS = [f"acct-{n}" for n in range(12)]


@pytest.fixture(params=[kind for kind in storages.KINDS if kind != "sqlite+redis"])
def sql_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Every backend but a Redis read store, which refuses partitioned projections (see the last test below)."""
    with storages.opened(request.param, tmp_path) as backend:
        yield backend


def partitioned(storage: Storage, **options: Any) -> Bank:
    return make_bank(storage, projection_class=PartitionedBalances, **options)


def deposit_round(bank: Bank, rounds: int = 1) -> Counter[str]:
    expected: Counter[str] = Counter()
    for _ in range(rounds):
        for account in ACCOUNTS:
            bank.mediator.send(Deposit(account=account, amount=1))
            expected[account] += 1
    return expected


def test_the_keys_are_spread_over_the_partitions_stably() -> None:
    found = Counter(partition_of(f"key-{n}", 4) for n in range(4000))
    assert set(found) == {0, 1, 2, 3}
    assert min(found.values()) > 800  # each about a quarter
    assert partition_of("acct-1", 4) == partition_of("acct-1", 4)
    assert partition_of(None, 4) == 0
    assert partition_of("anything", 1) == 0


def test_every_event_is_applied_once_by_the_partition_of_its_key(sql_storage: Storage) -> None:
    storage = sql_storage
    bank = partitioned(storage)
    expected = deposit_round(bank, rounds=3)
    bank.engine.catch_up()
    assert bank.balances() == dict(expected)
    head = storage.head()
    rows = [row for row in bank.engine.lag() if not row.rebuilding]
    assert [row.partition for row in rows] == [0, 1, 2, 3]
    assert {row.projection for row in rows} == {"balances"}
    assert all(row.checkpoint == head and row.applied == head and row.positions_behind == 0 for row in rows)
    assert bank.engine.checkpoint("balances", 1) == head
    # Each partition kept its own checkpoint; none under the projection's own name.
    assert [storage.checkpoint(f"balances#{p}", 1) for p in range(4)] == [head] * 4
    assert storage.checkpoint("balances", 1) == 0
    # The accounts fall in more than one partition, so more than one applied events.
    assert len({partition_of(account, 4) for account in ACCOUNTS}) > 1


def test_a_poison_event_parks_in_its_partition_and_the_others_go_on(sql_storage: Storage) -> None:
    storage = sql_storage
    bank = partitioned(storage, max_attempts=1)
    bank.projection.poison.add("acct-3")
    expected = deposit_round(bank)
    bank.engine.catch_up()
    (letter,) = bank.engine.dead_letters("balances")
    poisoned = partition_of("acct-3", 4)
    assert letter.projection == f"balances#{poisoned}"
    assert letter.key == "acct-3"
    assert bank.balances() == {a: n for a, n in expected.items() if a != "acct-3"}
    rows = {row.partition: row for row in bank.engine.lag()}
    assert rows[poisoned].parked == 1
    assert rows[poisoned].applied == letter.position - 1
    assert all(row.parked == 0 and row.applied == storage.head() for p, row in rows.items() if p != poisoned)
    # Read-your-writes waits for every partition: the parked event holds the projection back.
    assert bank.engine.applied("balances", 1) == letter.position - 1
    bank.projection.poison.clear()
    assert bank.engine.retry("balances", letter.position) == 1
    assert bank.balances() == dict(expected)
    assert bank.engine.applied("balances", 1) == storage.head()
    assert bank.engine.dead_letters("balances") == []


def test_a_rebuild_replays_every_partition_and_swaps_in_once_all_caught_up(sql_storage: Storage) -> None:
    storage = sql_storage
    bank = partitioned(storage, retire_after=0, max_attempts=1)
    expected = deposit_round(bank, rounds=2)
    bank.engine.catch_up()
    generation = bank.engine.rebuild("balances")
    bank.engine.finish_rebuilds()
    assert storage.current_generation("balances") == generation
    assert bank.balances() == dict(expected)
    check = bank.engine.rebuilds.checks["balances"]
    assert check.same
    assert check.position == storage.head()
    # The partitions' records follow the swap: a parked event of the new generation is listed.
    bank.projection.poison.add("acct-5")
    deposit_round(bank)
    bank.engine.catch_up()
    (letter,) = bank.engine.dead_letters("balances")
    assert letter.generation == generation
    assert letter.key == "acct-5"


def test_read_your_writes_waits_for_the_partitions_of_a_running_engine(sql_storage: Storage) -> None:
    storage = sql_storage
    bank = partitioned(storage)
    with bank.engine:
        for n, account in enumerate(ACCOUNTS, start=1):
            bank.mediator.send(Deposit(account=account, amount=n))
            token = last_token()
            assert token is not None
            with consistent(token, timeout=5):
                assert bank.mediator.ask(GetBalance(account=account)) == n


def test_bad_declarations_are_refused(storage: Storage, tmp_path: Path) -> None:
    class Zero(Balances):
        partitions = 0

    with pytest.raises(ProjectionConfigError, match="partitions=0: a whole number"):
        Zero()

    class Hashed(Balances):
        name = "bal#ances"

    with pytest.raises(ProjectionConfigError, match="cannot hold '#'"):
        Hashed()
    engine = ReadModels(storage, event_types())
    if isinstance(storage, RoutedStorage):
        with pytest.raises(ProjectionConfigError, match="keep it in a SQL store"):
            engine.add(PartitionedBalances())
        return
    with pytest.raises(ProjectionConfigError, match="cannot be inline"):
        engine.add(PartitionedBalances(), delivery=Delivery.INLINE)


# -- several runners, on PostgreSQL ---------------------------------------------------------------------------


def held(engine: ReadModels) -> list[int]:
    return [p for p in range(4) if engine.storage.holds(f"balances#{p}")]


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_runners_share_the_partitions_and_take_a_stopped_ones_over(tmp_path: Path) -> None:
    with storages.opened("postgres", tmp_path) as first_storage:
        from mediator.readmodels.postgres import PostgresStorage

        assert isinstance(first_storage, PostgresStorage)
        second_storage = PostgresStorage(first_storage.dsn, schema=first_storage.schema)
        try:
            first = make_bank(first_storage, projection_class=PartitionedBalances, standby_interval=0.02)
            second = make_bank(second_storage, projection_class=PartitionedBalances, standby_interval=0.02)
            expected = deposit_round(first)
            first.engine.start()
            wait_for(lambda: held(first.engine) == [0, 1, 2, 3])  # alone: every partition
            second.engine.start()
            # Two runners: two partitions each, none run by both.
            wait_for(lambda: len(held(first.engine)) == 2 and len(held(second.engine)) == 2)
            assert sorted(held(first.engine) + held(second.engine)) == [0, 1, 2, 3]
            expected += deposit_round(second, rounds=2)
            wait_for(lambda: first.engine.applied("balances", 1) == first_storage.head())
            assert first.balances() == dict(expected)
            first.engine.stop()  # its leases go: the other takes its partitions
            wait_for(lambda: held(second.engine) == [0, 1, 2, 3])
            expected += deposit_round(second)
            wait_for(lambda: second.engine.applied("balances", 1) == first_storage.head())
            assert second.balances() == dict(expected)
            second.engine.stop()
        finally:
            second_storage.close()


SIZE = int(os.environ.get("MEDIATOR_PARTITION_KILLS", "2"))
"""How many workers are SIGKILLed in turn, each with events left to apply (CI runs 10)."""


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    worker = subprocess.Popen([sys.executable, "-m", "tests.readmodels.bank_app", "worker"], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "ready"
    return worker


def test_a_sigkilled_workers_partitions_are_taken_over_and_nothing_is_lost_or_applied_twice(tmp_path: Path) -> None:
    environ = {"BANK_PROJECTION": "partitioned", "BANK_DELIVERY": "worker", "BANK_SLOW": "0.005", "BANK_BATCH": "20"}
    with storages.shared_by_processes("postgres", tmp_path, **environ) as (env, storage):
        bank = make_bank(storage, Delivery.WORKER, projection_class=PartitionedBalances, retire_after=0)
        workers = [start_worker(env), start_worker(env)]
        expected: Counter[str] = Counter()
        try:
            for kill in range(SIZE):
                expected += deposit_round(bank, rounds=10)
                # Let the two share the work, then kill one mid-batch and start another in its place.
                wait_for(lambda: bank.engine.applied("balances", 1) >= storage.head() - 90)
                victim = workers.pop(kill % 2 if len(workers) > 1 else 0)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                assert victim.stdout is not None
                victim.stdout.close()
                expected += deposit_round(bank, rounds=5)
                workers.append(start_worker(env))
            wait_for(lambda: bank.engine.applied("balances", 1) == storage.head(), timeout=60)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait()
                assert worker.stdout is not None
                worker.stdout.close()
        # Each deposit of 1 applied exactly once: every balance is its count of deposits.
        assert bank.balances() == dict(expected)
        # And a rebuild from the log, compared with the live read model, finds nothing different.
        bank.engine.rebuild("balances")
        bank.engine.finish_rebuilds()
        check = bank.engine.rebuilds.checks["balances"]
        assert check.same, check.summary()
        assert bank.balances() == dict(expected)



def test_status_shows_each_partition_with_its_checkpoint(sql_storage: Storage) -> None:
    from mediator.readmodels.__main__ import status

    bank = partitioned(sql_storage, max_attempts=1)
    bank.projection.poison.add("acct-3")
    deposit_round(bank)
    bank.engine.catch_up()
    lines = status(bank.engine).splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("balances#")}
    assert sorted(rows) == [f"balances#{p}" for p in range(4)]
    assert "parked" in rows[f"balances#{partition_of('acct-3', 4)}"]


# -- review fixes: a new split, runners of other deliveries, a verified upgrade, counts ------------------------


@pytest.mark.parametrize(("before", "after"), [(Balances, PartitionedBalances), (PartitionedBalances, Balances)])
def test_a_new_number_of_partitions_rebuilds_the_read_model_and_applies_nothing_twice(
        sql_storage: Storage, before: type[Balances], after: type[Balances]) -> None:
    old = make_bank(sql_storage, projection_class=before)
    expected = deposit_round(old, rounds=2)
    old.engine.catch_up()
    new = make_bank(sql_storage, projection_class=after, retire_after=0)
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert sql_storage.current_generation("balances") == 2  # rebuilt with the new split
    assert new.balances() == dict(expected)  # not doubled
    assert new.projection.side_effects == []  # every event had its side effects from the old split already
    expected += deposit_round(new)
    new.engine.catch_up()
    assert new.balances() == dict(expected)
    assert len(new.projection.side_effects) == len(ACCOUNTS)


def test_a_runner_of_another_delivery_takes_no_share_of_the_partitions(tmp_path: Path) -> None:
    with storages.opened("postgres", tmp_path) as first_storage:
        from mediator.readmodels.postgres import PostgresStorage

        assert isinstance(first_storage, PostgresStorage)
        second_storage = PostgresStorage(first_storage.dsn, schema=first_storage.schema)
        try:
            worker = make_bank(first_storage, Delivery.WORKER, projection_class=PartitionedBalances,
                               standby_interval=0.02)
            web = make_bank(second_storage, Delivery.WORKER, projection_class=PartitionedBalances,
                            standby_interval=0.02)
            web.engine.start()  # a service process's background runner: the projection is the workers'
            worker.engine.start(Delivery.WORKER)
            expected = deposit_round(web)
            wait_for(lambda: worker.engine.applied("balances", 1) == first_storage.head())
            time.sleep(0.2)  # a few looks of both
            assert held(worker.engine) == [0, 1, 2, 3]
            assert held(web.engine) == []
            assert not any(second_storage.holds(f"balances#slot{k}") for k in range(4))
            assert worker.balances() == dict(expected)
            web.engine.stop()
            worker.engine.stop()
        finally:
            second_storage.close()


def test_a_verified_upgrade_of_partitions_left_at_different_positions_is_compared_and_swapped_in(
        sql_storage: Storage) -> None:
    import threading

    old = make_bank(sql_storage, projection_class=PartitionedBalances)
    expected = deposit_round(old, rounds=2)
    old.engine.catch_up()
    deposit_round(old)
    lane = old.engine._tracks["balances"].lanes[0]
    old.engine.applier.run_batch(lane, 1, False)  # one partition ahead of the others
    assert len(set(old.engine.positions("balances", 1))) == 2
    new = make_bank(sql_storage, projection_class=PartitionedCents, retire_after=0)
    def upgrade() -> None:
        new.engine.catch_up()  # claims the rebuild for version 2 and replays it
        new.engine.finish_rebuilds()

    finishing = threading.Thread(target=upgrade, daemon=True)
    finishing.start()
    finishing.join(30)
    assert not finishing.is_alive(), "the verified upgrade never swapped in"
    check = new.engine.rebuilds.checks["balances"]
    assert not check.unexpected
    assert sql_storage.current_generation("balances") == 2
    expected += Counter(ACCOUNTS)
    assert new.balances() == {account: count * 100 for account, count in expected.items()}


def test_metrics_count_each_event_once_whatever_the_partitions(sql_storage: Storage) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mediator.otel import instrument

    from .test_otel import collect

    bank = partitioned(sql_storage)
    reader = InMemoryMetricReader()
    instrument(bank.engine, MeterProvider(metric_readers=[reader]))
    deposit_round(bank, rounds=2)
    bank.engine.catch_up()
    (applied,) = collect(reader)["mediator.projection.events_applied"]
    assert applied.value == 2 * len(ACCOUNTS)
