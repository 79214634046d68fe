"""Edge cases found in review: each was a way for a read model to go wrong or a lock to stay held."""

import asyncio
import time

import attrs
import pytest

from mediator import Command, Event, Query
from mediator.readmodels import PARKED, Delivery, EventTypes, NewEvent, Storage, UnitOfWork
from mediator.testing import settle

from .bank import Deposit, Deposited, event_types, make_bank


def append_raw(storage: Storage, *events: NewEvent) -> None:
    session = storage.begin()
    session.append(list(events))
    session.commit()


def raw_deposit(n: int, account: str, amount: int = 1) -> NewEvent:
    return NewEvent(f"raw{n}-{time.monotonic_ns()}", "bank.deposited", 1,
                    f'{{"account": "{account}", "amount": {amount}}}', account, time.time())


def test_a_key_blocked_in_the_middle_of_a_batch_blocks_the_rest_of_it(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=1))
    append_raw(storage, NewEvent("u", "bank.future", 1, "{}", "a", time.time()), raw_deposit(3, "a", 100))
    bank.engine.catch_up()
    assert bank.balances() == {"a": 1}
    assert [(d.position, d.status) for d in bank.engine.dead_letters()] == [(2, PARKED), (3, "blocked")]




def test_an_unknown_event_type_converges_once_it_is_registered(storage: Storage) -> None:
    @attrs.frozen(kw_only=True)
    class Renamed(Event):
        account: str

    bank = make_bank(storage)
    append_raw(storage, NewEvent("u", "bank.renamed", 1, '{"account": "a"}', "a", time.time()), raw_deposit(2, "a"))
    bank.engine.catch_up()
    assert bank.balances() == {}
    bank.engine.types.register(Renamed, name="bank.renamed")  # the newer code is deployed
    assert bank.engine.retry("balances", 1) == 2  # not this projection's event: released; then the deposit
    assert bank.balances() == {"a": 1}
    assert bank.engine.dead_letters() == []


def test_rebuilding_an_inline_projection_replays_without_side_effects(storage: Storage) -> None:
    if not storage.inline_for("balances"):
        with pytest.raises(ValueError, match="cannot be inline"):
            make_bank(storage, Delivery.INLINE)
        return
    bank = make_bank(storage, Delivery.INLINE, batch_size=10, retire_after=0)
    for _ in range(50):
        bank.mediator.send(Deposit(account="a", amount=1))
    append_raw(storage, NewEvent("u", "bank.future", 1, "{}", None, time.time()))
    bank.projection.side_effects.clear()
    bank.engine.rebuild("balances")
    bank.engine.finish_rebuilds()
    assert storage.current_generation("balances") == 2
    assert bank.projection.side_effects == []
    assert bank.balances() == {"a": 50}
    assert [d.type_name for d in bank.engine.dead_letters()] == ["bank.future"]
    bank.mediator.send(Deposit(account="a", amount=1))
    assert bank.balances() == {"a": 51}


def test_an_inline_projection_added_to_an_existing_log_catches_up_first(storage: Storage) -> None:
    if not storage.inline_for("balances"):
        with pytest.raises(ValueError, match="cannot be inline"):
            make_bank(storage, Delivery.INLINE)
        return
    background = make_bank(storage)
    for _ in range(4):
        background.mediator.send(Deposit(account="a", amount=1))
    inline = make_bank(storage, Delivery.INLINE)
    inline.mediator.send(Deposit(account="a", amount=1))
    assert inline.balances() == {"a": 5}
    assert [row.positions_behind for row in inline.engine.lag()] == [0]


def test_a_query_in_a_scope_after_a_command_leaves_no_transaction_open(storage: Storage) -> None:
    class Peek(Query[int]):
        pass

    def peek(query: Peek, uow: UnitOfWork) -> int:
        uow.handle  # opens a write transaction, which only a command would commit
        return 0

    bank = make_bank(storage)
    bank.registry._frozen = False
    bank.registry.handle(Peek).by(peek)
    mediator = bank.registry.build()
    with mediator.scope():
        mediator.send(Deposit(account="a", amount=1))
        mediator.ask(Peek())
    other = make_bank(storage)  # a second writer must not be locked out
    other.mediator.send(Deposit(account="b", amount=1))
    assert storage.head() == 2


def test_a_failed_commit_does_not_poison_the_next_command_in_the_scope(storage: Storage) -> None:
    @attrs.frozen(kw_only=True)
    class Odd(Event):
        payload: object

    class Emit(Command[None]):
        pass

    def emit(command: Emit, uow: UnitOfWork) -> None:
        uow.record(Odd(payload=object()))  # cannot be encoded: the commit fails

    bank = make_bank(storage)
    bank.engine.types.register(Odd, name="bank.odd")
    bank.registry._frozen = False
    bank.registry.handle(Emit).by(emit)
    mediator = bank.registry.build()
    with mediator.scope():
        with pytest.raises(TypeError, match="Cannot store"):
            mediator.send(Emit())
        mediator.send(Deposit(account="a", amount=1))
    assert storage.head() == 1
    bank.engine.catch_up()
    assert bank.balances() == {"a": 1}


def test_two_rebuilds_at_once_share_one_generation(storage: Storage) -> None:
    first, second = make_bank(storage), make_bank(storage)
    for _ in range(4):
        first.mediator.send(Deposit(account="x", amount=1))
    first.engine.catch_up()
    assert first.engine.rebuild("balances") == second.engine.rebuild("balances") == 2
    second.engine.catch_up()
    first.engine.retire_after = 0
    first.engine.catch_up()
    assert storage.current_generation("balances") == 2
    assert first.balances() == {"x": 4}




def test_async_commands_interleaved_on_one_loop_both_commit(storage: Storage) -> None:
    @attrs.frozen
    class Open(Command[None]):
        account: str

    async def open_account(command: Open, uow: UnitOfWork) -> None:
        uow.handle  # the transaction starts here ...
        await asyncio.sleep(0.01)  # ... and the handler awaits before it records
        uow.record(Deposited(account=command.account, amount=1), key=command.account)

    bank = make_bank(storage)
    bank.registry._frozen = False
    bank.registry.handle(Open).by(open_account)
    mediator = bank.registry.build_async()

    async def main() -> list[object]:
        return await asyncio.wait_for(asyncio.gather(mediator.send(Open("x")), mediator.send(Open("y"))), 10)

    assert asyncio.run(main()) == [None, None]
    assert storage.head() == 2


def test_wait_notices_progress_made_by_another_engine(storage: Storage) -> None:
    waiter, worker = make_bank(storage), make_bank(storage)
    waiter.mediator.send(Deposit(account="a", amount=1))
    started = time.monotonic()
    with worker.engine:  # another runner (as in another process) applies the event
        assert waiter.engine.wait(1, timeout=5)
    assert time.monotonic() - started < 2


def test_event_types_used_here_are_registered() -> None:
    assert Deposited in event_types()




def test_an_old_version_in_the_log_is_upcast_before_the_projection_sees_it(storage: Storage) -> None:
    types = EventTypes()
    types.register(Deposited, name="bank.deposited", version=2, upcasters={
        1: lambda old: {"account": old["account"], "amount": old["cents"] // 100},  # v1 stored cents
    })
    bank = make_bank(storage, types=types)
    append_raw(storage, NewEvent("old-1", "bank.deposited", 1, '{"account": "a", "cents": 500}', "a", time.time()))
    bank.mediator.send(Deposit(account="a", amount=2))  # stored as version 2
    assert [e.version for e in storage.read(0, 10)] == [1, 2]
    settle(bank.engine)
    assert bank.balances() == {"a": 7}
    assert bank.engine.dead_letters() == []
