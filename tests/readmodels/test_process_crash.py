"""The checkout process manager and its payment timeouts through SIGKILLs: two processes open and pay orders and
run the process manager and the due timeouts, and are killed at random points.

After every kill: each acknowledged command's event is in the log; each step ran at most once (one reservation
per order, at most one end) and every instance's state equals a replay of the events its checkpoint passed. At the
end, with every timeout due: each order ended exactly once, shipped (paid, its timeout cancelled in the same step)
or cancelled (its timeout fired once), never both; nothing is left running, parked or scheduled.
``MEDIATOR_CRASH_ROUNDS`` sets how many rounds of kills (50 by default, and in CI).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mediator.readmodels import ReadModels, Storage
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import Clock, settle
from tests import postgres
from tests.crashing import wait_for_progress

from .checkout_process import Opened, Progress, fast_clock, wire

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("MEDIATOR_CRASH_ROUNDS", "50"))


def replayed(names: list[str], amount: int, order_id: str, shipped: bool) -> Progress | None:
    """What the checkout's state is after the events ``names`` of one order (as the process manager reacts)."""
    state: Progress | None = None
    for name in names:
        if name == "opened":
            state = Progress(stage="awaiting payment", amount=amount, timeout=f"payment-timeout:{order_id}")
        elif name == "paid" and state is not None and state.stage == "awaiting payment" and shipped:
            state = Progress(stage="shipping", amount=state.amount, timeout=state.timeout)
        elif name in ("shipped", "cancelled"):
            state = None
    return state


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_leaves_every_step_and_timeout_taking_effect_once(backend: str, tmp_path: Path,
                                                                 request: pytest.FixtureRequest) -> None:
    ack = tmp_path / "acks.txt"
    epoch = time.time()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CHECKOUT_EPOCH": repr(epoch)}
    make_storage: Callable[[], Storage]
    if backend == "sqlite":
        db = tmp_path / "checkout.db"
        env["BANK_DB"] = str(db)
        make_storage = functools.partial(SqliteStorage, db)
    else:
        schema = request.getfixturevalue("pg_schema")
        from mediator.readmodels.postgres import PostgresStorage

        env.update(BANK_POSTGRES=postgres.DSN, BANK_SCHEMA=schema)
        make_storage = functools.partial(PostgresStorage, postgres.DSN, schema=schema)
    storage = make_storage()
    engine, _mediator, _shop, _checkout = wire(storage)  # the schema made before the children start
    rng = random.Random(4321)
    for _ in range(ROUNDS):
        acked_before = ack.stat().st_size if ack.exists() else 0
        children = [subprocess.Popen([sys.executable, "-m", "tests.readmodels.checkout_process", "crash-loop",
                                      str(ack)], env=env, cwd=ROOT) for _ in range(2)]
        wait_for_progress(ack, acked_before, children)
        time.sleep(rng.uniform(0.0, 0.3))  # in the commands, steps and timeouts, a different point each time
        for child in children:
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        if backend == "postgres":  # their transactions, and the row locks those hold, end with their sessions
            postgres.wait_until_gone([child.pid for child in children])
        _check_after_a_kill(engine, storage, ack)
    # Every timeout due (the clock a day on), every step taken: each order ended once.
    clock = Clock(fast_clock(epoch) + 86_400)
    final, _m, _s, _c = wire(storage, clock=clock)
    settle(final)  # the steps the children did not take schedule their timeouts now: a day on, those fire
    clock.advance(days=1)
    settle(final)
    orders = _orders(final, storage)
    assert len(orders) > ROUNDS  # the loops did real work between kills
    for order_id, (names, _amount) in orders.items():
        assert names[0] == "opened"
        assert names.count("reserved") == 1, (order_id, names)  # the opening step ran once
        ends = [name for name in names if name in ("shipped", "cancelled")]
        assert len(ends) == 1, (order_id, names)  # ended once: never shipped and timed out both
        if ends == ["shipped"]:
            assert names.index("paid") < names.index("shipped")
        assert final.processes.instance("checkout", order_id) is None
    (status,) = final.processes.status()
    assert (status.instances, status.parked, status.blocked, status.behind) == (0, 0, 0, 0)
    assert storage.scheduled() == []
    final.storage.close()


def _orders(engine: ReadModels, storage: Storage) -> dict[str, tuple[list[str], int]]:
    """Each order's events by name, in log order, with its amount."""
    found: dict[str, tuple[list[str], int]] = {}
    for stored in storage.events():
        assert stored.key is not None
        names, _amount = found.setdefault(stored.key, ([], 0))
        names.append(stored.type_name.removeprefix("checkout."))
        if stored.type_name == "checkout.opened":
            opened: Opened = engine.types.decode(stored.type_name, stored.version, stored.data)
            found[stored.key] = (names, opened.amount)
    return found


def _check_after_a_kill(engine: ReadModels, storage: Storage, ack: Path) -> None:
    orders = _orders(engine, storage)
    for line in ack.read_text().splitlines() if ack.exists() else ():
        what, order_id = line.split()
        assert ("opened" if what == "opened" else "paid") in orders[order_id][0], f"acknowledged {line}, not stored"
    (status,) = engine.processes.status()
    assert status.parked == 0, status.letters
    checkpoint = status.position
    for stored_key, (names, _amount) in orders.items():
        assert names.count("reserved") <= 1, (stored_key, names)
        assert names.count("shipped") + names.count("cancelled") <= 1, (stored_key, names)
    seen: dict[str, list[str]] = {}
    for stored in storage.events():
        if stored.position > checkpoint:
            break
        assert stored.key is not None
        seen.setdefault(stored.key, []).append(stored.type_name.removeprefix("checkout."))
    for order_id, names in seen.items():
        all_names, amount = orders[order_id]
        expected = replayed(names, amount, order_id, shipped="shipped" in all_names)
        assert engine.processes.instance("checkout", order_id) == expected, (order_id, names)
