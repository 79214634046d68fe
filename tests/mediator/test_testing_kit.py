"""mediator.testing: what users get for their own tests."""

import asyncio

import pytest

from mediator import HandlerNotFoundError, Mediator, Registry
from mediator.testing import (
    AsyncMediatorStub,
    MediatorStub,
    recording_async_mediator,
    recording_mediator,
)

from .sample import Add, Count, Fail, GetName, Happened, Offset, count, fail


class PlaceThenNotify:
    def __init__(self, mediator: Mediator) -> None:
        self.mediator = mediator

    def handle(self, query: GetName) -> str:
        total = self.mediator.send(Add(value=query.id))
        self.mediator.publish(Happened(what=f"added {total}"))
        return "done"


def add_offset(command: Add, offset: Offset) -> int:
    return command.value + offset.value


def app(*, with_sync_dispatcher: bool = True) -> Registry:
    reg = Registry()
    reg.singleton(Offset)
    reg.handle(Add).by(add_offset)
    reg.handle(Fail).by(fail)
    if with_sync_dispatcher:
        reg.handle(GetName).by(PlaceThenNotify)
    reg.handle(Happened).by(lambda event: None)
    reg.handle(Happened).by(lambda event: None)
    reg.handle(Count).by(count)
    return reg


def test_recording_captures_nested_commands_events_and_results() -> None:
    mediator, recording = recording_mediator(app())
    assert mediator.ask(GetName(id=1)) == "done"
    assert recording.commands == [Add(value=1)]
    assert recording.queries == [GetName(id=1)]
    assert recording.events == [Happened(what="added 2")]
    assert recording.result_of(Add) == 2
    assert recording.of_type(Add) == [Add(value=1)]


def test_recording_keeps_errors() -> None:
    mediator, recording = recording_mediator(app())
    with pytest.raises(RuntimeError):
        mediator.send(Fail())
    with pytest.raises(RuntimeError, match="boom"):
        recording.result_of(Fail)
    assert recording.dispatched[0].error is not None


def test_result_of_something_never_dispatched_is_a_lookup_error() -> None:
    _, recording = recording_mediator(app())
    with pytest.raises(LookupError, match=r"No tests\.mediator\.sample\.Add was dispatched"):
        recording.result_of(Add)


def test_fakes_replace_services() -> None:
    class FakeOffset(Offset):
        def __init__(self) -> None:
            self.value = 100

    mediator, _ = recording_mediator(app(), fakes={Offset: FakeOffset()})
    assert mediator.send(Add(value=1)) == 101


def test_recording_async_twin() -> None:
    mediator, recording = recording_async_mediator(app(with_sync_dispatcher=False))
    assert asyncio.run(mediator.send(Add(value=1))) == 2
    assert recording.commands == [Add(value=1)]


def test_recording_streams() -> None:
    mediator, recording = recording_mediator(app())
    assert list(mediator.stream(Count(up_to=2))) == [0, 1]
    assert recording.queries == [Count(up_to=2)]
    recording.clear()
    assert recording.dispatched == []


def test_stub_answers_with_canned_values_and_records() -> None:
    stub = MediatorStub().on(Add, 10).on(GetName, lambda query: f"n{query.id}")
    handler = PlaceThenNotify(stub)  # type: ignore[arg-type]
    assert handler.handle(GetName(id=3)) == "done"
    assert stub.dispatched == [Add(value=3), Happened(what="added 10")]
    assert stub.ask(GetName(id=2)) == "n2"


def test_stub_refuses_unexpected_messages_with_the_fix() -> None:
    with pytest.raises(HandlerNotFoundError, match=r"add stub.on\(Add, ...\)") as raised:
        MediatorStub().send(Add(value=1))
    assert raised.value.message_type is Add  # what code under test catching a missing handler sees from a mediator


def test_async_stub() -> None:
    stub = AsyncMediatorStub().on(Add, 5).on(Count, [1, 2])

    async def main() -> tuple[int, list[int]]:
        result = await stub.send(Add(value=1))
        items = [i async for i in stub.stream(Count(up_to=2))]
        await stub.publish(Happened(what="x"))
        return result, items

    assert asyncio.run(main()) == (5, [1, 2])


def test_recording_sees_every_publish_even_of_unhandled_events() -> None:
    from .sample import SpecialHappened

    mediator, recording = recording_mediator(app())
    event = Happened(what="twice")
    mediator.publish(event)
    mediator.publish(event)
    mediator.publish(SpecialHappened(what="nobody listens"))
    assert recording.events == [event, event, SpecialHappened(what="nobody listens")]


def test_recording_cannot_be_added_after_build() -> None:
    from mediator import RegistryFrozenError

    reg = app()
    reg.build()
    with pytest.raises(RegistryFrozenError):
        recording_mediator(reg)
