"""Consistency tokens and waiting for them: read-your-writes.

A command's commit position is its caller's *token* (:func:`last_token`). A query run inside
:func:`consistent` with that token waits, in the :class:`ReadYourWrites` behaviour, until every read model it
``reads`` has reached it, so the caller reads its own writes although the read models are updated after the
command commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from .._messages import qualname
from ._errors import ConsistencyTimeoutError, TokenBeyondHeadError
from ._ports import DeadLetter
from ._projections import Delivery

if TYPE_CHECKING:
    from .. import Build
    from ._engine import ReadModels

_last_token: contextvars.ContextVar[int | None] = contextvars.ContextVar("mediator_last_token", default=None)
_consistency: contextvars.ContextVar[Consistency | None] = contextvars.ContextVar("mediator_consistency", default=None)


def last_token() -> int | None:
    """The commit position of the last command this thread or task sent (``None`` before any).

    Pass it to :func:`consistent` for a later query to read its own writes.
    """
    return _last_token.get()


@contextlib.contextmanager
def fresh_token() -> Iterator[None]:
    """Start a unit of work of its own (one HTTP request): inside, :func:`last_token` is ``None`` until one of its
    commands commits, whatever the calling context held; the caller's token is back afterwards."""
    reset = _last_token.set(None)
    try:
        yield
    finally:
        _last_token.reset(reset)


@attrs.define
class Consistency:
    """What :func:`consistent` asked for, and whether the answer came back stale."""

    token: int
    timeout: float
    stale_ok: bool
    stale: bool = False


@contextlib.contextmanager
def consistent(token: int | None, *, timeout: float = 5.0, stale_ok: bool = False) -> Iterator[Consistency]:
    """Make queries inside the block wait until the read models they read have reached ``token``.

    On timeout they raise :class:`ConsistencyTimeoutError`, or with ``stale_ok``
    answer anyway and set ``.stale`` on the yielded object.
    """
    wanted = Consistency(token or 0, timeout, stale_ok)
    reset = _consistency.set(wanted)
    try:
        yield wanted
    finally:
        _consistency.reset(reset)


class Progress:
    """Where waiters for a token learn that projections moved: woken by this process's runner, polling otherwise.

    A projection has reached a token when every event up to it has been applied: its checkpoint is past the
    token *and* none of its events at or before the token is parked or blocked (:meth:`Storage.applied`).
    """

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.condition = threading.Condition()
        self.changes = 0
        """Notifications so far: a waiter that looked before a change and waits after it sees the count moved
        (a notification sent while it was not waiting is not lost)."""

    def notify(self) -> None:
        """Wake every waiter: a projection committed a batch, or a rebuild was swapped in."""
        with self.condition:
            self.changes += 1
            self.condition.notify_all()

    def behind(self, token: int, names: Iterable[str]) -> dict[str, int]:
        """The positions applied by those of ``names`` that have not reached ``token`` (empty when all have)."""
        engine = self.engine
        storage, tracks = engine.storage, engine._tracks
        behind = {}
        for name in names:
            if tracks[name].delivery is Delivery.INLINE:
                continue
            position = engine.applied(name, storage.current_generation(name))  # a partitioned one: every partition
            if position < token:
                behind[name] = position
        return behind

    def parked(self, token: int, names: Iterable[str], before: float | None = None) -> dict[str, DeadLetter]:
        """The earliest dead letter at or before ``token`` of each of ``names`` that has one; with ``before`` (a
        time), only those no automatic retry may clear by then: waiting for those cannot help."""
        found = {}
        for name in names:
            letters = [letter for letter in self.engine.dead_letters(name) if letter.position <= token]
            if letters and (before is None or _not_retried_by(letters[0], before)):
                found[name] = letters[0]
        return found

    def wait(self, token: int, names: Iterable[str], timeout: float) -> bool:
        """Wait until the projections ``names`` have reached ``token``; ``False`` on timeout, or at once when a
        parked event holds one back that no automatic retry can clear within the timeout.

        Runner threads in this process wake the waiter as soon as they commit a
        batch; progress made by a worker process is seen by polling the
        checkpoints, every 0.25 ms at first, backing off to every 5 ms.
        """
        names = list(names)
        deadline = time.monotonic() + timeout
        wall_deadline = time.time() + timeout
        # Progress made elsewhere (a worker, or another process's runner holding the projection's lease) is
        # not announced here: poll for it. With leases, always: this runner may lose one at any moment.
        remote = self.engine.storage.leases or not all(self.engine.runs_here(name) for name in names)
        pause = 0.00025
        checked_letters = False
        with self.condition:
            while behind := self.behind(token, names):
                if not checked_letters:
                    head = self.engine.storage.head()  # the slow path only: a token already reached costs nothing
                    if token > head:
                        raise TokenBeyondHeadError(token, head)
                    if self._held_by_letters(token, behind, wall_deadline):
                        return False
                checked_letters = True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.condition.wait(min(left, pause) if remote else left)
                pause = min(pause * 2, 0.005)
        return True

    def _held_by_letters(self, token: int, behind: dict[str, int], wall_deadline: float) -> bool:
        """Whether one of the projections behind is held back by a parked event nothing clears before the
        deadline (checked once per wait: a checkpoint short of the token is the usual, cheap case)."""
        engine = self.engine
        stuck = [name for name in behind if engine.checkpoint(name, engine.storage.current_generation(name)) >= token]
        return bool(stuck) and bool(self.parked(token, stuck, before=wall_deadline))


def _not_retried_by(letter: DeadLetter, when: float) -> bool:
    return letter.retry_at is None or letter.retry_at > when


class ReadYourWrites:
    """The behaviour that makes a query wait for the read models it ``reads`` inside :func:`consistent`.

    A query class opts in by naming its projections: ``reads = ("order_details",)``.
    """

    needs_scope = False

    def __init__(self, engine: ReadModels, reads: tuple[str, ...] = ()) -> None:
        self.engine = engine
        self.reads = reads

    def for_message(self, message_type: type, build: Build) -> ReadYourWrites | None:
        reads = tuple(getattr(message_type, "reads", ()))
        if not reads:
            return None
        unknown = [name for name in reads if name not in self.engine._tracks]
        if unknown:
            build.problem(f"{qualname(message_type)} reads unknown projection(s) {unknown}; add them to the engine.")
        return ReadYourWrites(self.engine, reads)

    def _before(self) -> None:
        wanted = _consistency.get()
        if wanted is None or wanted.token <= 0:
            return
        for name in self.reads:  # a read model being replaced does not move: say so now, not at the timeout
            self.engine.check_available(name)
        if not self.engine.wait(wanted.token, self.reads, timeout=wanted.timeout):
            if not wanted.stale_ok:
                progress = self.engine.progress
                behind = progress.behind(wanted.token, self.reads)
                raise ConsistencyTimeoutError(wanted.token, behind, wanted.timeout,
                                              progress.parked(wanted.token, behind))
            wanted.stale = True

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._before()
        return next(message)

    async def handle_async(self, message: Any, next: Callable[[Any], Any]) -> Any:
        await asyncio.to_thread(self._before)
        return await next(message)
