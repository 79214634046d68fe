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

from benchmarks.peers import VALUE, Case

NAME = "py-mediatr"


class _Tally:
    """A counter whose ``delta`` is the increase since the previous ``delta``."""

    def __init__(self) -> None:
        self.n = 0
        self._seen = 0

    def delta(self) -> int:
        d, self._seen = self.n - self._seen, self.n
        return d


@dataclass(frozen=True, slots=True)
class _Ping(py_mediatR.IRequest[int]):
    value: int


@dataclass(frozen=True, slots=True)
class _Pinged(py_mediatR.INotification):
    value: int


class _Offset:
    """The singleton dependency of ``transient_1_dep``."""

    def __init__(self) -> None:
        self.value = 1


def _is_42(result: Any) -> bool:
    return result == VALUE + 1


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
    return Case(call=partial(send, _Ping(VALUE)), verify=_is_42)


def _publish_3(is_async: bool) -> Case:
    mediator = py_mediatR.Mediator(auto_discover=False)
    tally = _Tally()
    for _ in range(3):

        class OnPinged(py_mediatR.INotificationHandler):
            if is_async:

                async def handle(self, notification: _Pinged) -> None:
                    tally.n += 1

            else:

                def handle(self, notification: _Pinged) -> None:
                    tally.n += 1

        mediator.register_notification_handler(_Pinged, OnPinged())

    def verify(result: Any) -> bool:
        return tally.delta() == 3 and result is None

    publish = mediator.publish_async if is_async else mediator.publish
    return Case(call=partial(publish, _Pinged(VALUE)), verify=verify)


def _transient_1_dep(is_async: bool) -> Case:
    built = _Tally()

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

    container = py_mediatR.ServiceContainer()
    container.register_singleton(_Offset)
    mediator = py_mediatR.Mediator(
        auto_discover=False, handler_factory=container, handler_lifetime="transient"
    )
    mediator.register_handler(_Ping, Handler)

    def verify(result: Any) -> bool:
        return built.delta() == 1 and _is_42(result)

    send = mediator.send_async if is_async else mediator.send
    return Case(call=partial(send, _Ping(VALUE)), verify=verify)


def _scoped(is_async: bool) -> Case:
    opened, closed = _Tally(), _Tally()

    class Session:
        """The scoped dependency; the scope calls ``close()`` when it ends."""

        def __init__(self) -> None:
            opened.n += 1
            self.increment = 1

        def close(self) -> None:
            closed.n += 1

    class Handler:
        def __init__(self, session: Session) -> None:
            self._session = session

        if is_async:

            async def handle(self, request: _Ping) -> int:
                return request.value + self._session.increment

        else:

            def handle(self, request: _Ping) -> int:
                return request.value + self._session.increment

    container = py_mediatR.ServiceContainer()
    container.register_scoped(Session)
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

    def verify(result: Any) -> bool:
        new_sessions, ended = opened.delta(), closed.delta()
        return _is_42(result) and new_sessions == 1 and ended == 1

    return Case(call=call, verify=verify)


_BUILDERS = {
    "send": partial(_send, behaviours=0),
    "send_2_behaviours": partial(_send, behaviours=2),
    "publish_3": _publish_3,
    "transient_1_dep": _transient_1_dep,
    "scoped": _scoped,
}


def build(scenario: str, family: str) -> Case | None:
    builder = _BUILDERS.get(scenario)
    if builder is None or family not in ("sync", "async"):
        return None
    return builder(family == "async")
