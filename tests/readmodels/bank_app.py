"""The bank wired from environment variables, for tests that run it in other processes.

``BANK_DB`` is the SQLite database file, or ``BANK_POSTGRES`` a PostgreSQL DSN with
``BANK_SCHEMA`` its schema; ``BANK_REDIS`` (a redis-py URL) with ``BANK_REDIS_PREFIX`` keeps the balances read
model in Redis instead (a RoutedStorage over the log); ``BANK_SLOW`` makes the projection sleep that many seconds
per event (to kill a worker mid-batch); ``BANK_PROJECTION`` which version of the projection (see
:data:`PROJECTIONS`); ``BANK_DELIVERY`` the balances projection's delivery
(``background`` by default). ``python -m mediator.readmodels --app tests.readmodels.bank_app:engine``
operates it; ``python -m tests.readmodels.bank_app writer N`` sends N deposits;
``python -m tests.readmodels.bank_app crash-loop ACK_FILE`` runs commands and projections until killed;
``python -m tests.readmodels.bank_app worker`` applies the projections until SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from mediator.readmodels import Delivery, ReadModels, RoutedStorage, Storage
from mediator.readmodels.sqlite import SqliteStorage

from .bank import (
    Balances,
    Bank,
    BrokenCents,
    CheckedBalances,
    CheckedCents,
    Deposit,
    PartitionedBalances,
    make_bank,
)

PROJECTIONS: dict[str, type[Balances]] = {
    "balances": Balances, "checked": CheckedBalances, "checked-cents": CheckedCents, "broken-cents": BrokenCents,
    "partitioned": PartitionedBalances}
"""``BANK_PROJECTION``: which version of the balances projection the bank runs."""


def storage() -> Storage:
    log: Storage
    if "BANK_POSTGRES" in os.environ:
        from mediator.readmodels.postgres import PostgresStorage

        log = PostgresStorage(os.environ["BANK_POSTGRES"], schema=os.environ["BANK_SCHEMA"])
    else:
        log = SqliteStorage(os.environ["BANK_DB"])
    if "BANK_REDIS" not in os.environ:
        return log
    from mediator.readmodels.redis import RedisReadStore

    return RoutedStorage(log, {"balances": RedisReadStore(os.environ["BANK_REDIS"],
                                                          prefix=os.environ["BANK_REDIS_PREFIX"])})


def bank() -> Bank:
    delivery = Delivery(os.environ.get("BANK_DELIVERY", "background"))
    # Nothing else reads these test databases while a rebuild retires a generation: no grace period.
    poll = float(os.environ.get("BANK_POLL", "0.2"))
    projection = PROJECTIONS[os.environ.get("BANK_PROJECTION", "balances")]
    app = make_bank(storage(), delivery, max_attempts=2, backoff=0.01, retire_after=0, poll_interval=poll,
                    batch_size=int(os.environ.get("BANK_BATCH", "500")), projection_class=projection)
    slow = float(os.environ.get("BANK_SLOW", "0"))
    if slow:
        app.projection.pause = slow
    return app


def engine() -> ReadModels:
    return bank().engine


def writer(count: int) -> None:
    """Send ``count`` deposits of 1 to account ``writer-<pid>``, once the file ``BANK_GO`` (if set) exists."""
    app = bank()
    go = os.environ.get("BANK_GO")
    print("ready", flush=True)
    while go and not os.path.exists(go):
        time.sleep(0.001)
    started = time.time()
    for _ in range(count):
        app.mediator.send(Deposit(account=f"writer-{os.getpid()}", amount=1))
    print(f"span {started} {time.time()}", flush=True)


def crash_loop(ack_path: str) -> None:
    """Send deposits with unique amounts forever, projecting in the background; ack each committed one.

    Every seventh command fails after recording its event, which must then never be stored.
    """
    app = bank()
    app.engine.start()
    head = app.storage.head()
    sequence = head * 10 + 1_000_000 * (1 + os.getpid() % 1000)
    ack = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while True:
        sequence += 1
        account = f"acct-{sequence % 5}"
        if sequence % 7 == 0:
            with contextlib.suppress(ValueError):  # the handler records its event, then refuses it
                app.mediator.send(Deposit(account=account, amount=-sequence))
            continue
        app.mediator.send(Deposit(account=account, amount=sequence))
        os.write(ack, f"{sequence}\n".encode())


def load(out_path: str) -> None:
    """Send deposits of unique amounts until SIGTERM, projecting in the background; log each outcome.

    Each line of ``out_path`` is ``ok AMOUNT`` or ``err AMOUNT ERROR-TYPE: MESSAGE`` (an error at commit
    leaves it unknown whether the command committed).
    """
    import signal

    app = bank()
    app.engine.start()
    stop = False

    def stopping(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, stopping)
    with open(out_path, "a", buffering=1) as out:
        amount = 0
        while not stop:
            amount += 1
            try:
                app.mediator.send(Deposit(account=f"acct-{amount % 5}", amount=amount))
            except Exception as exc:
                out.write(f"err {amount} {type(exc).__name__}: {' '.join(str(exc).split())}\n")
                time.sleep(0.05)
                continue
            out.write(f"ok {amount}\n")
            time.sleep(0.002)
    app.engine.stop()


def worker() -> None:
    """Apply the projections in the background until SIGTERM (say ``ready`` once running)."""
    import signal

    app = bank()
    stopped = False

    def stopping(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, stopping)
    app.engine.start(Delivery(os.environ.get("BANK_DELIVERY", "background")))
    print("ready", flush=True)
    while not stopped:
        time.sleep(0.01)
    app.engine.stop()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker()
    elif sys.argv[1] == "writer":
        writer(int(sys.argv[2]))
    elif sys.argv[1] == "crash-loop":
        crash_loop(sys.argv[2])
    elif sys.argv[1] == "load":
        load(sys.argv[2])
