"""Adapter for ``lato``: ``Application.execute`` / ``publish`` (sync) and ``execute_async`` /
``publish_async`` (async), set up as in its README.

One ``Application`` per case; handlers are functions registered with ``@app.handler(MessageType)``;
behaviours are ``@app.transaction_middleware`` functions ``(ctx, call_next)`` (async ones for the async
family, since lato refuses a sync middleware around an async handler); events go to every handler
registered for their type. Dependencies are injected into handler parameters by type (or name) from
the application's dependency provider, on every call.

- ``transient_1_dep``: lato has no handler classes, so nothing is "built": the per-dispatch work is the
  provider resolving the handler's parameters, here the singleton ``Offset`` given to
  ``Application(offset=...)``. ``verify`` can check only the value.
- ``scoped``: lato's scope is the transaction context opened for every ``execute``; the scoped
  dependency is created in ``@app.on_enter_transaction_context`` with ``ctx.set_dependencies`` and
  closed in ``@app.on_exit_transaction_context``, the README's pattern for a per-transaction session.

Every ``execute`` logs ``Transaction started`` / ``Ended transaction`` at DEBUG level on the ``lato``
loggers (cheap unless DEBUG is enabled), and messages are pydantic models (built once, at build time).
"""

from functools import partial
from typing import Any

import lato

from benchmarks.peers import VALUE, Case, Offset, Session, Tally, counted, is_answer, scenarios

NAME = "lato"


class _Ping(lato.Command):
    value: int


class _Pinged(lato.Event):
    value: int


def _send(is_async: bool, behaviours: int) -> Case:
    app = lato.Application(NAME)
    if is_async:

        @app.handler(_Ping)
        async def handle(command: _Ping) -> int:
            return command.value + 1

    else:

        @app.handler(_Ping)
        def handle(command: _Ping) -> int:
            return command.value + 1

    for _ in range(behaviours):
        if is_async:

            async def passthrough(ctx: lato.TransactionContext, call_next: Any) -> Any:
                return await call_next()

        else:

            def passthrough(ctx: lato.TransactionContext, call_next: Any) -> Any:
                return call_next()

        app.transaction_middleware(passthrough)
    execute = app.execute_async if is_async else app.execute
    return Case(call=partial(execute, _Ping(value=VALUE)), verify=is_answer)


def _publish_3(is_async: bool) -> Case:
    app = lato.Application(NAME)
    tally = Tally()
    for _ in range(3):
        if is_async:

            async def on_pinged(event: _Pinged) -> None:
                tally.n += 1

        else:

            def on_pinged(event: _Pinged) -> None:
                tally.n += 1

        app.handler(_Pinged)(on_pinged)

    verify = counted(lambda result: len(result) == 3, (tally, 3))
    publish = app.publish_async if is_async else app.publish
    return Case(call=partial(publish, _Pinged(value=VALUE)), verify=verify)


def _transient_1_dep(is_async: bool) -> Case:
    app = lato.Application(NAME, offset=Offset())
    if is_async:

        @app.handler(_Ping)
        async def handle(command: _Ping, offset: Offset) -> int:
            return command.value + offset.value

    else:

        @app.handler(_Ping)
        def handle(command: _Ping, offset: Offset) -> int:
            return command.value + offset.value

    execute = app.execute_async if is_async else app.execute
    return Case(call=partial(execute, _Ping(value=VALUE)), verify=is_answer)


def _scoped(is_async: bool) -> Case:
    app = lato.Application(NAME)
    opened, closed = Tally(), Tally()

    @app.on_enter_transaction_context
    def begin(ctx: lato.TransactionContext) -> None:
        opened.n += 1
        ctx.set_dependencies(session=Session())

    @app.on_exit_transaction_context
    def end(ctx: lato.TransactionContext, exception: Exception | None = None) -> None:
        closed.n += 1

    if is_async:

        @app.handler(_Ping)
        async def handle(command: _Ping, session: Session) -> int:
            return command.value + session.increment

    else:

        @app.handler(_Ping)
        def handle(command: _Ping, session: Session) -> int:
            return command.value + session.increment

    execute = app.execute_async if is_async else app.execute
    verify = counted(is_answer, (opened, 1), (closed, 1))
    return Case(call=partial(execute, _Ping(value=VALUE)), verify=verify)


_BUILDERS = scenarios(send=_send, publish_3=_publish_3, transient_1_dep=_transient_1_dep, scoped=_scoped)


def build(scenario: str, family: str) -> Case | None:
    return _BUILDERS.build(scenario, family)
