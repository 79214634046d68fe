"""Read-your-writes never answers stale data as fresh: a token is reached only when every event up to it is
applied, and a parked or blocked event holds it back, at once rather than after the timeout."""

import time
from typing import Any

import pytest

from mediator.readmodels import ConsistencyTimeoutError, Storage, TokenBeyondHeadError, consistent, last_token

from .bank import Deposit, GetBalance, make_bank


def poisoned(storage: Storage, **options: Any) -> tuple[Any, int]:
    """A bank whose deposit to "bad" is parked (confirmed by one to "good"); return it and that write's token.

    With one quick try (``max_attempts=1``) the parked event's next retry is a minute away, past any wait here.
    """
    bank = make_bank(storage, **{"max_attempts": 1, **options})
    bank.projection.poison.add("bad")
    bank.mediator.send(Deposit(account="bad", amount=10))
    token = last_token()
    assert token is not None
    bank.mediator.send(Deposit(account="good", amount=1))
    bank.engine.catch_up()
    assert [d.position for d in bank.engine.dead_letters()] == [token]
    return bank, token


def test_a_query_whose_write_is_parked_fails_at_once_naming_the_parked_event(storage: Storage) -> None:
    bank, token = poisoned(storage)
    started = time.monotonic()
    with pytest.raises(ConsistencyTimeoutError) as failure, consistent(token, timeout=5):
        bank.mediator.ask(GetBalance(account="bad"))
    assert time.monotonic() - started < 1  # not the 5 s timeout: waiting cannot help
    error = failure.value
    assert error.behind == {"balances": token - 1}
    assert error.parked["balances"].position == token
    assert "parked event at position 1 (key 'bad'): ValueError: cannot project account bad" in str(error)


def test_a_query_whose_write_is_parked_answers_stale_when_it_may(storage: Storage) -> None:
    bank, token = poisoned(storage)
    with consistent(token, timeout=5, stale_ok=True) as wanted:
        assert bank.mediator.ask(GetBalance(account="bad")) == 0
    assert wanted.stale


def test_a_write_blocked_behind_a_parked_event_of_its_key_is_not_reached(storage: Storage) -> None:
    bank, _token = poisoned(storage)
    bank.projection.poison.clear()  # the projection could apply the next one, but its key waits behind the first
    bank.mediator.send(Deposit(account="bad", amount=5))
    blocked = last_token()
    bank.engine.catch_up()
    assert [d.status for d in bank.engine.dead_letters()] == ["parked", "blocked"]
    with consistent(blocked, timeout=0.2, stale_ok=True) as wanted:
        assert bank.mediator.ask(GetBalance(account="bad")) == 0
    assert wanted.stale


def test_any_token_past_a_parked_event_is_not_reached_until_it_is_applied(storage: Storage) -> None:
    bank, _token = poisoned(storage)
    bank.mediator.send(Deposit(account="other", amount=2))
    later = last_token()
    bank.engine.catch_up()
    # Its own write is applied, but the read model misses an earlier one: it is not the state at this token.
    with consistent(later, timeout=0.2, stale_ok=True) as wanted:
        assert bank.mediator.ask(GetBalance(account="other")) == 2
    assert wanted.stale
    bank.projection.poison.clear()
    bank.engine.retry_all()
    with consistent(later, timeout=1) as wanted:
        assert bank.mediator.ask(GetBalance(account="bad")) == 10
    assert not wanted.stale


def test_a_token_waits_through_a_quick_retry_that_heals_in_time(storage: Storage) -> None:
    bank, token = poisoned(storage, max_attempts=5)
    bank.projection.poison.clear()
    # the runner retries the parked event within ~50 ms, well inside the wait
    with bank.engine, consistent(token, timeout=5) as wanted:
        assert bank.mediator.ask(GetBalance(account="bad")) == 10
    assert not wanted.stale


def test_lag_and_wait_count_a_parked_event_as_not_applied(storage: Storage) -> None:
    bank, token = poisoned(storage)
    (row,) = bank.engine.lag()
    assert (row.checkpoint, row.applied, row.positions_behind, row.parked, row.health) == (2, 0, 2, 1, "parked")
    assert row.seconds_behind >= 0
    assert not bank.engine.wait(token, timeout=0.1)
    assert storage.applied("balances", 1) == 0


def test_a_token_beyond_the_last_write_is_refused_at_once_not_waited_for(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up()
    with consistent(1, timeout=5):
        assert bank.mediator.ask(GetBalance(account="a")) == 1  # reached: the head is never read
    started = time.monotonic()
    with pytest.raises(TokenBeyondHeadError) as refused, consistent(2, timeout=5, stale_ok=True):
        bank.mediator.ask(GetBalance(account="a"))
    assert time.monotonic() - started < 1
    assert (refused.value.token, refused.value.head) == (2, 1)
