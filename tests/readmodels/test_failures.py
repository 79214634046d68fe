"""Failures told apart: a poison event parks at once while other keys go on, an outage parks nothing and heals by
itself, parked events heal once fixed, and nothing waits behind a failure that is not its key's."""

import threading
import time

import pytest
from structlog.testing import capture_logs

from mediator.readmodels import BLOCKED, PARKED, Storage
from mediator.testing import assert_settled, settle

from .bank import Deposit, make_bank


class Clock:
    """``time.time`` and ``time.monotonic`` under the test's control (the engine reads both through ``time``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000_000.0
        monkeypatch.setattr(time, "time", lambda: self.now)
        monkeypatch.setattr(time, "monotonic", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def letters(bank: object) -> list[tuple[int, str, int]]:
    return [(d.position, d.status, d.attempts) for d in bank.engine.dead_letters()]  # type: ignore[attr-defined]


def test_a_poison_event_parks_at_once_and_the_other_keys_apply_in_the_same_batch(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.add("bad")
    for account, amount in [("good", 1), ("bad", 10), ("good", 2), ("bad", 20), ("other", 3)]:
        bank.mediator.send(Deposit(account=account, amount=amount))
    assert bank.engine.catch_up() == 5  # one pass: nothing waited for a retry of the poison event
    assert bank.balances() == {"good": 3, "other": 3}
    assert bank.projection.attempts.count("bad") == 1  # tried once; its key's next event waited, untried
    (parked, blocked) = bank.engine.dead_letters("balances")
    assert (parked.position, parked.status, parked.attempts) == (2, PARKED, 1)
    assert "ValueError: cannot project account bad" in parked.reason
    assert parked.retry_at is not None  # the runner tries it again by itself
    assert (blocked.position, blocked.status, blocked.retry_at) == (4, BLOCKED, None)
    assert "waits behind an earlier parked event with key 'bad'" in blocked.reason


def test_a_parked_event_heals_by_itself_once_its_cause_is_fixed(storage: Storage,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    bank = make_bank(storage, backoff=1)
    bank.projection.poison.add("bad")
    for account, amount in [("bad", 10), ("good", 1), ("bad", 20)]:
        bank.mediator.send(Deposit(account=account, amount=amount))
    bank.engine.catch_up()
    assert letters(bank) == [(1, PARKED, 1), (3, BLOCKED, 0)]
    bank.projection.poison.clear()  # the bug is fixed (say, the code is redeployed)
    bank.engine.catch_up()
    assert letters(bank) == [(1, PARKED, 1), (3, BLOCKED, 0)]  # not due yet
    clock.advance(1)
    bank.engine.catch_up()
    assert bank.engine.dead_letters() == []
    assert bank.projection.applied == [1, 10, 20]  # the parked key in log order, once due
    assert bank.balances() == {"bad": 30, "good": 1}


def test_a_parked_event_is_retried_quickly_then_slowly_then_left_to_an_operator(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    bank = make_bank(storage, max_attempts=3, backoff=1, heal_interval=10, heal_attempts=2)
    bank.projection.poison.add("bad")
    bank.mediator.send(Deposit(account="bad", amount=1))
    bank.mediator.send(Deposit(account="good", amount=1))
    bank.engine.catch_up()
    schedule = []
    for _ in range(6):
        (letter,) = bank.engine.dead_letters()
        schedule.append((letter.attempts, None if letter.retry_at is None else letter.retry_at - clock.now))
        if letter.retry_at is None:
            break
        clock.advance(letter.retry_at - clock.now)
        bank.engine.catch_up()
    # quick: 1 s, then 2 s; slow: 10 s, then 20 s; then nothing more until an operator retries or skips it
    assert schedule == [(1, 1.0), (2, 2.0), (3, 10.0), (4, 20.0), (5, None)]
    assert bank.projection.attempts.count("bad") == 5
    bank.projection.poison.clear()
    assert bank.engine.retry("balances", 1) == 1
    assert bank.engine.dead_letters() == []


def test_a_store_outage_stalls_the_projection_parks_nothing_and_heals_by_itself(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    bank = make_bank(storage, backoff=0.5, max_backoff=2)
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up()
    bank.projection.down = True
    for account in ("a", "b", "c", "d"):
        bank.mediator.send(Deposit(account=account, amount=1))
    with capture_logs() as logs:
        for _ in range(5):
            bank.engine.catch_up()
            clock.advance(2)
    assert bank.engine.dead_letters() == []  # an outage is nobody's event's fault
    warnings = [e["event"] for e in logs if e["log_level"] == "warning"]
    assert warnings[0].startswith("projection stalled")
    (row,) = bank.engine.lag()
    assert (row.health, row.positions_behind, row.parked) == ("stalled", 4, 0)
    assert "ConnectionError: the balances store is unreachable" in (row.error or "")
    attempts_during_outage = len(bank.projection.attempts)
    assert attempts_during_outage < 15  # backed off, not hammering the store
    bank.projection.down = False
    clock.advance(2)
    bank.engine.catch_up()
    assert bank.balances() == {"a": 2, "b": 1, "c": 1, "d": 1}
    assert bank.engine.dead_letters() == []
    (row,) = bank.engine.lag()
    assert (row.health, row.positions_behind) == ("ok", 0)


def test_a_real_outage_of_seconds_under_load_parks_nothing(storage: Storage) -> None:
    bank = make_bank(storage, max_backoff=0.2)
    seen_letters: list[int] = []
    with bank.engine:  # the runner thread, woken by every commit
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen_letters.append(len(bank.engine.dead_letters()))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            bank.projection.down = True
            deadline = time.monotonic() + 2.5
            n = 0
            while time.monotonic() < deadline:  # commands go on during the outage
                bank.mediator.send(Deposit(account=f"acc-{n % 7}", amount=1))
                n += 1
                time.sleep(0.01)
            bank.projection.down = False
            assert bank.engine.wait(storage.head(), timeout=10)
        finally:
            stop.set()
            watcher.join()
    assert n > 50
    assert max(seen_letters) <= 1  # at most the first failure, before a second showed it was the store
    assert bank.engine.dead_letters() == []
    assert sum(bank.balances().values()) == n


def test_a_lone_failing_event_is_held_not_parked_until_another_key_tells(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.add("bad")
    bank.mediator.send(Deposit(account="bad", amount=1))
    bank.engine.catch_up(ignore_backoff=True)
    assert bank.engine.dead_letters() == []
    (row,) = bank.engine.lag()
    assert (row.health, row.positions_behind, row.checkpoint) == ("holding", 1, 0)
    bank.mediator.send(Deposit(account="bad", amount=2))  # the same key tells nothing
    bank.engine.catch_up(ignore_backoff=True)
    assert bank.engine.dead_letters() == []
    bank.mediator.send(Deposit(account="good", amount=3))  # another key applies: the failure was the event's
    bank.engine.catch_up()
    assert letters(bank) == [(1, PARKED, 3), (2, BLOCKED, 0)]  # its third try: the holds counted
    assert bank.balances() == {"good": 3}
    assert bank.engine.lag()[0].health == "parked"


def test_a_held_event_whose_failure_was_an_outage_applies_once_the_store_is_back(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.down = True
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up()
    bank.projection.down = False
    bank.engine.catch_up(ignore_backoff=True)
    assert (bank.engine.dead_letters(), bank.balances()) == ([], {"a": 1})
    assert bank.engine.lag()[0].health == "ok"


def test_new_events_end_the_wait_of_a_held_event_at_once(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    bank = make_bank(storage, backoff=100, max_backoff=100)
    bank.projection.poison.add("bad")
    bank.mediator.send(Deposit(account="bad", amount=1))
    bank.engine.catch_up()
    assert bank.engine.lag()[0].health == "holding"
    bank.mediator.send(Deposit(account="good", amount=1))
    clock.advance(0.001)  # far from the held event's backoff: the new event is judged now, not in 100 s
    bank.engine.catch_up()
    assert bank.balances() == {"good": 1}
    assert letters(bank) == [(1, PARKED, 2)]


def test_poison_events_failing_alike_in_a_row_are_parked_once_the_stall_lasts_too_long(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    bank = make_bank(storage, stall_limit=30, max_backoff=1)
    bank.projection.poison.update({"x", "y"})
    for account in ("x", "y", "good"):
        bank.mediator.send(Deposit(account=account, amount=1))
    bank.engine.catch_up()
    assert bank.engine.lag()[0].health == "stalled"  # two keys failing alike: it looks like an outage
    assert bank.engine.dead_letters() == []
    clock.advance(31)
    for _ in range(3):
        bank.engine.catch_up()
        clock.advance(1)
    assert [(d.position, d.status) for d in bank.engine.dead_letters()] == [(1, PARKED), (2, PARKED)]
    assert bank.balances() == {"good": 1}


def test_retry_all_applies_every_parked_key_and_says_what_stays(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.update({"x", "y"})
    for account in ("x", "good", "y", "good", "x"):
        bank.mediator.send(Deposit(account=account, amount=1))
    bank.engine.catch_up()
    assert [(d.position, d.status) for d in bank.engine.dead_letters()] == [(1, PARKED), (3, PARKED), (5, BLOCKED)]
    bank.projection.poison.discard("x")
    assert bank.engine.retry_all() == {"balances": (2, 1)}
    assert [(d.position, d.status) for d in bank.engine.dead_letters()] == [(3, PARKED)]
    bank.projection.poison.clear()
    assert bank.engine.retry_all("balances") == {"balances": (1, 0)}
    assert bank.balances() == {"x": 2, "y": 1, "good": 2}


def test_a_blocked_letter_cannot_jump_the_queue(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.add("a")
    for account, amount in [("a", 1), ("b", 1), ("a", 10)]:
        bank.mediator.send(Deposit(account=account, amount=amount))
    bank.engine.catch_up()
    bank.projection.poison.clear()
    with pytest.raises(ValueError, match="waits behind position 1"):
        bank.engine.retry("balances", 3)
    assert bank.engine.retry("balances", 1) == 2
    assert bank.balances() == {"a": 11, "b": 1}


def test_retrying_while_still_broken_keeps_the_order_and_counts_the_attempt(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.add("bad")
    for account, amount in [("bad", 1), ("good", 1), ("bad", 2), ("bad", 3)]:
        bank.mediator.send(Deposit(account=account, amount=amount))
    bank.engine.catch_up()
    assert bank.engine.retry("balances", 1) == 0
    assert letters(bank) == [(1, PARKED, 2), (3, BLOCKED, 0), (4, BLOCKED, 0)]


def test_skipping_a_parked_event_releases_the_ones_behind_it(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.add("bad")
    for account, amount in [("bad", 100), ("good", 1), ("bad", 5)]:
        bank.mediator.send(Deposit(account=account, amount=amount))
    bank.engine.catch_up()
    bank.projection.poison.clear()
    assert bank.engine.skip("balances", 1) == 1
    assert bank.balances() == {"bad": 5, "good": 1}
    with pytest.raises(LookupError, match="No dead letter of 'balances' at position 1"):
        bank.engine.skip("balances", 1)


def test_each_attempt_runs_the_projection_once(storage: Storage) -> None:
    bank = make_bank(storage, max_attempts=3)
    bank.projection.poison.add("a")
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.mediator.send(Deposit(account="b", amount=1))
    bank.engine.catch_up()
    for _ in range(2):
        bank.engine.catch_up(ignore_backoff=True)  # a quick retry, without waiting for it to be due
    assert bank.projection.attempts == ["a", "b", "a", "a"]
    assert letters(bank) == [(1, PARKED, 3)]


def test_assert_settled_names_what_is_behind_and_what_is_parked(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.projection.poison.add("bad")
    bank.mediator.send(Deposit(account="bad", amount=1))
    bank.mediator.send(Deposit(account="good", amount=1))
    with pytest.raises(AssertionError, match="balances g1 is 2 behind"):
        assert_settled(bank.engine)
    settle(bank.engine)
    with pytest.raises(AssertionError, match=r"balances parked position 1 \(parked\): ValueError: cannot project"):
        assert_settled(bank.engine)
    bank.engine.skip("balances", 1)
    assert_settled(bank.engine)
