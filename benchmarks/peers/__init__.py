"""Peer mediators measured beside this project in the dispatch suite.

Each peer module exposes ``NAME`` (the PyPI distribution name) and
``build(scenario, family) -> Case | None``. A ``Case`` holds a zero-argument
callable doing one dispatch of a pre-built message (for ``async`` it returns an
awaitable), and a ``verify(result)`` that says whether one call computed the
right thing; the harness makes one call, awaits it for ``async``, and passes its
result to ``verify`` before it times anything. ``None`` means the peer cannot express the scenario
in that family (for example a sync-only library asked for ``async``).

Scenarios (the message carries ``value=41``):

- ``send``: one command, its handler returns ``value + 1``.
- ``send_2_behaviours``: the same through two no-op pipeline behaviours.
- ``publish_3``: one event, three handlers, each adds 1 to a counter.
- ``transient_1_dep``: a handler built per dispatch by the peer's container,
  with one singleton dependency ``offset = 1``; returns ``value + offset``.
- ``scoped``: a handler with a dependency that lives for one dispatch scope;
  returns ``value + 1``.
"""

import importlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs

SCENARIOS = ("send", "send_2_behaviours", "publish_3", "transient_1_dep", "scoped")
FAMILIES = ("sync", "async")
PEERS = ("python_cqrs", "lato", "mediatr", "py_mediatr", "kerux")
VALUE = 41


@attrs.frozen
class Case:
    """One timed operation and the check that it computes the right result."""

    call: Callable[[], Any] | Callable[[], Awaitable[Any]]
    verify: Callable[[Any], bool]


Builder = Callable[..., Case]
"""Builds one scenario's ``Case``; peers with both families take ``is_async``."""


class Tally:
    """A counter whose ``delta`` is the increase since the previous ``delta``."""

    def __init__(self) -> None:
        self.n = 0
        self._seen = 0

    def delta(self) -> int:
        d, self._seen = self.n - self._seen, self.n
        return d


class Offset:
    """The singleton dependency of ``transient_1_dep``."""

    def __init__(self) -> None:
        self.value = 1


class Session:
    """The scoped dependency of ``scoped``: one per dispatch scope."""

    def __init__(self) -> None:
        self.increment = 1


def is_answer(result: Any) -> bool:
    """Whether a request scenario's result is the right one, ``VALUE + 1``."""
    return bool(result == VALUE + 1)


def offset_handler(is_async: bool, built: Tally) -> type:
    """A ``transient_1_dep`` handler class for a peer that builds plain handler objects.

    It is constructed with the singleton ``Offset`` (each construction counted in ``built``) and its
    ``handle(request)`` returns ``request.value + offset.value``, as a coroutine when ``is_async``.
    """

    class Built:
        def __init__(self, offset: Offset) -> None:
            built.n += 1
            self._offset = offset

    class Handler(Built):
        def handle(self, request: Any) -> Any:
            return request.value + self._offset.value

    class AsyncHandler(Built):
        async def handle(self, request: Any) -> Any:
            return request.value + self._offset.value

    return AsyncHandler if is_async else Handler


def counted(check: Callable[[Any], bool], *rises: tuple[Tally, int]) -> Callable[[Any], bool]:
    """A ``verify``: each tally rose by exactly its count since the previous call, and ``check(result)`` holds.

    Every tally's ``delta`` is taken on every call, whatever the outcome, so one call's counts never leak
    into the next; ``check`` runs only once the counts are right.
    """

    def verify(result: Any) -> bool:
        rose = [tally.delta() == n for tally, n in rises]
        return all(rose) and check(result)

    return verify


class Builders(dict[str, Builder]):
    """One peer's builders by scenario name."""

    def build(self, scenario: str, family: str) -> Case | None:
        """``build`` for a peer with both families: the scenario's builder called with ``is_async``."""
        builder = self.get(scenario)
        if builder is None or family not in FAMILIES:
            return None
        return builder(family == "async")


def scenarios(
    send: Builder,
    publish_3: Builder | None = None,
    transient_1_dep: Builder | None = None,
    scoped: Builder | None = None,
) -> Builders:
    """One peer's builders by scenario name, leaving out those it cannot express (``None``).

    ``send`` takes a ``behaviours`` keyword: 0 for ``send``, 2 for ``send_2_behaviours``.
    """
    table = {
        "send": partial(send, behaviours=0),
        "send_2_behaviours": partial(send, behaviours=2),
        "publish_3": publish_3,
        "transient_1_dep": transient_1_dep,
        "scoped": scoped,
    }
    return Builders({scenario: builder for scenario, builder in table.items() if builder is not None})


def load(module: str) -> Any | None:
    """Import the adapter for one peer, or ``None`` when the peer is not installed."""
    try:
        return importlib.import_module(f"benchmarks.peers.{module}")
    except ImportError:
        return None
