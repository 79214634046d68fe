"""Subscription queries: a query's answer now, then again whenever what it reads changes.

``mediator.subscribe(query)`` answers the query at once, then waits on a :class:`ChangeFeed` (the read-model
engine's, registered by ``ReadModels.install``) and asks again each time the read models the query ``reads``
commit a change that can affect it. Each :class:`Answer` carries the consistency token its read models had
reached when it was asked: everything up to that position of the log is in it.

The feed keeps one pending change per subscription, not a queue: a subscriber slower than the changes asks once
for all that came meanwhile and gets the latest answer. An answer equal to the one before is not yielded again.
Each answer is asked in a dispatch scope of its own (inside the caller's, so its principal and correlation id),
so nothing scoped lives as long as the subscription.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import attrs

from ._errors import SubscriptionError

if TYPE_CHECKING:
    from types import TracebackType

    from ._messages import Query

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@attrs.frozen
class Answer(Generic[R_co]):
    """One answer of a subscription: the query's ``value``, and the ``token`` (a position of the log) its read
    models had all reached when it was asked. Resume a subscription after it with ``subscribe(query,
    after=answer.token)``; pass it to ``consistent(...)`` to read at least as fresh elsewhere."""

    value: R_co
    token: int


class Watch(Protocol):
    """One subscription's view of a :class:`ChangeFeed`: when to ask again."""

    def next(self, timeout: float | None = None) -> int | None:
        """Block until a change that can affect the answer is committed (or one is pending already); the token the
        read models have reached, or ``None`` once the watch is closed (or ``timeout`` s passed)."""
        ...

    async def next_async(self) -> int | None:
        """:meth:`next` for the event loop: ``None`` once the watch is closed."""
        ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None:
        """Stop watching (from any thread): a waiting :meth:`next` returns ``None``."""
        ...


class ChangeFeed(Protocol):
    """What tells subscriptions that their answers may have changed (the read-model engine's ``live`` hub)."""

    def watch(self, query: Any, after: int | None) -> Watch:
        """A watch for ``query``: a change is pending at once, unless ``after`` (a token an earlier answer carried)
        is given and nothing that can affect the answer was committed since.

        Raises:
            SubscriptionError: if ``query`` cannot be watched (it names no read models, or unknown ones).
        """
        ...


class DependsOnKeys(Protocol):
    """A query that narrows its subscription to the events of some keys: only a change by an event whose
    ordering key is one of ``depends_on()`` asks it again (``GetOrderDetails(order_id)``: that order's events)."""

    def depends_on(self) -> Iterable[str]: ...


_NOTHING: Any = object()


def _watch(feed: ChangeFeed | None, query: Any, after: int | None) -> Watch:
    if feed is None:
        raise SubscriptionError(type(query), "this mediator has no change feed; install a read-model engine "
                                "(ReadModels.install) in its registry before building it.")
    return feed.watch(query, after)


class _Answers(Generic[R]):
    """What both twins keep: the mediator, the query, its watch, and the last answer given (not given again)."""

    def __init__(self, mediator: Any, query: Query[R], watch: Watch) -> None:  # a Mediator or AsyncMediator
        self._mediator = mediator
        self._query = query
        self._watch = watch
        self._last: Any = _NOTHING

    def _new(self, value: R, token: int) -> Answer[R] | None:
        """``value`` as the next answer, or ``None`` if it equals the last one given."""
        if self._last is not _NOTHING and value == self._last:
            return None
        self._last = value
        return Answer(value, token)

    @property
    def closed(self) -> bool:
        return self._watch.closed

    def close(self) -> None:
        """End the subscription; its feed forgets it (from any thread: a waiting iteration then ends)."""
        self._watch.close()


class Subscription(_Answers[R]):
    """The answers of a subscribed query, as a blocking iterator (``Mediator.subscribe``).

    Use it as a context manager, or call :meth:`close` (from any thread: a waiting iteration then ends).
    """

    def __iter__(self) -> Subscription[R]:
        return self

    def __next__(self) -> Answer[R]:
        answer = self.next()
        if answer is None:
            raise StopIteration
        return answer

    def next(self, timeout: float | None = None) -> Answer[R] | None:
        """The next answer; ``None`` once closed, or when ``timeout`` s pass with none."""
        while True:
            token = self._watch.next(timeout)
            if token is None:
                return None
            try:
                with self._mediator.scope():
                    answer = self._new(self._mediator.ask(self._query), token)
            except BaseException:
                self.close()
                raise
            if answer is not None:
                return answer

    def __enter__(self) -> Subscription[R]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncSubscription(_Answers[R]):
    """The answers of a subscribed query, as an async iterator (``AsyncMediator.subscribe``).

    Use it as an async context manager, or call :meth:`aclose`; a task cancelled while it waits leaves nothing
    behind once the subscription is closed (or dropped).
    """

    def __aiter__(self) -> AsyncSubscription[R]:
        return self

    async def __anext__(self) -> Answer[R]:
        while True:
            token = await self._watch.next_async()
            if token is None:
                raise StopAsyncIteration
            try:
                async with self._mediator.scope():
                    answer = self._new(await self._mediator.ask(self._query), token)
            except BaseException:
                self.close()
                raise
            if answer is not None:
                return answer

    async def aclose(self) -> None:
        """End the subscription; its feed forgets it (:meth:`close` from synchronous code)."""
        self.close()

    async def __aenter__(self) -> AsyncSubscription[R]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._watch.close()
