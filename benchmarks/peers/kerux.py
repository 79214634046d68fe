"""Adapter for ``kerux``: ``SyncMediator`` (sync) and ``Mediator`` (async), set up as in its README.

Handlers are plain functions registered with ``mediator.register``; behaviours are ``(request, next)``
functions added with ``add_behavior``; notification handlers are registered with
``register_notification_handler`` and run one after another. All state is per ``Mediator`` instance.

- ``transient_1_dep``: kerux has no DI container. Its documented per-dispatch hook is
  ``register(T, factory=...)``, "called to create the handler each time the request is sent"; the
  factory closes over the singleton, so no dependency *resolution* happens per call (lighter than a
  container-backed peer: read its numbers with that in mind).
- ``scoped``: ``None``. kerux has no DI scopes: its README hands request-scoped dependencies to the
  host framework (build a new ``Mediator`` per request inside a FastAPI dependency).
"""

from dataclasses import dataclass
from functools import partial
from typing import Any

import kerux

from benchmarks.peers import VALUE, Case

NAME = "kerux"


class _Tally:
    """A counter whose ``delta`` is the increase since the previous ``delta``."""

    def __init__(self) -> None:
        self.n = 0
        self._seen = 0

    def delta(self) -> int:
        d, self._seen = self.n - self._seen, self.n
        return d


@dataclass(frozen=True, slots=True)
class _Ping(kerux.Request[int]):
    value: int


@dataclass(frozen=True, slots=True)
class _Pinged(kerux.Notification):
    value: int


class _Offset:
    """The singleton dependency of ``transient_1_dep``."""

    def __init__(self) -> None:
        self.value = 1


def _is_42(result: Any) -> bool:
    return result == VALUE + 1


def _mediator(is_async: bool) -> kerux.Mediator | kerux.SyncMediator:
    return kerux.Mediator() if is_async else kerux.SyncMediator()


def _send(is_async: bool, behaviours: int) -> Case:
    mediator = _mediator(is_async)
    if is_async:

        async def handle(request: _Ping) -> int:
            return request.value + 1

    else:

        def handle(request: _Ping) -> int:
            return request.value + 1

    mediator.register(_Ping, handle)
    for _ in range(behaviours):
        if is_async:

            async def passthrough(request: object, call_next: kerux.Next) -> Any:
                return await call_next()

        else:

            def passthrough(request: object, call_next: kerux.Next) -> Any:
                return call_next()

        mediator.add_behavior(passthrough)
    return Case(call=partial(mediator.send, _Ping(VALUE)), verify=_is_42)


def _publish_3(is_async: bool) -> Case:
    mediator = _mediator(is_async)
    tally = _Tally()
    for _ in range(3):
        if is_async:

            async def on_pinged(notification: _Pinged) -> None:
                tally.n += 1

        else:

            def on_pinged(notification: _Pinged) -> None:
                tally.n += 1

        mediator.register_notification_handler(_Pinged, on_pinged)

    def verify(result: Any) -> bool:
        return tally.delta() == 3 and result is None

    return Case(call=partial(mediator.publish, _Pinged(VALUE)), verify=verify)


def _transient_1_dep(is_async: bool) -> Case:
    mediator = _mediator(is_async)
    built = _Tally()
    offset = _Offset()

    class Handler:
        def __init__(self, offset: _Offset) -> None:
            built.n += 1
            self._offset = offset

        if is_async:

            async def handle(self, request: _Ping) -> int:
                return request.value + self._offset.value

        else:

            def handle(self, request: _Ping) -> int:
                return request.value + self._offset.value

    mediator.register(_Ping, factory=lambda: Handler(offset))

    def verify(result: Any) -> bool:
        return built.delta() == 1 and _is_42(result)

    return Case(call=partial(mediator.send, _Ping(VALUE)), verify=verify)


_BUILDERS = {
    "send": partial(_send, behaviours=0),
    "send_2_behaviours": partial(_send, behaviours=2),
    "publish_3": _publish_3,
    "transient_1_dep": _transient_1_dep,
}


def build(scenario: str, family: str) -> Case | None:
    builder = _BUILDERS.get(scenario)  # no "scoped": kerux has no DI scopes
    if builder is None or family not in ("sync", "async"):
        return None
    return builder(family == "async")
