"""Property: whatever behaviours are registered with whatever targets, each dispatch runs exactly
the ones that apply, outermost first, and still reaches its handler once."""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mediator import Command, Event, Kind, Message, Query, Registry

from .sample import Add, GetName, Happened, SpecialHappened, Tag, Trace

TARGETS: list[Any] = [None, Kind.COMMAND, Kind.QUERY, Kind.EVENT, Add, GetName, Happened, Command, Query, Event,
                      Message, (Kind.QUERY, Happened), (Add, Kind.EVENT)]
MESSAGES = [Add(value=1), GetName(id=1), Happened(what="x"), SpecialHappened(what="y")]


def applies(target: Any, message: Any) -> bool:
    targets = target if isinstance(target, tuple) else (target,)
    kinds: dict[type, Kind] = {Add: Kind.COMMAND, GetName: Kind.QUERY}
    kind = kinds.get(type(message), Kind.EVENT)
    return target is None or any(t is kind if isinstance(t, Kind) else isinstance(message, t) for t in targets)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(range(len(TARGETS))), max_size=6), st.lists(st.sampled_from(MESSAGES), max_size=5))
def test_each_dispatch_runs_exactly_the_applicable_behaviours_in_order(targets: list[int], messages: list[Any]) -> None:
    trace = Trace()
    reg = Registry()
    def add(command: Add) -> int:
        trace.events.append("handler")
        return 1

    def name(query: GetName) -> str:
        trace.events.append("handler")
        return "n"

    def happened(event: Happened) -> None:
        trace.events.append("handler")

    reg.handle(Add).by(add)
    reg.handle(GetName).by(name)
    reg.handle(Happened).by(happened)
    for index, target in enumerate(targets):
        reg.behaviour(Tag(str(index), trace), applies_to=TARGETS[target])
    mediator = reg.build()
    for message in messages:
        trace.events.clear()
        if isinstance(message, Add):
            mediator.send(message)
        elif isinstance(message, GetName):
            mediator.ask(message)
        else:
            mediator.publish(message)
        names = [str(i) for i, t in enumerate(targets) if applies(TARGETS[t], message)]
        handler = [] if type(message) is SpecialHappened else ["handler"]
        assert trace.events == [f"{n}>" for n in names] + handler + [f"<{n}" for n in reversed(names)]
