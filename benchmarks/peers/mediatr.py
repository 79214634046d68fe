"""Adapter for ``mediatr`` (megafetis/mediatr_py): ``Mediator.send`` (sync) and ``send_async`` (async).

Configuration, as in its README: handlers and behaviours are plain functions registered with
``Mediator.register_handler`` / ``Mediator.register_behavior`` (the request type comes from the first
parameter's annotation); ``transient_1_dep`` uses a class handler built on every dispatch through
``Mediator(handler_class_manager=...)``, which the README suggests pointing at an injector -- here a
``punq`` container holding the singleton ``offset``.

- ``publish_3``: ``None``. mediatr has no notifications/events: one handler per request type.
- ``scoped``: ``None``. No DI scopes: ``handler_class_manager`` is called per handler with no
  per-dispatch context to hang a scope on.

mediatr keeps its handler and behaviour registries in *module globals* shared by every
``Mediator``; a request type keeps the first handler registered for it, and every ``send`` scans all
behaviour keys. So the request types, handlers and behaviours live at module level here, one set per
scenario and family, and ``build()`` registers them idempotently: calling it again in one process
neither replaces handlers nor grows the registries.
"""

from functools import partial
from typing import Any

import mediatr
import punq

from benchmarks.peers import VALUE, Case, Offset, is_answer

NAME = "mediatr"


class _Ping:
    def __init__(self, value: int) -> None:
        self.value = value


class _PingAsync(_Ping):
    pass


class _PingBehaved(_Ping):
    pass


class _PingBehavedAsync(_Ping):
    pass


class _PingTransient(_Ping):
    pass


class _PingTransientAsync(_Ping):
    pass


def _handle(request: _Ping) -> int:
    return request.value + 1


async def _handle_async(request: _PingAsync) -> int:
    return request.value + 1


def _handle_behaved(request: _PingBehaved) -> int:
    return request.value + 1


async def _handle_behaved_async(request: _PingBehavedAsync) -> int:
    return request.value + 1


def _outer(request: _PingBehaved, call_next: Any) -> Any:
    return call_next()


def _inner(request: _PingBehaved, call_next: Any) -> Any:
    return call_next()


async def _outer_async(request: _PingBehavedAsync, call_next: Any) -> Any:
    return await call_next()


async def _inner_async(request: _PingBehavedAsync, call_next: Any) -> Any:
    return await call_next()


class _TransientHandler:
    built = 0  # handlers constructed so far, across every build()

    def __init__(self, offset: Offset) -> None:
        _TransientHandler.built += 1
        self._offset = offset

    def handle(self, request: _PingTransient) -> int:
        return request.value + self._offset.value


class _TransientHandlerAsync:
    built = 0

    def __init__(self, offset: Offset) -> None:
        _TransientHandlerAsync.built += 1
        self._offset = offset

    async def handle(self, request: _PingTransientAsync) -> int:
        return request.value + self._offset.value


def build(scenario: str, family: str) -> Case | None:
    if family not in ("sync", "async") or scenario in ("publish_3", "scoped"):
        return None
    is_async = family == "async"

    if scenario == "send":
        mediatr.Mediator.register_handler(_handle_async if is_async else _handle)
        request: _Ping = _PingAsync(VALUE) if is_async else _Ping(VALUE)
        mediator = mediatr.Mediator()

    elif scenario == "send_2_behaviours":
        mediatr.Mediator.register_handler(_handle_behaved_async if is_async else _handle_behaved)
        for behaviour in (_outer_async, _inner_async) if is_async else (_outer, _inner):
            mediatr.Mediator.register_behavior(behaviour)
        request = _PingBehavedAsync(VALUE) if is_async else _PingBehaved(VALUE)
        mediator = mediatr.Mediator()

    elif scenario == "transient_1_dep":
        handler_cls = _TransientHandlerAsync if is_async else _TransientHandler
        container = punq.Container()
        container.register(Offset, instance=Offset())
        container.register(handler_cls)  # punq's default scope: a new instance per resolve
        mediatr.Mediator.register_handler(handler_cls)
        request = _PingTransientAsync(VALUE) if is_async else _PingTransient(VALUE)

        def resolve(cls: type, is_behavior: bool = False) -> Any:
            return container.resolve(cls)

        mediator = mediatr.Mediator(handler_class_manager=resolve)
        seen = [handler_cls.built]

        def verify(result: Any) -> bool:
            new, seen[0] = handler_cls.built - seen[0], handler_cls.built
            return is_answer(result) and new == 1

        send = mediator.send_async if is_async else mediator.send
        return Case(call=partial(send, request), verify=verify)

    else:
        return None

    send = mediator.send_async if is_async else mediator.send
    return Case(call=partial(send, request), verify=is_answer)
