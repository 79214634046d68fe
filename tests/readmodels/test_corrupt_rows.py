"""Rows in the log that no code of ours wrote are parked on every backend, never fatal, never retried for ever:
the runner stays up, the other events apply, and ``status`` keeps working."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from mediator.readmodels import PARKED, NewEvent, Storage, StoredEvent
from mediator.readmodels.__main__ import status
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage

from .bank import Deposit, make_bank

DEEP = "[" * 100_000 + "]" * 100_000
ROWS = {  # type name, version, data: each a way a row can be wrong
    "malformed JSON": ("bank.deposited", 1, '{"account": "m1", "amount": '),
    "an unknown type": ("bank.from-the-future", 1, '{"account": "m2", "amount": 1}'),
    "a JSON list": ("bank.deposited", 1, '["m3", 1]'),
    "deep nesting": ("bank.deposited", 1, DEEP),
    "a huge number": ("bank.deposited", 1, '{"account": "m5", "amount": ' + "9" * 400 + "}"),
    "a field of the wrong type": ("bank.deposited", 1, '{"account": "m6", "amount": "lots"}'),
    "a newer version": ("bank.deposited", 7, '{"account": "m7", "amount": 1}'),
}


def crafted(storage: Storage) -> list[str]:
    """Append the rows every backend can hold, and the ones only some can; return what each row is."""
    what = list(ROWS)
    rows = [NewEvent(f"bad-{n}", type_name, version, data, f"k{n}", time.time())
            for n, (type_name, version, data) in enumerate(ROWS.values())]
    session = storage.begin()
    session.append(rows)
    session.commit()
    if isinstance(storage, SqliteStorage):  # what only a hand-written row holds: text where a number belongs,
        # and bytes that are not UTF-8
        connection = sqlite3.connect(storage.write_path)
        with connection:
            connection.execute(
                "INSERT INTO events (event_id, type_name, version, data, key, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                ("bad-text-version", "bank.deposited", "one", '{"account": "t1", "amount": 1}', "t1", time.time()))
            connection.execute(
                "INSERT INTO events (event_id, type_name, version, data, key, recorded_at) "
                "VALUES (?, ?, ?, CAST(? AS TEXT), ?, ?)",
                ("bad-utf8-data", "bank.deposited", 1, b'{"account": "\xff\xfe", "amount": 1}', "t2", time.time()))
            connection.execute(
                "INSERT INTO events (event_id, type_name, version, data, key, recorded_at) "
                "VALUES (?, CAST(? AS TEXT), ?, ?, ?, ?)",
                ("bad-utf8-type", b"bank.\xc3\x28", 1, '{"account": "t3", "amount": 1}', "t3", time.time()))
        connection.close()
        what += ["a text version", "invalid UTF-8 in data", "invalid UTF-8 in the type name"]
    if isinstance(storage, MemoryStorage):  # the memory log takes any Python value
        head = storage.head()
        storage._state.log.append(StoredEvent(head + 1, "bad-text-version", "bank.deposited", "one",  # type: ignore[arg-type]
                                              '{"account": "t1", "amount": 1}', "t1", time.time()))
        what += ["a text version"]
    return what


@pytest.fixture
def quiet() -> Iterator[None]:
    with capture_logs():
        yield


def test_every_kind_of_corrupt_row_is_parked_and_the_good_events_apply(storage: Storage, quiet: None) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="before", amount=1))
    what = crafted(storage)
    bank.mediator.send(Deposit(account="after", amount=2))
    bank.engine.catch_up()
    letters = bank.engine.dead_letters()
    assert len(letters) == len(what), [(d.position, d.reason) for d in letters]
    assert {d.status for d in letters} == {PARKED}
    assert all(d.retry_at is not None for d in letters)  # retried on the slow schedule: a deploy may heal them
    assert bank.balances() == {"before": 1, "after": 2}
    assert "parked" in status(bank.engine)
    (row,) = bank.engine.lag()
    assert row.parked == len(what)


def test_the_runner_stays_up_through_corrupt_rows_and_keeps_applying(storage: Storage) -> None:
    bank = make_bank(storage)
    crafted(storage)
    with capture_logs() as logs, bank.engine:
        bank.mediator.send(Deposit(account="after", amount=2))
        deadline = time.monotonic() + 10
        while bank.balances().get("after") != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bank.engine._runner.alive
        bank.mediator.send(Deposit(account="later", amount=3))
        while bank.balances().get("later") != 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert bank.balances() == {"after": 2, "later": 3}
    assert not [e for e in logs if e["event"] == "projection runner failed, retrying"]
    assert status(bank.engine).startswith("head of the log")
