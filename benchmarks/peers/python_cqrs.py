"""Adapter for ``python-cqrs`` (import name ``cqrs``): async only.

Configuration, as in its README: ``cqrs.bootstrap.requests.bootstrap(di_container=di.Container(),
commands_mapper=...)`` for requests and ``cqrs.bootstrap.events.bootstrap(..., events_mapper=...)``
(an ``EventMediator``) for ``publish_3``; the default dataclass ``Request`` / ``Response`` /
``DomainEvent`` models; class handlers resolved by the default ``di`` container on every dispatch;
behaviours are ``cqrs.middlewares.Middleware`` instances passed as ``middlewares=[...]``.

- ``sync``: ``None`` for every scenario. ``RequestMediator.send`` and ``EventMediator.send`` are
  coroutines and handlers must be ``async def``.
- ``transient_1_dep``: the handler is resolved per dispatch anyway; its singleton ``Offset`` is bound
  with ``di.bind_by_type`` to a provider returning one prebuilt instance (the ``di`` scope python-cqrs
  enters is the per-resolve ``"request"`` scope, so there is no app-lifetime scope to cache it in).
- ``scoped``: ``scope_strategy=cqrs.ScopeStrategy.SEND`` (one DI scope per ``send``) with a
  ``"request"``-scoped generator provider, the README's pattern for a session that must live until
  ``send`` returns; the generator's teardown closes it.

Logging: ``bootstrap`` always appends ``LoggingMiddleware``, which on every request builds
``request.to_dict()`` and ``response.to_dict()`` for two ``logger.debug(..., extra=...)`` calls before
any level check, and calls ``.to_dict()`` on any truthy response -- so handlers here return a
``Response`` object (``verify`` reads its ``value``). It is part of the documented setup, so it stays,
and ``send_2_behaviours`` runs three middlewares. But ``import cqrs`` also sets the ``"cqrs"`` logger to
DEBUG (``cqrs/message_brokers/producer.py``), so those two records are really created and, under any
root handler (even ``basicConfig(level=INFO)``), printed on every request. ``build()`` sets the
``"cqrs"`` logger to INFO, as a production logging config would; that roughly halves ``send``.
"""

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import cqrs
import di
from cqrs.bootstrap import events as events_bootstrap
from cqrs.bootstrap import requests as requests_bootstrap
from cqrs.middlewares import Middleware
from di.dependent import Dependent

from benchmarks.peers import VALUE, Case, Offset, Session, Tally, counted, is_answer, scenarios

NAME = "python-cqrs"


class _Pong(cqrs.Response):
    value: int


class _Ping(cqrs.Request[_Pong]):
    value: int


class _Pinged(cqrs.DomainEvent):
    value: int


class _Passthrough(Middleware):
    async def __call__(self, request: Any, handle: Any) -> Any:
        return await handle(request)


def _is_42(result: Any) -> bool:
    return isinstance(result, _Pong) and is_answer(result.value)


def _request_case(container: di.Container, handler: type, **options: Any) -> Case:
    def commands_mapper(mapper: cqrs.RequestMap) -> None:
        mapper.bind(_Ping, handler)

    mediator = requests_bootstrap.bootstrap(
        di_container=container, commands_mapper=commands_mapper, **options
    )
    return Case(call=partial(mediator.send, _Ping(value=VALUE)), verify=_is_42)


def _send(behaviours: int) -> Case:
    class Handler(cqrs.RequestHandler[_Ping, _Pong]):
        async def handle(self, request: _Ping) -> _Pong:
            return _Pong(value=request.value + 1)

    middlewares = [_Passthrough() for _ in range(behaviours)]
    return _request_case(di.Container(), Handler, middlewares=middlewares)


def _publish_3() -> Case:
    tally = Tally()
    handlers = []
    for _ in range(3):

        class OnPinged(cqrs.EventHandler[_Pinged]):
            async def handle(self, event: _Pinged) -> None:
                tally.n += 1

        handlers.append(OnPinged)

    def events_mapper(mapper: cqrs.EventMap) -> None:
        for handler in handlers:
            mapper.bind(_Pinged, handler)

    mediator = events_bootstrap.bootstrap(di_container=di.Container(), events_mapper=events_mapper)

    verify = counted(lambda result: result is None, (tally, 3))
    return Case(call=partial(mediator.send, _Pinged(value=VALUE)), verify=verify)


def _transient_1_dep() -> Case:
    built = Tally()

    class Handler(cqrs.RequestHandler[_Ping, _Pong]):
        def __init__(self, offset: Offset) -> None:
            built.n += 1
            self._offset = offset

        async def handle(self, request: _Ping) -> _Pong:
            return _Pong(value=request.value + self._offset.value)

    offset = Offset()
    container = di.Container()
    container.bind(di.bind_by_type(Dependent(lambda: offset, scope="request"), Offset))
    case = _request_case(container, Handler)
    return Case(call=case.call, verify=counted(case.verify, (built, 1)))


def _scoped() -> Case:
    opened, closed = Tally(), Tally()

    def session() -> Iterator[Session]:
        opened.n += 1
        yield Session()
        closed.n += 1

    class Handler(cqrs.RequestHandler[_Ping, _Pong]):
        def __init__(self, session: Session) -> None:
            self._session = session

        async def handle(self, request: _Ping) -> _Pong:
            return _Pong(value=request.value + self._session.increment)

    container = di.Container()
    container.bind(di.bind_by_type(Dependent(session, scope="request"), Session))
    case = _request_case(container, Handler, scope_strategy=cqrs.ScopeStrategy.SEND)
    return Case(call=case.call, verify=counted(case.verify, (opened, 1), (closed, 1)))


_BUILDERS = scenarios(send=_send, publish_3=_publish_3, transient_1_dep=_transient_1_dep, scoped=_scoped)


def build(scenario: str, family: str) -> Case | None:
    builder = _BUILDERS.get(scenario)
    if builder is None or family != "async":  # python-cqrs dispatches only through coroutines
        return None
    logging.getLogger("cqrs").setLevel(logging.INFO)  # undo the DEBUG level forced by ``import cqrs``
    return builder()
