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

from benchmarks.peers import VALUE, Case, Offset, Tally, counted, is_answer, offset_handler, scenarios

NAME = "kerux"


@dataclass(frozen=True, slots=True)
class _Ping(kerux.Request[int]):
    value: int


@dataclass(frozen=True, slots=True)
class _Pinged(kerux.Notification):
    value: int


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
    return Case(call=partial(mediator.send, _Ping(VALUE)), verify=is_answer)


def _publish_3(is_async: bool) -> Case:
    mediator = _mediator(is_async)
    tally = Tally()
    for _ in range(3):
        if is_async:

            async def on_pinged(notification: _Pinged) -> None:
                tally.n += 1

        else:

            def on_pinged(notification: _Pinged) -> None:
                tally.n += 1

        mediator.register_notification_handler(_Pinged, on_pinged)

    verify = counted(lambda result: result is None, (tally, 3))
    return Case(call=partial(mediator.publish, _Pinged(VALUE)), verify=verify)


def _transient_1_dep(is_async: bool) -> Case:
    mediator = _mediator(is_async)
    built = Tally()
    offset = Offset()
    handler = offset_handler(is_async, built)
    mediator.register(_Ping, factory=lambda: handler(offset))
    return Case(call=partial(mediator.send, _Ping(VALUE)), verify=counted(is_answer, (built, 1)))


# no "scoped": kerux has no DI scopes
_BUILDERS = scenarios(send=_send, publish_3=_publish_3, transient_1_dep=_transient_1_dep)


def build(scenario: str, family: str) -> Case | None:
    return _BUILDERS.build(scenario, family)
