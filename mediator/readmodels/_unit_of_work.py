"""The write side: a command's unit of work, and the behaviour that commits it with its events (the outbox).

A command's handlers take the scoped :class:`UnitOfWork`, change the write model through ``uow.handle`` and
record events with ``uow.record(event)``. The :class:`SyncReadModels` behaviour commits the state change, the
events (appended to the log) and the inline projections in one transaction, and leaves the commit position as
the caller's consistency token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from .. import Command, Event, Scope, current_context
from .._context import _current, new_event_id
from .._messages import qualname
from ._apply import FAILED
from ._errors import StorageError, UnregisteredEventError
from ._ports import IdempotencyRecord, NewEvent, WriteSession
from ._projections import Delivery
from ._tokens import _last_token
from ._versions import Track, record, unrecorded_version

if TYPE_CHECKING:
    from .. import Mediator
    from ._engine import ReadModels
    from ._schedules import Delay, When

log = structlog.get_logger("mediator.readmodels")

_encode_metadata = json.JSONEncoder(sort_keys=True).encode
"""``json.dumps(metadata, sort_keys=True)`` with its encoder made once: given options, ``dumps`` makes one a call,
so once a command."""


class UnitOfWork:
    """One command's transaction and the events it records; a scoped service.

    ``handle`` is the backend's write handle (a ``sqlite3.Connection`` inside
    ``BEGIN IMMEDIATE`` for SQLite); the transaction starts on first use. Commands
    commit it (through :class:`SyncReadModels`); anything else that uses it (a
    query that wrote) has it rolled back when its dispatch scope ends.
    """

    def __init__(self, engine: ReadModels, scope: Scope | None = None) -> None:
        self.engine = engine
        self._session: WriteSession | None = None
        self._events: list[tuple[Any, str | None]] = []
        self.depth = 0
        """How many commands of the dispatch are inside it now: only the outermost commits."""
        self._scope = scope
        """The dispatch scope to hand this unit of work's end to, once something outside a command uses it."""
        self.identity_map: dict[Hashable, Any] = {}
        """What the handlers of this transaction loaded or saved (aggregates), by keys of their choosing: a command
        nested in another (``PlaceOrder`` then ``ReserveStock``) finds the aggregate its caller just saved instead
        of reading it back. Emptied when the transaction commits or rolls back; it holds only what handlers put."""
        self._keys: list[tuple[str, str, str, str, float, float]] = []
        """The idempotency records to keep with this transaction, but for their position (known at the append):
        key, command, digest, result, recorded at, expires at."""
        self.replayed: int | None = None
        """The consistency token of the record an idempotent command was answered from, if one was."""

    @classmethod
    def of(cls, scope: Scope, engine: ReadModels) -> UnitOfWork:
        """The unit of work of ``scope``, made on first use: the one way one is made."""
        uow: UnitOfWork | None = scope.get(UnitOfWork)
        if uow is None:
            uow = cls(engine, scope)
            scope.put(UnitOfWork, uow)
        return uow

    def _used_outside_a_command(self) -> None:
        # A command needs none of this: SyncReadModels commits or rolls back itself, so its scope has no exit.
        if self._scope is not None:
            scope, self._scope = self._scope, None
            scope.on_exit(self._end)

    @property
    def session(self) -> WriteSession:
        if self._session is None:
            if not self.depth:
                self._used_outside_a_command()
            self._session = self.engine.storage.begin()
        return self._session

    @property
    def handle(self) -> Any:
        """The write model's handle, inside this command's transaction."""
        return self.session.handle

    def record(self, event: Event, *, key: str | None = None) -> None:
        """Record ``event`` to be appended when the command commits; ``key`` orders it (e.g. an order id)."""
        if event.__class__ not in self.engine.types.classes:
            raise UnregisteredEventError(event.__class__)
        if not self.depth:  # (tested here rather than in the call: every command records)
            self._used_outside_a_command()
        self._events.append((event, key))

    def schedule(self, command: Command[Any], *, at: When | None = None, after: Delay | None = None,
                 schedule_id: str | None = None) -> str:
        """Schedule ``command`` to be dispatched once, ``at`` a time or ``after`` a delay (by the engine's clock),
        kept with this transaction's writes; return its id (``schedule_id`` if given: scheduling under an id
        again replaces that one, so a retried step schedules once).

        Raises:
            UnschedulableCommandError: if the engine was not told it may schedule the command's class
                (``engine.schedulable(...)``).
            ScheduleTimeError: without one clear due time.
        """
        schedules = self.engine.schedules
        row = schedules.make(command, at, after, schedule_id)
        schedules.scheduled(self.session, row)
        return row.schedule_id

    def cancel(self, schedule_id: str) -> bool:
        """Cancel a scheduled command with this transaction's writes (a timeout whose awaited event came); whether
        it was still scheduled (``False``: it has fired, or was cancelled already)."""
        return self.session.unschedule(schedule_id)

    def adopt(self, session: WriteSession) -> None:
        """Run in ``session``, begun by the caller (the engine firing a scheduled command deletes it there)."""
        self._session = session

    def commit(self) -> int:
        """Append the recorded events, apply inline projections, commit; return the commit position."""
        session = self._session or self.session
        events, self._events = self._events, []
        keys, self._keys = self._keys, []
        try:
            position = self.engine.writer.commit(session, events, keys)
        finally:
            self._session = None  # committed or rolled back: never reuse it
            self.identity_map.clear()
        if self.replayed is not None:  # answered from a record: its token, unless this transaction wrote too
            if not events and not keys:
                position = self.replayed
                _last_token.set(position)
            self.replayed = None
        return position

    def rollback(self) -> None:
        """Discard the recorded events and whatever the transaction changed."""
        self._events.clear()
        self._keys.clear()
        self.replayed = None
        self.identity_map.clear()
        if self._session is not None:
            session, self._session = self._session, None
            session.rollback()

    def _end(self, exc: BaseException | None) -> None:
        # Anything not committed by SyncReadModels (a failed command, a query that wrote) is discarded.
        if self._events and exc is None:
            log.error("recorded events discarded: they were recorded outside a command, which alone commits them",
                      events=[qualname(type(event)) for event, _key in self._events])
        self.rollback()


@contextlib.contextmanager
def joined(engine: ReadModels, mediator: Mediator, session: WriteSession, cause: object,
           cause_id: str) -> Iterator[UnitOfWork]:
    """A dispatch scope whose commands join ``session``, begun by the caller, as if sent from a handler of
    ``cause`` (a process manager's event, a scheduled command's record; ``cause_id`` their causation id): they
    are nested, so none commits or rolls back by itself, nor is retried inside the shared transaction by a
    behaviour that retries only root commands. The block's end commits everything, or an exception rolls it back.
    """
    with mediator.scope(causation_id=cause_id) as context:
        context.message = cause
        context._message_id = cause_id
        uow = UnitOfWork(engine, context.scope)
        uow.adopt(session)
        uow.depth = 1
        context.scope.put(UnitOfWork, uow)
        try:
            yield uow
        except BaseException:
            uow.depth = 0
            uow.rollback()
            raise
        uow.depth = 0
        uow.commit()


class SyncReadModels:
    """The behaviour that commits a command's state change, its events and inline projections together.

    Only the outermost command of a dispatch commits; commands sent from inside
    it join its transaction.
    """

    needs_scope = True

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine

    @staticmethod
    def _leave(uow: UnitOfWork, succeeded: bool) -> None:
        uow.depth -= 1
        if uow.depth == 0:  # only the outermost command commits; nested ones joined its transaction
            if succeeded:
                uow.commit()
            else:
                uow.rollback()

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        # UnitOfWork.of and _leave written out: every command comes through here.
        scope = _current.get().scope  # type: ignore[union-attr]  # needs_scope: there is always a context
        uow: UnitOfWork | None = scope.get(UnitOfWork)
        if uow is None:
            uow = UnitOfWork(self.engine, scope)
            scope.put(UnitOfWork, uow)
        uow.depth += 1
        try:
            result = next(message)
        except BaseException:
            uow.depth -= 1
            if not uow.depth:
                uow.rollback()
            raise
        uow.depth -= 1
        if not uow.depth:  # only the outermost command commits; nested ones joined its transaction
            uow.commit()
        return result

    async def handle_async(self, message: Any, next: Callable[[Any], Any]) -> Any:
        uow = UnitOfWork.of(current_context().scope, self.engine)
        if uow.depth:  # a nested command: it runs inside its parent's transaction and lock
            return await self._run_async(uow, message, next)
        # The storage's write lock blocks the thread: commands interleaved on one event loop would wait on
        # each other forever. Take turns on the loop instead.
        async with self.engine.writer.loop_lock():
            return await self._run_async(uow, message, next)

    async def _run_async(self, uow: UnitOfWork, message: Any, next: Callable[[Any], Any]) -> Any:
        uow.depth += 1
        try:
            result = await next(message)
        except BaseException:
            self._leave(uow, False)
            raise
        self._leave(uow, True)
        return result


class Writer:
    """Commits units of work: encodes the events, appends them, applies the inline projections, commits."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.inline: tuple[Track, ...] = ()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())

    def loop_lock(self) -> asyncio.Lock:
        """One lock per running event loop, serialising the async commands on it."""
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    def commit(self, session: WriteSession, recorded: Sequence[tuple[Any, str | None]],
               keys: Sequence[tuple[str, str, str, str, float, float]] = ()) -> int:
        """Append ``recorded`` (events with their keys), keep the idempotency records ``keys`` with the position,
        apply inline projections, commit; return the position."""
        engine = self.engine
        try:
            now = time.time()
            meta = self._metadata() if engine.event_metadata else "{}"
            new = []
            for event, key in recorded:
                name, version, data = engine.types.encode(event)
                new.append(NewEvent(new_event_id(), name, version, data, key, now, meta))
            position = session.append(new)
            for key, command, digest, result, recorded_at, expires_at in keys:
                session.keep_key(IdempotencyRecord(key, command, digest, result, position, recorded_at, expires_at))
            first = position - len(new) + 1
            set_up = [self._apply_inline(session, track, recorded, first) for track in self.inline] if (
                self.inline) else ()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        for track, generation, built_by in set_up:
            # Known only now that the transaction recording it (if it did) has committed.
            engine.versions.known[track.name, generation] = built_by
            if built_by == track.version:
                track.ready.add(generation)
        _last_token.set(position)
        if new:
            if engine._running:  # a runner in this process: wake it now rather than at its next poll
                engine.wake()
            if engine.live.active:  # subscriptions: their read models are about to move
                engine.progress.notify()
        return position

    def _metadata(self) -> str:
        found: dict[str, str] = {}
        for source in self.engine.event_metadata:
            found.update(source())
        return _encode_metadata(found)

    def _apply_inline(self, session: WriteSession, track: Track, recorded: Sequence[tuple[Any, str | None]],
                      first: int) -> tuple[Track, int, int]:
        engine = self.engine
        generation = engine.storage.current_generation(track.name)
        projection_session = session.projection(track.name, generation)
        built_by = engine.versions.known.get((track.name, generation))
        if built_by is None:  # see Versions.built_by; recorded in this transaction, which holds the writer's lock
            built_by = record(session.generations(track.name), generation,
                              unrecorded_version(track, projection_session.position))
        if built_by != track.version:
            return track, generation, built_by  # another version's: the rebuild for this one catches these up
        if projection_session.position < first - 1:  # commands skipped it: is newer code taking it over?
            rebuilding = engine.storage.rebuilding(track.name)
            if rebuilding is not None and engine.versions.built_by(track.name, rebuilding, record=False) > (
                    track.version):
                return track, generation, built_by  # it is: whatever this applied, the newer code applies as live
        engine.applier.set_up(track, projection_session)
        # Added to a log that already has events (or events appended by other means): apply what it missed
        # first, in order, parking what cannot be decoded, as a background projection would.
        blocked = {letter.key for letter in projection_session.dead_letters() if letter.key is not None}
        while projection_session.position < first - 1:
            missed = engine.storage.read(projection_session.position,
                                         min(engine.batch_size, first - 1 - projection_session.position))
            for stored in missed:
                if engine.applier.deal_with(track, projection_session, stored, blocked) is FAILED:
                    raise StorageError(
                        f"Inline projection {track.name!r} cannot apply the event at position {stored.position} "
                        "it missed; commands are refused until it can (see the log for the error)."
                    )
                projection_session.advance(stored.position)
        for offset, (event, key) in enumerate(recorded):
            if key is not None and key in blocked:
                raise StorageError(
                    f"Inline projection {track.name!r} has a parked event with key {key!r}; a command for that key "
                    "is refused until the dead letter is retried or skipped."
                )
            apply = track.projection.handlers.get(type(event))
            if apply is not None:
                apply(event, projection_session)
            projection_session.advance(first + offset)
        return track, generation, built_by

    def add(self, track: Track) -> None:
        """Apply ``track`` in every command's transaction from now on (an inline projection)."""
        if track.delivery is Delivery.INLINE:
            self.inline = (*self.inline, track)
