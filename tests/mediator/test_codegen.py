"""Generated code never lets a user's names clash with its own, whatever the handlers and events are called."""

import attrs

from mediator import Command, Event, Registry
from mediator._codegen import Namespace, function
from mediator.readmodels import EventTypes

from .sample import Add


class Clock:
    def __init__(self) -> None:
        self.offset = 1


def call(command: Add, clock: Clock) -> int:
    """A handler named like the generated function that calls it."""
    return command.value + clock.offset


class Make:
    """A service named like a generated factory."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock


def make(command: Add, make: Make, type: Clock) -> int:  # shadowing names on purpose
    return command.value + make.clock.offset + type.offset


@attrs.frozen(kw_only=True)
class Convert(Event):
    get: int
    type: str
    v: int


@attrs.frozen(kw_only=True)
class Type(Event):
    data: int
    extra: int


def test_a_handler_named_like_the_generated_call_runs() -> None:
    registry = Registry()
    registry.singleton(Clock)
    registry.handle(Add).by(call)
    assert registry.build().send(Add(value=1)) == 2


def test_dependencies_named_like_generated_names_and_builtins_run() -> None:
    registry = Registry()
    registry.singleton(Clock)
    registry.transient(Make)
    registry.handle(Add).by(make)
    assert registry.build().send(Add(value=1)) == 3


def test_events_named_and_shaped_like_generated_names_round_trip() -> None:
    types = EventTypes()
    types.register(Convert)
    types.register(Type)
    for event in (Convert(get=1, type="t", v=2), Type(data=3, extra=4)):
        name, version, data = types.encode(event)
        assert types.decode(name, version, data) == event
        assert types.decoder(types.entry(type(event)))(data) == event


def test_the_namespace_never_hands_out_a_taken_name() -> None:
    namespace = Namespace()
    names = [namespace.add(hint, object()) for hint in ("call", "type", "scope", "message", "make", "len", "call")]
    assert len(set(names)) == len(names)
    assert not {"call", "type", "scope", "message", "make", "len"} & set(names)
    assert namespace.add("<lambda>", len) == "_lambda"


def test_a_generated_function_cannot_replace_a_global_of_its_name() -> None:
    import pytest

    with pytest.raises(ValueError, match="would replace"):
        function("call", [], ["return 1"], {"call": 1}, about="a test")


def test_a_command_class_named_like_a_local_still_dispatches() -> None:
    @attrs.frozen(kw_only=True)
    class Message(Command[int]):
        value: int

    registry = Registry()
    registry.singleton(Clock)

    def handle(message: Message, clock: Clock) -> int:
        return message.value + clock.offset

    registry.handle(Message).by(handle)
    assert registry.build().send(Message(value=1)) == 2
