"""Subscription queries: the answer now, then each change that can affect it, on every backend and across
processes; coalesced for a slow subscriber; resumable from a token; nothing left behind when they end."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from mediator import (
    Answer,
    NotAMessageError,
    Query,
    Registry,
    SubscriptionError,
)
from mediator.readmodels import Delivery, ReadModels, Storage, last_token
from tests import storages

from .bank import Balances, Bank, Deposit, GetBalance, balances, deposit, event_types, get_balance

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0
"""The longest a test waits for an answer that must come (a shared, loaded machine)."""
QUIET = 0.3
"""How long a test listens for an answer that must not come."""


@attrs.frozen(kw_only=True)
class GetTotal(Query[int]):
    """Every account's money: any deposit changes it (no ``depends_on``)."""

    reads = ("balances",)


@attrs.frozen(kw_only=True)
class GetNothing(Query[int]):
    """A query that names no read models: it cannot be subscribed to."""


def total(query: GetTotal, engine: ReadModels) -> int:
    return sum(balances(engine).values())


def nought(query: GetNothing) -> int:
    return 0


def live_bank(storage: Storage, delivery: Delivery = Delivery.BACKGROUND) -> Bank:
    engine = ReadModels(storage, event_types(), max_attempts=1, backoff=0.01)
    projection = Balances()
    engine.add(projection, delivery=delivery)
    registry = Registry()
    engine.install(registry)
    registry.handle(Deposit).by(deposit)
    registry.handle(GetBalance).by(get_balance)
    registry.handle(GetTotal).by(total)
    registry.handle(GetNothing).by(nought)
    return Bank(storage, engine, projection, registry).build()


@pytest.fixture
def bank(storage: Storage) -> Iterator[Bank]:
    app = live_bank(storage)
    app.engine.start()
    try:
        yield app
    finally:
        app.engine.live.close()
        app.engine.stop()


def answer(subscription: object) -> Answer[int]:
    got = subscription.next(WAIT)  # type: ignore[attr-defined]
    assert got is not None, "no answer came"
    return got  # type: ignore[no-any-return]


def nothing(subscription: object) -> None:
    got = subscription.next(QUIET)  # type: ignore[attr-defined]
    assert got is None, f"an answer came that should not have: {got}"


def settled(bank: Bank, timeout: float = WAIT) -> None:
    token = last_token()
    assert token is not None
    assert bank.engine.wait(token, timeout=timeout)


# -- in one process, every backend ---------------------------------------------------------------------------


def test_a_subscriber_gets_the_answer_now_then_each_change(bank: Bank) -> None:
    with bank.mediator.subscribe(GetBalance(account="a")) as live:
        first = answer(live)
        assert first.value == 0
        bank.mediator.send(Deposit(account="a", amount=10))
        token = last_token()
        second = answer(live)
        assert second.value == 10
        assert token is not None
        assert second.token >= token
        bank.mediator.send(Deposit(account="a", amount=5))
        assert answer(live).value == 15


def test_a_keyed_subscription_is_not_asked_again_for_other_keys(bank: Bank) -> None:
    with bank.mediator.subscribe(GetBalance(account="a")) as mine, bank.mediator.subscribe(GetTotal()) as everyone:
        assert answer(mine).value == 0
        assert answer(everyone).value == 0
        bank.mediator.send(Deposit(account="b", amount=7))
        assert answer(everyone).value == 7
        nothing(mine)  # b's deposit cannot change a's balance: not even asked
        bank.mediator.send(Deposit(account="a", amount=1))
        assert answer(mine).value == 1
        assert answer(everyone).value == 8


def test_a_slow_subscriber_gets_the_latest_answer_once(bank: Bank) -> None:
    asked = []
    original = bank.engine.find

    def find(*args: Any, **kwargs: Any) -> Any:
        asked.append(1)
        return original(*args, **kwargs)

    with bank.mediator.subscribe(GetTotal()) as live:
        assert answer(live).value == 0
        for amount in range(1, 31):
            bank.mediator.send(Deposit(account=f"acct-{amount % 3}", amount=amount))
        settled(bank)
        looks = bank.engine.live.looks
        _until(lambda: bank.engine.live.looks >= looks + 2)  # the hub has looked at every change by now
        bank.engine.find = find  # type: ignore[method-assign]
        latest = answer(live)
        assert latest.value == sum(range(1, 31))
        assert latest.token >= last_token()  # type: ignore[operator]
        nothing(live)  # thirty changes, one answer: not a queue
        assert len(asked) == 1


def test_an_answer_equal_to_the_last_is_not_given_again(bank: Bank) -> None:
    bank.projection.poison.add("x")
    with bank.mediator.subscribe(GetTotal()) as live:
        assert answer(live).value == 0
        bank.mediator.send(Deposit(account="x", amount=3))  # parked: the read model does not change
        nothing(live)


def test_a_parked_event_holds_the_token_back_but_not_the_answers(bank: Bank) -> None:
    bank.projection.poison.add("x")
    with bank.mediator.subscribe(GetTotal()) as live:
        assert answer(live).value == 0
        bank.mediator.send(Deposit(account="x", amount=3))
        parked_at = last_token()
        bank.mediator.send(Deposit(account="a", amount=4))
        later = answer(live)
        assert later.value == 4  # a's deposit is applied and shown
        assert parked_at is not None
        assert later.token < parked_at


def test_resuming_from_a_token_answers_only_what_changed_since(bank: Bank) -> None:
    bank.mediator.send(Deposit(account="a", amount=2))
    settled(bank)
    with bank.mediator.subscribe(GetBalance(account="a")) as live:
        seen = answer(live)
    assert seen.value == 2
    with bank.mediator.subscribe(GetBalance(account="a"), after=seen.token) as resumed:
        nothing(resumed)  # the caller has the latest answer already
        bank.mediator.send(Deposit(account="a", amount=3))
        assert answer(resumed).value == 5
    bank.mediator.send(Deposit(account="a", amount=1))
    settled(bank)
    with bank.mediator.subscribe(GetBalance(account="a"), after=seen.token) as behind:
        assert answer(behind).value == 6  # two changes since that token: the latest answer at once
    with bank.mediator.subscribe(GetBalance(account="a"), after=10**9) as unknown:
        assert answer(unknown).value == 6  # a token this log never gave: answered as a new subscription


def test_close_from_another_thread_ends_a_waiting_iteration(bank: Bank) -> None:
    live = bank.mediator.subscribe(GetTotal())
    assert answer(live).value == 0
    got: list[object] = []
    waiting = threading.Thread(target=lambda: got.extend(live))
    waiting.start()
    time.sleep(0.1)
    live.close()
    waiting.join(WAIT)
    assert not waiting.is_alive()
    assert got == []
    assert live.closed
    assert bank.engine.live.watching == 0


def test_the_hub_runs_only_while_there_are_subscriptions(bank: Bank) -> None:
    hub = bank.engine.live
    assert (hub.running, hub.watching) == (False, 0)
    with bank.mediator.subscribe(GetTotal()) as live:
        answer(live)
        assert hub.running
        assert hub.watching == 1
    _until(lambda: not hub.running)
    assert hub.watching == 0
    dropped = bank.mediator.subscribe(GetTotal())  # never closed: dropped
    answer(dropped)
    del dropped
    gc.collect()
    _until(lambda: hub.watching == 0 and not hub.running)


def test_shutting_the_feed_down_ends_every_subscription(bank: Bank) -> None:
    live = bank.mediator.subscribe(GetTotal())
    answer(live)
    bank.engine.live.close()
    assert list(live) == []
    with pytest.raises(SubscriptionError, match="closed"):
        bank.mediator.subscribe(GetTotal())


def test_what_cannot_be_subscribed_to_is_refused(bank: Bank) -> None:
    with pytest.raises(SubscriptionError, match="names no read models"):
        bank.mediator.subscribe(GetNothing())
    with pytest.raises(NotAMessageError):
        bank.mediator.subscribe(Deposit(account="a", amount=1))
    plain = Registry()
    plain.handle(GetNothing).by(nought)
    with pytest.raises(SubscriptionError, match="no change feed"):
        plain.build().subscribe(GetNothing())


# -- async ------------------------------------------------------------------------------------------------------


def test_an_async_subscriber_gets_each_change_and_leaves_nothing_when_cancelled(bank: Bank) -> None:
    mediator = bank.registry.build_async()

    async def scenario() -> None:
        seen: list[int] = []
        got_three = asyncio.Event()

        async def follow() -> None:
            async with mediator.subscribe(GetTotal()) as live:
                async for each in live:
                    seen.append(each.value)
                    if each.value == 3:
                        got_three.set()

        task = asyncio.create_task(follow())
        await _async_until(lambda: seen == [0])
        for _ in range(3):
            await mediator.send(Deposit(account="a", amount=1))
            await asyncio.sleep(0.05 + 2 * bank.engine.live.interval)
        await asyncio.wait_for(got_three.wait(), WAIT)
        assert seen[0] == 0
        assert seen[-1] == 3
        assert seen == sorted(seen)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert bank.engine.live.watching == 0
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(scenario())
    _until(lambda: not bank.engine.live.running)


def test_closing_the_feed_ends_an_async_iteration(bank: Bank) -> None:
    mediator = bank.registry.build_async()

    async def scenario() -> list[int]:
        seen: list[int] = []

        async def follow() -> None:
            async for each in mediator.subscribe(GetTotal()):
                seen.append(each.value)

        task = asyncio.create_task(follow())
        await _async_until(lambda: seen == [0])
        await asyncio.to_thread(bank.engine.live.close)
        await asyncio.wait_for(task, WAIT)  # ends by itself: no cancellation needed
        return seen

    assert asyncio.run(scenario()) == [0]


# -- across processes -------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], Storage]]:
    with storages.shared_by_processes(request.param, tmp_path, BANK_POLL="0.01") as (env, storage):
        yield env, storage


def test_a_change_applied_by_a_worker_process_reaches_a_subscriber_here(
        shared: tuple[dict[str, str], Storage]) -> None:
    env, storage = shared
    bank = live_bank(storage, Delivery.WORKER)  # this process applies nothing
    worker = subprocess.Popen([sys.executable, "-m", "tests.readmodels.bank_app", "worker"], env={
        **env, "BANK_DELIVERY": "worker"}, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        with bank.mediator.subscribe(GetBalance(account="a")) as live:
            assert answer(live).value == 0
            bank.mediator.send(Deposit(account="a", amount=4))  # committed here, applied there
            token = last_token()
            got = answer(live)
            assert got.value == 4
            assert token is not None
            assert got.token >= token
            subprocess.run([sys.executable, "-m", "tests.readmodels.bank_app", "writer", "3"], env=env, cwd=ROOT,
                           check=True, capture_output=True, timeout=60)  # another process's deposits
            nothing(live)  # to its own account, not a's
        with bank.mediator.subscribe(GetTotal()) as everyone:
            assert answer(everyone).value == 7
            bank.mediator.send(Deposit(account="b", amount=1))
            assert answer(everyone).value == 8
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
        bank.engine.live.close()
    assert worker.returncode == 0


# -- helpers ---------------------------------------------------------------------------------------------------


def _until(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def _async_until(condition: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_subscriptions_coming_and_going_leave_no_thread_or_connection(kind: str, tmp_path: Path) -> None:
    with storages.opened(kind, tmp_path) as storage:
        bank = live_bank(storage)
        bank.engine.start()
        try:
            def cycle() -> None:
                with bank.mediator.subscribe(GetTotal()) as live:
                    assert answer(live).value == 0
                _until(lambda: not bank.engine.live.running)
                gc.collect()  # the hub's thread object gone: its connection closes with it

            def open_connections() -> int:  # the storage's connections still open
                everything: set[Any] = storage._all  # type: ignore[attr-defined]
                return len([c for c in list(everything) if not getattr(c, "closed", False)])

            for _ in range(2):  # the runner opens what it keeps open meanwhile (its listener, its pool)
                cycle()
            time.sleep(0.2)
            connections = open_connections()
            threads = threading.active_count()
            for _ in range(5):
                cycle()
            _until(lambda: open_connections() <= connections)
            assert threading.active_count() == threads
        finally:
            bank.engine.live.close()
            bank.engine.stop()


def test_a_parked_event_applied_at_last_is_an_answer_too(bank: Bank) -> None:
    bank.projection.poison.add("x")
    with bank.mediator.subscribe(GetTotal()) as live:
        assert answer(live).value == 0
        bank.mediator.send(Deposit(account="x", amount=3))
        parked_at = last_token()
        assert parked_at is not None
        bank.mediator.send(Deposit(account="a", amount=4))
        assert answer(live).value == 4
        _until(lambda: bool(bank.engine.dead_letters("balances")))
        bank.projection.poison.clear()
        bank.engine.retry("balances", parked_at)  # behind the checkpoint: only the applied position moves
        healed = answer(live)
        assert healed.value == 7
        assert healed.token >= parked_at


def test_an_inline_read_model_rebuilt_is_answered_again(tmp_path: Path) -> None:
    from mediator.readmodels.sqlite import SqliteStorage

    from .bank import Balance

    storage = SqliteStorage(tmp_path / "bank.db")
    bank = live_bank(storage, Delivery.INLINE)
    bank.engine.retire_after = 0
    try:
        bank.mediator.send(Deposit(account="a", amount=5))
        with storage.session("balances", storage.current_generation("balances")) as session:
            session.put(Balances.balance, Balance("a", 50))  # drift
        with bank.mediator.subscribe(GetBalance(account="a")) as live:
            assert answer(live).value == 50
            bank.engine.rebuild("balances")
            bank.engine.finish_rebuilds()  # a new generation swapped in: no event moved, but the answer did
            assert answer(live).value == 5
    finally:
        bank.engine.live.close()
        storage.close()


@attrs.frozen(kw_only=True)
class GetByText(Query[int]):
    reads = "balances"


@attrs.frozen(kw_only=True)
class GetOneKey(Query[int]):
    reads = ("balances",)
    account: str

    def depends_on(self) -> str:
        return self.account  # a bare text: it would be taken for its characters


def test_a_subscription_declared_wrongly_is_refused_with_the_fix(storage: Storage) -> None:
    engine = ReadModels(storage, event_types())
    engine.add(Balances())
    with pytest.raises(SubscriptionError, match=r"give a tuple of projection names"):
        engine.live.watch(GetByText(), None)
    with pytest.raises(SubscriptionError, match=r"depends_on\(\) answered 'a'"):
        engine.live.watch(GetOneKey(account="a"), None)
    with pytest.raises(SubscriptionError, match=r"after=-1"):
        engine.live.watch(GetTotal(), -1)
    assert engine.live.watching == 0
