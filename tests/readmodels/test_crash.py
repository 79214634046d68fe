"""Crash safety, on SQLite, PostgreSQL, and Redis read models over a PostgreSQL log: a process sending commands and
projecting them is SIGKILLed at random.

Each kill lands once the child has acknowledged a command in that round, a
random few milliseconds later. After every kill: each acknowledged (committed)
command's event is in the log; no event of a failed command is (every seventh
command records its event, then fails); the read model, resumed from its
checkpoint, equals the sum of the log's events (unique amounts, so nothing
applied twice or lost) and a full rebuild of it from position 0. ``MEDIATOR_CRASH_ROUNDS`` sets how many kills (50 by
default, and in CI).
"""

import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mediator.readmodels import RoutedStorage, Storage
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import settle
from tests import postgres, redis_server
from tests.crashing import wait_for_progress

from .bank import Deposited, event_types, make_bank

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("MEDIATOR_CRASH_ROUNDS", "50"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "postgres+redis"])
def test_sigkill_at_random_points_loses_nothing_and_applies_nothing_twice(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ack = tmp_path / "acks.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    make_storage: Callable[[], Storage]
    if backend == "sqlite":
        db = tmp_path / "bank.db"
        env["BANK_DB"] = str(db)
        make_storage = functools.partial(SqliteStorage, db)
    else:
        schema = request.getfixturevalue("pg_schema")
        from mediator.readmodels.postgres import PostgresStorage

        env.update(BANK_POSTGRES=postgres.DSN, BANK_SCHEMA=schema)
        make_storage = functools.partial(PostgresStorage, postgres.DSN, schema=schema)
        if backend == "postgres+redis":  # the balances read model in Redis, its checkpoint in Redis's transactions
            redis_server.require()
            from mediator.readmodels.redis import RedisReadStore

            prefix = redis_server.new_prefix()
            env.update(BANK_REDIS=redis_server.URL, BANK_REDIS_PREFIX=prefix)
            request.addfinalizer(lambda: _empty_redis(prefix))

            def make_storage() -> Storage:
                return RoutedStorage(PostgresStorage(postgres.DSN, schema=schema),
                                     {"balances": RedisReadStore(redis_server.URL, prefix=prefix)})
    make_storage().close()
    rng = random.Random(1234)
    types = event_types()
    seen: set[int] = set()
    expected: Counter[str] = Counter()
    checked_up_to = 0
    for _ in range(ROUNDS):
        acked_before = ack.stat().st_size if ack.exists() else 0
        child = subprocess.Popen([sys.executable, "-m", "tests.readmodels.bank_app", "crash-loop", str(ack)],
                                 env=env, cwd=ROOT)
        wait_for_progress(ack, acked_before, [child])
        time.sleep(rng.uniform(0.0, 0.05))  # inside the command and projection loops, a different point each time
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        if backend != "sqlite":
            # A COMMIT the child sent just before it died is carried out by its session, which PostgreSQL ends
            # only once it notices: wait for that, or the log read below may miss a command that commits after
            # it, and the read model, applied after, would hold one deposit more than the log read.
            postgres.wait_until_gone([child.pid])

        storage = make_storage()
        for stored in storage.events(after=checked_up_to):  # committed events never change: check the new ones
            assert stored.position == checked_up_to + 1, "a gap in the log"
            checked_up_to = stored.position
            deposit: Deposited = types.decode(stored.type_name, stored.version, stored.data)
            assert deposit.amount > 0, "an event of a failed command was stored"
            assert deposit.amount not in seen, "an event was stored twice"
            seen.add(deposit.amount)
            expected[deposit.account] += deposit.amount
        acknowledged = {int(line) for line in ack.read_text().split()} if ack.exists() else set()
        assert acknowledged <= seen, "a committed command's event is missing"

        bank = make_bank(storage, retire_after=0)
        settle(bank.engine)  # the restart: resume from the committed checkpoint
        resumed = bank.balances()
        assert resumed == dict(expected), "the read model differs from the sum of the log's events"
        bank.engine.rebuild("balances")
        bank.engine.finish_rebuilds()
        assert bank.balances() == resumed, "the resumed read model differs from a full rebuild of the log"
        storage.close()
    assert len(seen) > ROUNDS  # the loop did real work between kills


def _empty_redis(prefix: str) -> None:
    from mediator.readmodels.redis import RedisReadStore

    store = RedisReadStore(redis_server.URL, prefix=prefix)
    store.drop_all()
    store.close()
