"""Adapter for ``py-mediatR``: ``Mediator.send`` / ``publish`` (sync) and ``send_async`` /
``publish_async`` (async).

Configuration: ``Mediator(auto_discover=False)`` with explicit ``register_handler`` /
``register_notification_handler`` (the README's "Explicit registration"). The default,
``auto_discover=True``, walks up to the project root and imports every ``*.py`` under it when the
``Mediator`` is built -- not something to do inside a benchmark. Behaviours are ``IPipelineBehavior``
instances passed as ``behaviors=[...]``; notifications use the default SEQUENTIAL strategy.
DI uses the library's own ``ServiceContainer`` passed as ``handler_factory``:

- ``transient_1_dep``: ``register_singleton(Offset)``, the handler registered as a class (resolved
  and auto-wired by the container) and ``handler_lifetime="transient"``; without it the mediator
  caches the first handler instance forever.
- ``scoped``: ``register_scoped(Session)`` and one ``ServiceScope`` per dispatch, entered the README's
  way (``with scoped_mediator(mediator, container) as m: m.send(...)``; async: ``async with
  container.create_scope()`` and ``scope.mediator(mediator)``, as its FastAPI dependency does). The
  session's ``close()`` is called by the scope on exit.

Do not use the ``@py_mediatR.handler`` decorator here: it fills a module-global list that every later
``Mediator`` picks up. Registration on an instance keeps builds independent.
"""

from dataclasses import dataclass
from functools import partial
from typing import Any

import py_mediatR

from benchmarks.peers import VALUE, Case, Offset, Session, Tally, counted, is_answer, offset_handler, scenarios

NAME = "py-mediatr"


@dataclass(frozen=True, slots=True)
class _Ping(py_mediatR.IRequest[int]):
    value: int


@dataclass(frozen=True, slots=True)
class _Pinged(py_mediatR.INotification):
    value: int


def _send(is_async: bool, behaviours: int) -> Case:
    class Handler:
        if is_async:

            async def handle(self, request: _Ping) -> int:
                return request.value + 1

        else:

            def handle(self, request: _Ping) -> int:
                return request.value + 1

    class Passthrough(py_mediatR.IPipelineBehavior):
        if is_async:

            async def handle(self, request: Any, next_handler: Any) -> Any:
                return await next_handler()

        else:

            def handle(self, request: Any, next_handler: Any) -> Any:
                return next_handler()

    mediator = py_mediatR.Mediator(
        auto_discover=False, behaviors=[Passthrough() for _ in range(behaviours)] or None
    )
    mediator.register_handler(_Ping, Handler())
    send = mediator.send_async if is_async else mediator.send
    return Case(call=partial(send, _Ping(VALUE)), verify=is_answer)


def _publish_3(is_async: bool) -> Case:
    mediator = py_mediatR.Mediator(auto_discover=False)
    tally = Tally()
    for _ in range(3):

        class OnPinged(py_mediatR.INotificationHandler):
            if is_async:

                async def handle(self, notification: _Pinged) -> None:
                    tally.n += 1

            else:

                def handle(self, notification: _Pinged) -> None:
                    tally.n += 1

        mediator.register_notification_handler(_Pinged, OnPinged())

    verify = counted(lambda result: result is None, (tally, 3))
    publish = mediator.publish_async if is_async else mediator.publish
    return Case(call=partial(publish, _Pinged(VALUE)), verify=verify)


def _transient_1_dep(is_async: bool) -> Case:
    built = Tally()
    container = py_mediatR.ServiceContainer()
    container.register_singleton(Offset)
    mediator = py_mediatR.Mediator(
        auto_discover=False, handler_factory=container, handler_lifetime="transient"
    )
    mediator.register_handler(_Ping, offset_handler(is_async, built))

    send = mediator.send_async if is_async else mediator.send
    return Case(call=partial(send, _Ping(VALUE)), verify=counted(is_answer, (built, 1)))


def _scoped(is_async: bool) -> Case:
    opened, closed = Tally(), Tally()

    class ClosingSession(Session):
        """The scoped dependency; the scope calls ``close()`` when it ends."""

        def __init__(self) -> None:
            opened.n += 1
            super().__init__()

        def close(self) -> None:
            closed.n += 1

    class Handler:
        def __init__(self, session: ClosingSession) -> None:
            self._session = session

        if is_async:

            async def handle(self, request: _Ping) -> int:
                return request.value + self._session.increment

        else:

            def handle(self, request: _Ping) -> int:
                return request.value + self._session.increment

    container = py_mediatR.ServiceContainer()
    container.register_scoped(ClosingSession)
    mediator = py_mediatR.Mediator(auto_discover=False, handler_factory=container)
    mediator.register_handler(_Ping, Handler)
    request = _Ping(VALUE)

    if is_async:

        async def call() -> Any:
            async with container.create_scope() as scope:
                return await scope.mediator(mediator).send_async(request)

    else:

        def call() -> Any:
            with py_mediatR.scoped_mediator(mediator, container) as scoped:
                return scoped.send(request)

    return Case(call=call, verify=counted(is_answer, (opened, 1), (closed, 1)))


_BUILDERS = scenarios(send=_send, publish_3=_publish_3, transient_1_dep=_transient_1_dep, scoped=_scoped)


def build(scenario: str, family: str) -> Case | None:
    return _BUILDERS.build(scenario, family)
