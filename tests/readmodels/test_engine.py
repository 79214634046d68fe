"""The read-model engine on every backend: outbox, projections, failures, rebuilds, read-your-writes."""

import threading
import time
from typing import Any

import attrs
import pytest
from structlog.testing import capture_logs

from mediator import Command, Mediator
from mediator.readmodels import (
    ConsistencyTimeoutError,
    Delivery,
    NewEvent,
    Projection,
    ProjectionSession,
    Storage,
    UnitOfWork,
    UnregisteredEventError,
    consistent,
    last_token,
    on,
)
from mediator.readmodels._versions import finish_rebuild

from .bank import Deposit, Deposited, GetBalance, make_bank


def test_a_command_appends_its_events_in_the_same_transaction(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=5))
    (stored,) = storage.read(0, 10)
    assert stored.type_name == "bank.deposited"
    assert stored.key == "a"
    assert bank.engine.types.decode(stored.type_name, stored.version, stored.data) == Deposited(account="a", amount=5)


def test_a_failed_command_leaves_no_event(storage: Storage) -> None:
    bank = make_bank(storage)
    with pytest.raises(ValueError, match="positive"):
        bank.mediator.send(Deposit(account="a", amount=-1))
    assert storage.head() == 0
    bank.mediator.send(Deposit(account="a", amount=1))  # the writer's lock was released
    assert storage.head() == 1


def test_every_command_leaves_its_commit_position_as_the_token(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=1))
    assert last_token() == 1
    bank.mediator.send(Deposit(account="b", amount=1))
    assert last_token() == 2


def test_recording_an_unregistered_event_names_the_fix(storage: Storage) -> None:
    from mediator import Command, Event
    from mediator.readmodels import UnitOfWork

    class Stray(Event):
        pass

    class Emit(Command[None]):
        pass

    def emit(command: Emit, uow: UnitOfWork) -> None:
        uow.record(Stray())

    bank = make_bank(storage)
    bank.registry._frozen = False
    bank.registry.handle(Emit).by(emit)
    with pytest.raises(UnregisteredEventError, match=r"register it with event_types\.register"):
        bank.registry.build().send(Emit())


def test_background_projection_converges(storage: Storage) -> None:
    bank = make_bank(storage)
    for account, amount in [("a", 1), ("b", 2), ("a", 3)]:
        bank.mediator.send(Deposit(account=account, amount=amount))
    assert bank.balances() == {}
    assert bank.engine.catch_up() == 3
    assert bank.balances() == {"a": 4, "b": 2}
    assert bank.engine.catch_up() == 0


def test_the_runner_thread_applies_events_after_commit(storage: Storage) -> None:
    bank = make_bank(storage)
    with bank.engine:
        bank.mediator.send(Deposit(account="a", amount=7))
        assert bank.engine.wait(last_token() or 0, timeout=5)
    assert bank.balances() == {"a": 7}


def test_inline_projection_is_consistent_when_the_command_returns(storage: Storage) -> None:
    if not storage.inline_for("balances"):
        with pytest.raises(ValueError, match="cannot be inline"):
            make_bank(storage, Delivery.INLINE)
        return
    bank = make_bank(storage, Delivery.INLINE)
    bank.mediator.send(Deposit(account="a", amount=2))
    assert bank.balances() == {"a": 2}
    bank.projection.poison.add("bad")
    with pytest.raises(ValueError, match="cannot project"):
        bank.mediator.send(Deposit(account="bad", amount=1))
    assert storage.head() == 1  # the read model's failure rolled the command back


def test_duplicate_delivery_applies_each_event_once(storage: Storage) -> None:
    bank = make_bank(storage, batch_size=1)
    for _ in range(20):
        bank.mediator.send(Deposit(account="a", amount=1))
    errors: list[BaseException] = []

    def race() -> None:
        try:
            bank.engine.catch_up()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert bank.balances() == {"a": 20}






def test_an_unknown_event_type_is_parked_with_a_clear_reason(storage: Storage) -> None:
    bank = make_bank(storage)
    session = storage.begin()
    session.append([NewEvent("x1", "from.the.future", 1, "{}", "a", time.time())])
    session.commit()
    bank.mediator.send(Deposit(account="b", amount=1))
    bank.engine.catch_up()
    (letter,) = bank.engine.dead_letters()
    assert letter.position == 1
    assert "no event type is registered under this name" in letter.reason
    assert bank.balances() == {"b": 1}


def test_an_undecodable_event_is_parked_not_fatal(storage: Storage) -> None:
    bank = make_bank(storage)
    session = storage.begin()
    session.append([NewEvent("x1", "bank.deposited", 1, '{"account": "a"}', "a", time.time())])
    session.commit()
    bank.engine.catch_up()
    (letter,) = bank.engine.dead_letters()
    assert "Cannot decode event 'bank.deposited' v1" in letter.reason


def test_rebuild_replays_into_a_new_generation_then_swaps(storage: Storage) -> None:
    bank = make_bank(storage)
    for amount in (1, 2, 3):
        bank.mediator.send(Deposit(account="a", amount=amount))
    bank.engine.catch_up()
    bank.projection.side_effects.clear()
    generation = bank.engine.rebuild("balances")
    assert generation == 2
    lag = {(row.generation, row.rebuilding): row for row in bank.engine.lag()}
    assert lag[(2, True)].positions_behind == 3
    assert lag[(1, False)].positions_behind == 0
    assert bank.mediator.ask(GetBalance(account="a")) == 6  # queries still read generation 1
    bank.engine.catch_up()
    assert storage.current_generation("balances") == 2
    assert bank.mediator.ask(GetBalance(account="a")) == 6
    assert bank.projection.side_effects == []  # replaying: no side effects repeated
    assert [row.generation for row in bank.engine.lag()] == [2]


def test_an_event_the_rebuild_replays_first_still_gets_its_side_effect_once(storage: Storage) -> None:
    # The replaying generation may read an event the live one has not reached yet; swapping then would hand
    # the event to a generation that treats it as replayed, and its side effect would never happen.
    bank = make_bank(storage)
    for amount in (1, 2, 3):
        bank.mediator.send(Deposit(account="a", amount=amount))
    bank.engine.catch_up()
    bank.projection.side_effects.clear()
    new = bank.engine.rebuild("balances")
    bank.mediator.send(Deposit(account="b", amount=4))  # the live generation has not seen this one yet
    track = bank.engine._tracks["balances"]
    bank.engine.applier._stretches.clear()  # the replay reads the log itself, as a rebuild in another process would
    bank.engine.applier.run_batch(track, new, replaying=True)
    bank.engine.rebuilds.maybe_swap(track)
    assert storage.current_generation("balances") == 1  # not swapped while the live generation lags behind
    assert not finish_rebuild(storage, "balances", new, old=1)  # and the rule refuses it too
    bank.engine.catch_up()
    assert storage.current_generation("balances") == 2
    assert bank.projection.side_effects == [("b", False)]  # once, by the live generation
    assert bank.mediator.ask(GetBalance(account="b")) == 4


def test_queries_keep_answering_while_a_rebuild_runs(storage: Storage) -> None:
    bank = make_bank(storage, batch_size=5)
    for _ in range(100):
        bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up()
    bank.engine.rebuild("balances")
    answers: list[int] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append(bank.mediator.ask(GetBalance(account="a")))

    # Between the replay's batches, deterministically, and from a thread, at whatever moments it gets.
    between_batches: list[int] = []
    bank.engine.on_batch.append(lambda _name, _events: between_batches.append(
        bank.mediator.ask(GetBalance(account="a"))) if storage.rebuilding("balances") is not None else None)
    reader = threading.Thread(target=ask)
    reader.start()
    try:
        bank.engine.catch_up()
    finally:
        stop.set()
        reader.join()
    assert len(between_batches) >= 19  # 100 events in batches of 5, the last one swapped in
    assert set(between_batches) == {100}
    assert answers
    assert set(answers) == {100}  # never a half-rebuilt answer
    assert storage.current_generation("balances") == 2


def test_read_your_writes_waits_for_the_projection(storage: Storage) -> None:
    bank = make_bank(storage)
    with bank.engine:
        bank.mediator.send(Deposit(account="a", amount=3))
        with consistent(last_token(), timeout=5) as wanted:
            assert bank.mediator.ask(GetBalance(account="a")) == 3
        assert not wanted.stale


def test_read_your_writes_times_out_with_an_error_or_a_stale_flag(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=3))
    token = last_token()
    with pytest.raises(ConsistencyTimeoutError, match=r"did not reach position 1 within 0\.05 s") as info, \
            consistent(token, timeout=0.05):
        bank.mediator.ask(GetBalance(account="a"))
    assert info.value.behind == {"balances": 0}
    with consistent(token, timeout=0.05, stale_ok=True) as wanted:
        assert bank.mediator.ask(GetBalance(account="a")) == 0
    assert wanted.stale


def test_lag_counts_positions_and_seconds_behind(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.mediator.send(Deposit(account="a", amount=1))
    time.sleep(0.05)
    bank.mediator.send(Deposit(account="a", amount=1))
    (row,) = bank.engine.lag()
    assert row.positions_behind == 2
    assert row.seconds_behind >= 0.05
    bank.engine.catch_up()
    (row,) = bank.engine.lag()
    assert (row.positions_behind, row.seconds_behind, row.checkpoint) == (0, 0.0, 2)


def test_the_async_mediator_commits_and_reads_its_writes(storage: Storage) -> None:
    import asyncio

    bank = make_bank(storage)
    mediator = bank.registry.build_async()

    async def main() -> tuple[int, bool]:
        await mediator.send(Deposit(account="a", amount=4))
        with consistent(last_token(), timeout=5) as wanted:
            balance = await mediator.ask(GetBalance(account="a"))
        return balance, wanted.stale

    with bank.engine:
        assert asyncio.run(main()) == (4, False)
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(mediator.send(Deposit(account="a", amount=0)))
    assert storage.head() == 1


def test_nested_commands_share_one_transaction(storage: Storage) -> None:
    from mediator import Command, Mediator

    class Twice(Command[None]):
        pass

    class TwiceHandler:
        def __init__(self, mediator: Mediator) -> None:
            self.mediator = mediator

        def handle(self, command: Twice) -> None:
            self.mediator.send(Deposit(account="n", amount=1))
            self.mediator.send(Deposit(account="n", amount=-1))  # fails: the first must roll back too

    bank = make_bank(storage)
    bank.registry._frozen = False
    bank.registry.handle(Twice).by(TwiceHandler)
    mediator = bank.registry.build()
    with pytest.raises(ValueError, match="positive"):
        mediator.send(Twice())
    assert storage.head() == 0  # both sends shared the scoped UnitOfWork, so neither event was stored


def test_events_recorded_outside_a_command_are_discarded_loudly(storage: Storage) -> None:
    from mediator import Query
    from mediator.readmodels import UnitOfWork

    class Sneak(Query[int]):
        pass

    def sneak(query: Sneak, uow: UnitOfWork) -> int:
        uow.record(Deposited(account="q", amount=1))
        return 0

    bank = make_bank(storage)
    bank.registry._frozen = False
    bank.registry.handle(Sneak).by(sneak)
    with capture_logs() as logs:
        bank.registry.build().ask(Sneak())
    assert storage.head() == 0
    assert [e["event"] for e in logs] == [
        "recorded events discarded: they were recorded outside a command, which alone commits them"]


def test_a_runner_limited_to_some_projections_runs_only_those(storage: Storage) -> None:
    from .bank import Balances

    class BalancesCopy(Balances):
        name = "balances_copy"  # the same projection under a second storage name

    bank = make_bank(storage)
    other = BalancesCopy()
    bank.engine.add(other)
    with pytest.raises(LookupError, match="No projection named 'nope'"):
        bank.engine.start(only=["nope"])
    bank.mediator.send(Deposit(account="a", amount=2))
    bank.engine.start(only=["balances_copy"])
    try:
        assert bank.engine.wait(storage.head(), ["balances_copy"], timeout=10)
        assert not bank.engine.wait(storage.head(), ["balances"], timeout=0.3)  # never run by this runner
    finally:
        bank.engine.stop()
    assert other.applied == [2]
    assert bank.projection.applied == []


class _Seen(Projection):
    """Remembers the event objects it was handed."""

    name = "first_seen"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Deposited] = []

    @on(Deposited)
    def deposited(self, event: Deposited, session: ProjectionSession) -> None:
        self.events.append(event)


class _SeenToo(_Seen):
    name = "second_seen"


def test_each_event_is_decoded_once_for_every_projection_of_the_engine(storage: Storage) -> None:
    bank = make_bank(storage)
    first, second = _Seen(), _SeenToo()
    bank.engine.add(first)
    bank.engine.add(second)
    for amount in (1, 2, 3):
        bank.mediator.send(Deposit(account="a", amount=amount))
    bank.engine.catch_up()
    assert [e.amount for e in first.events] == [1, 2, 3]
    assert all(a is b for a, b in zip(first.events, second.events, strict=True))  # the same objects, decoded once
    assert bank.balances() == {"a": 6}


def test_the_projections_of_an_engine_read_each_stretch_of_the_log_once(storage: Storage) -> None:
    reads: list[tuple[int, int]] = []
    real_read = storage.read

    def counted(after: int, limit: int, type_names: object = None) -> list[Any]:
        reads.append((after, limit))
        return real_read(after, limit, type_names)  # type: ignore[arg-type]

    storage.read = counted  # type: ignore[method-assign]
    bank = make_bank(storage, batch_size=2)
    first, second = _Seen(), _SeenToo()
    bank.engine.add(first)
    bank.engine.add(second)
    for amount in (1, 2, 3, 4, 5):
        bank.mediator.send(Deposit(account="a", amount=amount))
    bank.engine.catch_up()
    assert [e.amount for e in first.events] == [1, 2, 3, 4, 5] == [e.amount for e in second.events]
    assert bank.balances() == {"a": 15}
    # Three projections, each stretch with events read from storage once; the reads that found nothing new aside.
    assert [read for read in reads if read[0] < 5] == [(0, 2), (2, 2), (4, 2)]


@attrs.frozen(kw_only=True)
class Remember(Command[None]):
    value: int
    fail: bool = False
    nested: bool = False


def test_the_identity_map_is_shared_by_nested_commands_and_emptied_with_the_transaction(storage: Storage) -> None:
    seen: list[dict[object, object]] = []

    def remember(command: Remember, uow: UnitOfWork, mediator: Mediator) -> None:
        seen.append(dict(uow.identity_map))
        uow.identity_map["value"] = command.value
        if command.nested:
            mediator.send(Remember(value=command.value + 100))
        if command.fail:
            raise ValueError("refused")

    bank = make_bank(storage)
    bank.registry._frozen = False
    bank.registry.handle(Remember).by(remember)
    mediator = bank.registry.build()
    mediator.send(Remember(value=1, nested=True))
    assert seen == [{}, {"value": 1}]  # the nested command joined the transaction and found what its caller put
    with pytest.raises(ValueError, match="refused"):
        mediator.send(Remember(value=2, fail=True))
    mediator.send(Remember(value=3))
    assert seen[2:] == [{}, {}]  # emptied by the commit, then by the rollback
