"""What only PostgreSQL has to prove: ordering under truly concurrent writers, leases, failover of workers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mediator import Registry
from mediator.readmodels import Delivery, NewEvent, ReadModels, StorageError, StoredEvent, consistent, last_token
from mediator.readmodels._versions import swap
from tests import postgres

from .bank import Balances, Deposit, GetBalance, deposit, event_types, make_bank

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg(pg_schema: str) -> Iterator[Any]:
    from mediator.readmodels.postgres import PostgresStorage

    storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    yield storage
    storage.close()


def new_event(n: int) -> NewEvent:
    return NewEvent(f"e-{n}-{time.monotonic_ns()}", "t.happened", 1, f'{{"n": {n}}}', None, float(n))


class Tail:
    """A reader that follows the log the way a projection does: ``read(after=checkpoint)``, checkpoint = last seen.

    ``skipped`` lists positions it never saw although they were committed: what a projection would never apply.
    """

    def __init__(self, read: Any) -> None:
        self.read = read
        self.checkpoint = 0
        self.seen: list[int] = []

    def poll(self) -> None:
        for position in self.read(self.checkpoint):
            self.seen.append(position)
            self.checkpoint = position

    def skipped(self, committed: list[int]) -> list[int]:
        return sorted(set(committed) - set(self.seen))


def naive_log(pg_schema: str) -> Any:
    """The log as a sequence would number it, for contrast: positions taken at insert, committed in any order."""
    import psycopg

    def connection() -> psycopg.Connection[Any]:
        return psycopg.connect(postgres.DSN, autocommit=True, options=f"-c search_path={pg_schema}")

    with connection() as setup:
        setup.execute(f'CREATE SCHEMA IF NOT EXISTS "{pg_schema}"')
        setup.execute("CREATE TABLE naive (position BIGSERIAL PRIMARY KEY, data TEXT)")
    return connection


def test_a_sequence_numbered_log_lets_a_reader_skip_an_event(pg_schema: str) -> None:
    # The hazard the serialised append exists for, shown on a plain BIGSERIAL table, so the check below is one
    # that can fail: a transaction takes position 1, another takes 2 and commits first; a reader at that moment
    # sees 2, moves its checkpoint past 1, and never reads 1 once it commits.
    connection = naive_log(pg_schema)
    slow, fast, reader = connection(), connection(), connection()
    slow.execute("BEGIN")
    slow.execute("INSERT INTO naive (data) VALUES ('slow')")
    fast.execute("INSERT INTO naive (data) VALUES ('fast')")  # autocommit: position 2, committed now
    tail = Tail(lambda after: [r[0] for r in reader.execute("SELECT position FROM naive WHERE position > %s "
                                                             "ORDER BY position", (after,))])
    tail.poll()
    slow.execute("COMMIT")
    tail.poll()
    assert tail.skipped([1, 2]) == [1]
    for each in (slow, fast, reader):
        each.close()


def test_the_serialised_append_makes_the_same_interleaving_safe(pg: Any) -> None:
    slow = pg.begin()
    slow.append([new_event(1)])  # takes position 1 and the log's lock
    fast_done = threading.Event()

    def fast() -> None:
        session = pg.begin()
        session.append([new_event(2)])  # waits for the slow writer's commit
        session.commit()
        fast_done.set()

    thread = threading.Thread(target=fast)
    thread.start()
    tail = Tail(lambda after: [e.position for e in pg.read(after, 100)])
    assert not fast_done.wait(0.2), "the second writer appended while the first held position 1 uncommitted"
    tail.poll()
    assert tail.seen == []
    slow.commit()
    thread.join()
    tail.poll()
    assert tail.seen == [1, 2]


def test_concurrent_writers_never_let_a_tailing_reader_skip(pg: Any) -> None:
    # Writers hold their transaction open for a random moment after appending; readers tail the log meanwhile.
    writers, per_writer = 6, int(os.environ.get("MEDIATOR_PG_WRITES", "60"))
    rng = random.Random(7)
    pauses = [[rng.uniform(0, 0.003) for _ in range(per_writer)] for _ in range(writers)]
    committed: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def writer(index: int) -> None:
        for n, pause in enumerate(pauses[index]):
            session = pg.begin()
            time.sleep(pause / 2)  # the command's own work, concurrent with others'
            last = session.append([new_event(index * 1000 + n)])
            time.sleep(pause / 2)  # between append and commit: the window a sequence-numbered log is unsafe in
            session.commit()
            with lock:
                committed.append(last)

    def reader(tail: Tail) -> None:
        while not done.is_set():
            tail.poll()
        tail.poll()

    tails = [Tail(lambda after: [e.position for e in pg.read(after, 50)]) for _ in range(2)]
    readers = [threading.Thread(target=reader, args=(t,)) for t in tails]
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in readers + threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    for t in readers:
        t.join()
    total = writers * per_writer
    assert sorted(committed) == list(range(1, total + 1))
    for tail in tails:
        assert tail.skipped(committed) == []
        assert tail.seen == list(range(1, total + 1))  # in order, each once


def test_one_runner_holds_a_projection_and_another_takes_it_when_released(pg: Any, pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    other = PostgresStorage(postgres.DSN, schema=pg_schema)  # a session of its own: as another process would be
    try:
        assert pg.acquire("balances")
        assert pg.acquire("balances")  # held: asking again is free
        assert not other.acquire("balances")
        assert other.acquire("inventory")  # locks are per projection
        pg.release_all()
        assert other.acquire("balances")
        assert not pg.acquire("balances")
        other.close()  # a closed (or dead) session frees its locks, once the server has ended that session
        deadline = time.monotonic() + 10
        while not pg.acquire("balances"):  # as a runner's next poll would: a moment later
            assert time.monotonic() < deadline, "the lock of a closed session was never freed"
            time.sleep(0.01)
    finally:
        other.close()


def test_a_runner_whose_lock_connection_broke_takes_its_locks_again(pg: Any, pg_schema: str) -> None:
    import psycopg

    from mediator.readmodels.postgres import lock_key

    pg.lock_recheck = 0.0
    assert pg.acquire("balances")
    key = lock_key(pg_schema, "balances")
    with psycopg.connect(postgres.DSN, autocommit=True) as admin:  # the server ends the lock connection
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s AND objid = %s", ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchall()
    assert ended == [(True,)]
    deadline = time.monotonic() + 10
    while not pg.acquire("balances"):  # noticed on its next check, and taken again on a new connection
        assert time.monotonic() < deadline, "the lock was not taken again"
        time.sleep(0.01)


def test_two_engines_with_runners_apply_each_event_once(pg: Any, pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    second_storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    first, second = make_bank(pg, poll_interval=0.05), make_bank(second_storage, poll_interval=0.05)
    first.engine.start()
    second.engine.start()
    try:
        amounts = list(range(1, 201))
        for amount in amounts:
            (first if amount % 2 else second).mediator.send(Deposit(account=f"a{amount % 3}", amount=amount))
        assert first.engine.wait(pg.head(), timeout=30)
        applied_by = [bool(first.projection.applied), bool(second.projection.applied)]
        assert sorted(first.projection.applied + second.projection.applied) == amounts  # each once, in all
        assert applied_by.count(True) == 1  # by one runner: the one holding the lease
        assert sum(first.balances().values()) == sum(amounts)
    finally:
        first.engine.stop()
        second.engine.stop()
        second_storage.close()


def test_read_your_writes_through_a_process_whose_runner_does_not_hold_the_projection(
        pg: Any, pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    second_storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    holder, other = make_bank(pg), make_bank(second_storage)
    holder.engine.start()
    deadline = time.monotonic() + 10
    while not pg.holds("balances"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    other.engine.start()  # its runner finds the projection taken: the holder's runner applies what it sends
    try:
        for amount in (1, 2, 3):
            other.mediator.send(Deposit(account="a", amount=amount))
            token = last_token()
            # Nothing in this process announces the holder's progress, so the wait must poll for it. It is
            # allowed an hour, as a waiter that only listened for its own runner would take; it gets 30 s.
            answered: list[int] = []

            def ask(token: int | None = token, answered: list[int] = answered) -> None:
                with consistent(token, timeout=3600):
                    answered.append(other.mediator.ask(GetBalance(account="a")))

            waiter = threading.Thread(target=ask, daemon=True)
            waiter.start()
            waiter.join(30)
            assert answered, f"round {amount}: the query waited for a wake-up that never comes"
        assert answered == [6]
        assert not second_storage.holds("balances")
        assert other.projection.applied == []
    finally:
        other.engine.stop()
        holder.engine.stop()
        second_storage.close()


def test_a_worker_killed_mid_batch_is_replaced_and_nothing_is_lost_or_doubled(pg: Any, pg_schema: str) -> None:
    bank = make_bank(pg, Delivery.WORKER)
    amounts = list(range(1, 121))
    for amount in amounts:
        bank.mediator.send(Deposit(account=f"a{amount % 4}", amount=amount))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BANK_POSTGRES": postgres.DSN, "BANK_SCHEMA": pg_schema,
           "BANK_DELIVERY": "worker", "BANK_POLL": "0.05", "BANK_SLOW": "0.01", "BANK_BATCH": "40"}
    workers = [
        subprocess.Popen([sys.executable, "-m", "mediator.readmodels", "--app", "tests.readmodels.bank_app:engine",
                          "worker"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        # Wait until a worker is inside its first batch: it holds the lock, and nothing is committed yet.
        while (holder := postgres.lease_holder(pg_schema, "balances")) is None:
            assert time.monotonic() < deadline, "no worker took the projection"
            time.sleep(0.005)
        time.sleep(0.2)  # 20 of its 40 events applied, uncommitted
        assert pg.checkpoint("balances", 1) < 40
        victim = next(w for w in workers if w.pid == holder)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        while pg.checkpoint("balances", 1) < len(amounts):
            assert time.monotonic() < deadline, "the surviving worker did not take over"
            time.sleep(0.01)
        survivor = next(w for w in workers if w is not victim)
        assert postgres.lease_holder(pg_schema, "balances") == survivor.pid
        assert sum(bank.balances().values()) == sum(amounts)  # unique amounts: a doubled or lost one would show
        assert bank.balances() == {f"a{k}": sum(a for a in amounts if a % 4 == k) for k in range(4)}
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(timeout=20)


def test_stored_events_come_back_as_written(pg: Any) -> None:
    session = pg.begin()
    session.append([NewEvent("x1", "t.a", 2, '{"a": 1}', "k", 12.5, '{"m": "1"}')])
    session.commit()
    assert pg.read(0, 10) == [StoredEvent(1, "x1", "t.a", 2, '{"a": 1}', "k", 12.5, '{"m": "1"}')]


def test_async_query_handlers_read_through_the_async_driver(pg: Any) -> None:
    import asyncio

    engine = ReadModels(pg, event_types())
    engine.add(Balances())
    registry = Registry()
    engine.install(registry)
    registry.handle(Deposit).by(deposit)

    async def get_balance(query: GetBalance, engine: ReadModels) -> int:
        async with await pg.async_connect() as connection:
            cursor = await connection.execute(
                f"SELECT amount FROM {engine.table('balances', 'balance')} WHERE account = %s", (query.account,))
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    registry.handle(GetBalance).by(get_balance)
    mediator = registry.build_async()

    async def main() -> int:
        await mediator.send(Deposit(account="a", amount=3))
        await mediator.send(Deposit(account="a", amount=4))
        with consistent(last_token(), timeout=10):
            return await mediator.ask(GetBalance(account="a"))

    with engine:  # the background runner
        assert asyncio.run(main()) == 7


def test_a_schema_name_that_would_need_quoting_is_refused() -> None:
    from mediator.readmodels.postgres import PostgresStorage

    for bad in ("MixedCase", "has space", "1starts_with_digit", "x" * 64, 'quote"d'):
        with pytest.raises(ValueError, match="lower-case letters"):
            PostgresStorage(postgres.DSN, schema=bad)


def test_a_long_schema_name_still_appends_and_notifies(pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    storage = PostgresStorage(postgres.DSN, schema=(pg_schema + "_" + "x" * 63)[:63])
    try:
        assert storage.wait_for_append(0.01)  # the first call starts listening
        session = storage.begin()
        session.append([new_event(1)])
        session.commit()
        assert storage.wait_for_append(5)
    finally:
        storage.close()
        storage.drop_schema()


def test_an_application_name_in_the_dsn_is_kept(pg: Any) -> None:
    from mediator.readmodels.postgres import connect

    with connect(postgres.DSN + " application_name=orders-api", pg.schema) as connection:
        assert connection.execute("SHOW application_name").fetchone() == ("orders-api",)
    assert pg.read_connection().execute("SHOW application_name").fetchone() == (f"mediator:{os.getpid()}",)


def test_a_runner_takes_no_lease_on_what_it_does_not_run_and_gives_back_a_rebuilds(pg: Any) -> None:
    # A service process's background runner beside worker-delivered projections: holding their leases would
    # keep the workers from them for good.
    bank = make_bank(pg, Delivery.WORKER)
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up(deliveries=(Delivery.BACKGROUND,), leased=True)
    assert not pg.holds("balances")
    bank.engine.catch_up(deliveries=(Delivery.WORKER,))  # what a worker does: the live generation is at the head
    bank.engine.rebuild("balances")  # a rebuild is helped by every runner: it takes the lease for that
    bank.engine.catch_up(deliveries=(Delivery.BACKGROUND,), leased=True)
    assert bank.engine.rebuilding == []  # replayed and swapped in by this runner, under the lease
    assert not pg.holds("balances")  # given back once the rebuild was over


def test_a_dropped_connection_while_applying_is_retried_without_parking_the_event(pg: Any) -> None:
    bank = make_bank(pg, Delivery.BACKGROUND, max_attempts=2, backoff=0.01)
    drops = {"left": 3}  # more than max_attempts: counted as the event's failures, it would be parked
    add = bank.projection.add

    def dropping(session: Any, account: str, amount: int) -> None:
        if amount == 3 and drops["left"]:
            drops["left"] -= 1
            session.handle.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # a restart, a proxy, ...
        add(session, account, amount)

    bank.projection.add = dropping  # type: ignore[method-assign]
    for amount in range(1, 6):
        bank.mediator.send(Deposit(account="a", amount=amount))
    for _drop in range(3):  # each drop fails the batch as the storage's failure, not the event's
        with pytest.raises(StorageError, match="lost its storage at position 3"):
            bank.engine.catch_up(ignore_backoff=True)
    bank.engine.catch_up(ignore_backoff=True)
    assert bank.engine.dead_letters() == []
    assert bank.balances() == {"a": 15}


def test_stop_ends_the_runner_after_its_batch_and_frees_its_leases(pg: Any, pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    session = pg.begin()
    session.append([NewEvent(f"s{n}", "bank.deposited", 1, f'{{"account": "a", "amount": {n}}}', "a", 0.0)
                    for n in range(1, 3001)])
    session.commit()
    bank = make_bank(pg, Delivery.WORKER, batch_size=100)
    bank.projection.pause = 0.002  # 0.2 s a batch: 6 s for the whole log
    bank.engine.start(Delivery.WORKER)
    deadline = time.monotonic() + 10
    while pg.checkpoint("balances", 1) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    bank.engine.stop(timeout=30)
    stopped_at = pg.checkpoint("balances", 1)
    assert stopped_at < 3000  # it did not drain the log first
    other = PostgresStorage(postgres.DSN, schema=pg_schema)
    try:
        assert other.acquire("balances")  # the lease went with the runner
        time.sleep(0.5)
        assert pg.checkpoint("balances", 1) == stopped_at  # and nothing runs any more
    finally:
        other.close()


def test_an_idle_runner_whose_listener_connection_dropped_still_sees_the_next_append(pg: Any, pg_schema: str) -> None:
    import psycopg

    from mediator.readmodels.postgres import PostgresStorage

    bank = make_bank(pg, poll_interval=0.2)
    bank.engine.start()
    writer = PostgresStorage(postgres.DSN, schema=pg_schema)
    try:
        writer_bank = make_bank(writer, Delivery.WORKER)
        writer_bank.mediator.send(Deposit(account="a", amount=1))
        assert bank.engine.wait(writer.head(), timeout=10)
        deadline = time.monotonic() + 10
        with psycopg.connect(postgres.DSN, autocommit=True) as admin:  # the listener's connection is dropped
            while not (ended := admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' "
                    "AND application_name = %s", (f"mediator:{os.getpid()}",)).fetchall()):
                assert time.monotonic() < deadline, "the runner never listened"
                time.sleep(0.01)  # until the idle runner has started listening
        assert ended == [(True,)]
        writer_bank.mediator.send(Deposit(account="a", amount=2))  # its NOTIFY reaches nobody
        assert bank.engine.wait(writer.head(), timeout=10)
        assert bank.balances() == {"a": 3}
    finally:
        bank.engine.stop()
        writer.close()


def _end_this_process_sessions() -> None:
    """What a server restart does to this process: every one of its connections is ended by the server."""
    import psycopg

    with psycopg.connect(postgres.DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                      (f"mediator:{os.getpid()}",))
    time.sleep(0.2)  # the ended sessions' sockets are closed by then


def test_after_the_server_ended_every_connection_each_operation_works_at_the_first_try(pg: Any) -> None:
    bank = make_bank(pg, Delivery.BACKGROUND, retire_after=0)
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up()
    assert pg.wait_for_append(0.01)  # the listener, too
    operations = [
        ("a query", lambda: bank.mediator.ask(GetBalance(account="a")), 1),
        ("a command", lambda: bank.mediator.send(Deposit(account="a", amount=2)), None),
        ("the head", pg.head, 2),
        ("a catch-up", bank.engine.catch_up, 1),
        ("a rebuild's claim", lambda: bank.engine.rebuild("balances"), 2),
        ("a rebuild's finish", bank.engine.finish_rebuilds, None),
        ("a swap", lambda: swap(pg, "balances", 2), None),
        ("a checkpoint", lambda: pg.checkpoint("balances", 2), 2),
    ]
    for label, operation, expected in operations:
        _end_this_process_sessions()
        assert operation() == expected, label
    assert bank.balances() == {"a": 3}


def test_a_runner_helping_with_a_rebuild_also_brings_the_live_generation_up_to_it(pg: Any) -> None:
    # No worker is running (it died, or none was started): the live generation is behind. A service's runner
    # that takes the lease to help with the rebuild must move the live generation too, or the swap waits on
    # it for ever while the lease keeps every worker out.
    bank = make_bank(pg, Delivery.WORKER)
    for amount in (1, 2, 3):
        bank.mediator.send(Deposit(account="a", amount=amount))
    bank.engine.rebuild("balances")
    bank.engine.catch_up(deliveries=(Delivery.BACKGROUND,), leased=True)
    assert bank.engine.rebuilding == []
    assert bank.engine.storage.current_generation("balances") == 2
    assert pg.checkpoint("balances", 1) == pg.head()  # the live generation delivered the events first
    assert not pg.holds("balances")
    assert bank.balances() == {"a": 6}


def test_the_server_side_of_every_connection_gives_up_on_a_dead_peer_in_seconds(pg: Any) -> None:
    # Without these, the server keeps a partitioned worker's session, and its leases, for about two hours.
    connection = pg.read_connection()
    settings = {name: connection.execute(f"SHOW {name}").fetchone()[0] for name in (
        "tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "client_connection_check_interval")}
    assert settings == {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3",
                        "client_connection_check_interval": "2s"}


def test_a_standby_runner_does_not_look_at_every_append(pg: Any, pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    holder = make_bank(pg)
    holder.engine.start()
    deadline = time.monotonic() + 10
    while not pg.holds("balances"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    standby_storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    looks: list[float] = []
    acquire = standby_storage.acquire

    def counted(name: str) -> bool:
        looks.append(time.monotonic())
        return acquire(name)

    standby_storage.acquire = counted  # type: ignore[method-assign]
    standby = make_bank(standby_storage, standby_interval=0.2)
    standby.engine.start()
    try:
        time.sleep(0.3)
        started, before = time.monotonic(), len(looks)
        for amount in range(1, 201):  # 200 appends, each a NOTIFY the standby hears
            holder.mediator.send(Deposit(account="a", amount=amount))
        elapsed = time.monotonic() - started
        # At most one look per standby_interval (and one in flight): far fewer than one per append.
        assert len(looks) - before <= elapsed / 0.2 + 2, (len(looks) - before, elapsed)
        assert not standby_storage.holds("balances")
    finally:
        standby.engine.stop()
        holder.engine.stop()
        standby_storage.close()
