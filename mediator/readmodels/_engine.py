"""The read-model engine: the outbox on the write side, checkpointed projections on the read side.

Write side: a command's handlers take the scoped :class:`UnitOfWork`, change
the write model through ``uow.handle`` and ``uow.record(event)``; the
:class:`SyncReadModels` behaviour commits the state change, the events
(appended to the log) and the inline projections in one transaction, and
leaves the commit position as the caller's consistency token.

Read side: each projection's checkpoint commits with its read-model change, so
an event takes effect exactly once however often it is delivered. A failing
event is retried with backoff, then parked with its reason; later events with
the same ordering key wait behind it, others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from .._context import _current
from .._context import _new_id as new_id
from .._messages import Event, Kind, qualname
from ._errors import (
    ConsistencyTimeoutError,
    ReadModelUnavailableError,
    StorageError,
    UndecodableEventError,
    UnregisteredEventError,
)
from ._ports import (
    BLOCKED,
    PARKED,
    DeadLetter,
    NewEvent,
    ProjectionSession,
    Storage,
    StoredEvent,
    WriteSession,
)
from ._projections import Delivery, Projection
from ._serialization import EventTypes

if TYPE_CHECKING:
    from .._compile import Build
    from .._registry import Registry

_last_token: contextvars.ContextVar[int | None] = contextvars.ContextVar("mediator_last_token", default=None)
_consistency: contextvars.ContextVar[Consistency | None] = contextvars.ContextVar("mediator_consistency", default=None)

log = structlog.get_logger("mediator.readmodels")




class _Careful(Exception):
    """A projection failed on the fast path at ``position``; its batch is redone up to there."""

    def __init__(self, position: int) -> None:
        self.position = position




def last_token() -> int | None:
    """The commit position of the last command this thread or task sent (``None`` before any).

    Pass it to :func:`consistent` for a later query to read its own writes.
    """
    return _last_token.get()


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


@attrs.frozen
class Lag:
    """How far one projection generation is behind the head of the log."""

    projection: str
    generation: int
    rebuilding: bool
    checkpoint: int
    positions_behind: int
    seconds_behind: float
    parked: int


def _unrecorded_version(track: _Track, checkpoint: int) -> int:
    """The version of a generation with none recorded: this code's if nothing was written to it, else 1 (made
    before versions were recorded)."""
    return track.version if checkpoint == 0 else 1


@attrs.define
class _Track:
    """A projection as the engine runs it."""

    projection: Projection
    delivery: Delivery
    attempts: dict[tuple[int, int], int] = attrs.field(factory=dict)
    not_before: float = 0.0
    ready: set[int] = attrs.field(factory=set)
    retired: list[tuple[int, float]] = attrs.field(factory=list)
    upgrading: int | None = None
    """The current generation while it was built by an older version and a rebuild for this one replaces it."""

    @property
    def name(self) -> str:
        return self.projection.name

    @property
    def version(self) -> int:
        return self.projection.version


class UnitOfWork:
    """One command's transaction and the events it records; a scoped service.

    ``handle`` is the backend's write handle (a ``sqlite3.Connection`` inside
    ``BEGIN IMMEDIATE`` for SQLite); the transaction starts on first use.
    """

    def __init__(self, engine: ReadModels, scope: Any = None) -> None:
        self.engine = engine
        self._session: WriteSession | None = None
        self._events: list[tuple[Any, str | None]] = []
        self.depth = 0
        self._scope = scope  # made by SyncReadModels: the scope exits it only once it is used outside a command
        """The dispatch scope to hand this unit of work's exit to, once something outside a command uses it."""

    def _exit_with_scope(self) -> None:
        # A query (or anything but a command) is using this unit of work: the scope rolls it back at its end.
        # A command needs none of this: SyncReadModels commits or rolls back itself, so its scope has no exit.
        scope, self._scope = self._scope, None
        scope._exits.append(("exit", self.__exit__))

    @property
    def session(self) -> WriteSession:
        if self._session is None:
            if self._scope is not None and self.depth == 0:
                self._exit_with_scope()
            self._session = self.engine.storage.begin()
        return self._session

    @property
    def handle(self) -> Any:
        """The write model's handle, inside this command's transaction."""
        return self.session.handle

    def record(self, event: Event, *, key: str | None = None) -> None:
        """Record ``event`` to be appended when the command commits; ``key`` orders it (e.g. an order id)."""
        if event.__class__ not in self.engine.types:
            raise UnregisteredEventError(event.__class__)
        if self._scope is not None and self.depth == 0:
            self._exit_with_scope()
        self._events.append((event, key))

    def commit(self) -> int:
        """Append the recorded events, apply inline projections, commit; return the commit position."""
        session = self._session or self.session
        events, self._events = self._events, []
        try:
            return self.engine._commit(session, events)
        finally:
            self._session = None  # committed or rolled back by _commit: never reuse it

    def rollback(self) -> None:
        self._events.clear()
        if self._session is not None:
            session, self._session = self._session, None
            session.rollback()

    def __enter__(self) -> UnitOfWork:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Anything not committed by SyncReadModels (a failed command, a query that wrote) is discarded.
        if self._events and exc_type is None:
            log.error("recorded events discarded: they were recorded outside a command, which alone commits them",
                      events=[qualname(type(event)) for event, _key in self._events])
        self.rollback()


class SyncReadModels:
    """The behaviour that commits a command's state change, its events and inline projections together.

    Only the outermost command of a dispatch commits; commands sent from inside
    it join its transaction.
    """

    needs_scope = True

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine

    def _unit_of_work(self) -> UnitOfWork:
        ctx = _current.get()
        assert ctx is not None
        scope = ctx.scope
        uow: UnitOfWork | None = scope._instances.get(UnitOfWork)
        if uow is None:
            # Made here rather than through scope.create (no claim, no enter): this behaviour commits or rolls
            # it back; the scope exits it only if something outside a command uses it later (see UnitOfWork).
            uow = scope._instances[UnitOfWork] = UnitOfWork(self.engine, scope)
        return uow

    def _enter(self) -> UnitOfWork:
        uow = self._unit_of_work()
        uow.depth += 1
        return uow

    @staticmethod
    def _leave(uow: UnitOfWork, succeeded: bool) -> None:
        uow.depth -= 1
        if uow.depth == 0:  # only the outermost command commits; nested ones joined its transaction
            if succeeded:
                uow.commit()
            else:
                uow.rollback()

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        # _enter and _leave written out: every command comes through here.
        scope = _current.get().scope  # type: ignore[union-attr]  # needs_scope: there is always a context
        uow: UnitOfWork | None = scope._instances.get(UnitOfWork)
        if uow is None:
            uow = scope._instances[UnitOfWork] = UnitOfWork(self.engine, scope)
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
        uow = self._enter()
        if uow.depth > 1:  # a nested command: it runs inside its parent's transaction and lock
            try:
                result = await next(message)
            except BaseException:
                self._leave(uow, False)
                raise
            self._leave(uow, True)
            return result
        # The storage's write lock blocks the thread: commands interleaved on one event loop would wait on
        # each other forever. Take turns on the loop instead.
        async with self.engine._loop_lock():
            try:
                result = await next(message)
            except BaseException:
                self._leave(uow, False)
                raise
            self._leave(uow, True)
        return result


class ReadYourWrites:
    """The behaviour that makes a query wait for the read models it ``reads`` inside :func:`consistent`.

    A query class opts in by naming its projections: ``reads = ("order_details",)``.
    """

    needs_scope = False

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.reads: tuple[str, ...] = ()

    def for_message(self, message_type: type, build: Build) -> ReadYourWrites | None:
        reads = tuple(getattr(message_type, "reads", ()))
        if not reads:
            return None
        unknown = [name for name in reads if name not in self.engine._tracks]
        if unknown:
            build.problem(f"{qualname(message_type)} reads unknown projection(s) {unknown}; add them to the engine.")
        bound = ReadYourWrites(self.engine)
        bound.reads = reads
        return bound

    def _before(self) -> None:
        wanted = _consistency.get()
        if wanted is None or wanted.token <= 0:
            return
        for name in self.reads:  # a read model being replaced does not move: say so now, not at the timeout
            self.engine.check_available(name)
        if not self.engine.wait(wanted.token, self.reads, timeout=wanted.timeout):
            if not wanted.stale_ok:
                behind = {n: self.engine.storage.checkpoint(n, self.engine.storage.current_generation(n))
                          for n in self.reads}
                raise ConsistencyTimeoutError(wanted.token, behind, wanted.timeout)
            wanted.stale = True

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        self._before()
        return next(message)

    async def handle_async(self, message: Any, next: Callable[[Any], Any]) -> Any:
        import asyncio

        await asyncio.to_thread(self._before)
        return await next(message)


class ReadModels:
    """The engine: storage, event types, projections and how each is delivered.

    Args:
        storage: the backend (:class:`~mediator.readmodels.sqlite.SqliteStorage`, for tests
            :class:`~mediator.readmodels.memory.MemoryStorage`).
        types: the registered event types.
        batch_size: events a background projection applies per transaction.
        max_attempts: tries of a failing event before it is parked.
        backoff: seconds before the first retry; doubled per attempt, capped at 30 s.
        poll_interval: how often an idle runner runs its projections anyway (for retries, and rebuilds started
            by other processes).
        watch_interval: how often an idle runner looks at the head of the log for events committed by other
            processes (one cheap query); commits in this process wake it at once.
        retire_after: seconds a replaced generation is kept after a rebuild swaps in its successor,
            for queries that looked up the old one just before the swap.
        standby_interval: with leases (PostgreSQL), the shortest time between two looks of a runner that holds
            none of its projections: it takes over a dead runner's within about this, and does not query the
            database on every append meanwhile.
    """

    def __init__(self, storage: Storage, types: EventTypes, *, batch_size: int = 500, max_attempts: int = 5,
                 backoff: float = 0.05, poll_interval: float = 0.2, watch_interval: float = 0.002,
                 retire_after: float = 5.0, standby_interval: float = 0.05) -> None:
        self.retire_after = retire_after
        self.watch_interval = watch_interval
        self.standby_interval = standby_interval
        self.storage = storage
        self.types = types
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.poll_interval = poll_interval
        self._tracks: dict[str, _Track] = {}
        self._versions: dict[tuple[str, int], int] = {}
        self._inline: tuple[_Track, ...] = ()
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())
        self.on_applied: list[Callable[[str, int], None]] = []
        self.on_batch: list[Callable[[str, list[StoredEvent]], None]] = []
        """Called with (projection name, the events of the batch) after each committed batch (e.g. for tracing)."""
        self.event_metadata: list[Callable[[], dict[str, str]]] = []
        """Called at each commit; what they return is stored with the events (e.g. the trace context)."""
        """Called with (projection name, events dealt with) after each committed batch (e.g. for metrics)."""
        self.lag_log_interval = 60.0
        self._next_lag_log = 0.0
        self._progress = threading.Condition()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: Delivery | None = None
        self._only: frozenset[str] | None = None

    # -- set-up -------------------------------------------------------------------------

    def add(self, projection: Projection, *, delivery: Delivery = Delivery.BACKGROUND) -> ReadModels:
        """Add a projection, delivered as ``delivery``."""
        if projection.name in self._tracks:
            raise ValueError(f"A projection named {projection.name!r} is already added.")
        if delivery is Delivery.INLINE and not self.storage.supports_inline:
            raise ValueError(
                f"Projection {projection.name!r} cannot be inline: this storage keeps read models apart from the "
                "write database (e.g. SQLite with two files); deliver it in the background or use one file."
            )
        for event_type in projection.handlers:
            self.types.entry(event_type)  # raises with the fix if it is not registered
        self._tracks[projection.name] = _Track(projection, delivery)
        self._inline = tuple(t for t in self._tracks.values() if t.delivery is Delivery.INLINE)
        return self

    def install(self, registry: Registry) -> None:
        """Wire the engine into ``registry``: the scoped ``UnitOfWork``, this engine, and the two behaviours.

        Call it after the behaviours that should run outside the transaction
        (logging, validation): ``SyncReadModels`` is added here, innermost so far.
        """
        registry.scoped(UnitOfWork, self._new_unit_of_work_factory())
        registry.singleton(ReadModels, instance=self)
        registry.behaviour(SyncReadModels(self), applies_to=Kind.COMMAND)
        registry.behaviour(ReadYourWrites(self), applies_to=Kind.QUERY)

    def _loop_lock(self) -> asyncio.Lock:
        """One lock per running event loop, serialising the async commands on it."""
        loop = asyncio.get_running_loop()
        lock = self._loop_locks.get(loop)
        if lock is None:
            lock = self._loop_locks[loop] = asyncio.Lock()
        return lock

    def _new_unit_of_work_factory(self) -> Callable[[], UnitOfWork]:
        def unit_of_work() -> UnitOfWork:
            return UnitOfWork(self)

        return unit_of_work

    def _new_unit_of_work(self, _scope: object) -> UnitOfWork:
        return UnitOfWork(self)

    @property
    def projections(self) -> dict[str, Projection]:
        return {name: track.projection for name, track in self._tracks.items()}

    # -- write side -----------------------------------------------------------------------

    def _commit(self, session: WriteSession, recorded: Sequence[tuple[Any, str | None]]) -> int:
        try:
            now = time.time()
            meta = self._metadata() if self.event_metadata else "{}"
            new = []
            for event, key in recorded:
                name, version, data = self.types.encode(event)
                new.append(NewEvent(new_id(), name, version, data, key, now, meta))
            position = session.append(new)
            first = position - len(new) + 1
            set_up = [self._apply_inline(session, track, recorded, first) for track in self._inline] if (
                self._inline) else ()
            session.commit()
        except BaseException:
            session.rollback()
            raise
        for track, generation, built_by in set_up:
            # Known only now that the transaction recording it (if it did) has committed.
            self._versions[track.name, generation] = built_by
            if built_by == track.version:
                track.ready.add(generation)
        _last_token.set(position)
        if new and self._thread is not None:  # a runner in this process: wake it now rather than at its next poll
            self._wakeup.set()
        return position

    def _metadata(self) -> str:
        found: dict[str, str] = {}
        for source in self.event_metadata:
            found.update(source())
        return json.dumps(found, sort_keys=True)

    def _apply_inline(self, session: WriteSession, track: _Track, recorded: Sequence[tuple[Any, str | None]],
                      first: int) -> tuple[_Track, int, int]:
        generation = self.storage_generation(track.name)
        projection_session = session.projection(track.name, generation)
        built_by = self._versions.get((track.name, generation))
        if built_by is None:  # see built_by; recorded in this transaction, which holds the writer's lock
            built_by = session.record_version(track.name, generation,
                                              _unrecorded_version(track, projection_session.position))
        if built_by != track.version:
            return track, generation, built_by  # another version's: the rebuild for this one catches these up
        if projection_session.position < first - 1:  # commands skipped it: is newer code taking it over?
            rebuilding = self.storage.rebuilding(track.name)
            if rebuilding is not None and self.built_by(track.name, rebuilding, record=False) > track.version:
                return track, generation, built_by  # it is: whatever this applied, the newer code applies as live
        self._set_up(track, projection_session)
        # Added to a log that already has events (or events appended by other means): apply what it missed
        # first, in order, parking what cannot be decoded, as a background projection would.
        blocked = {letter.key for letter in projection_session.dead_letters() if letter.key is not None}
        while projection_session.position < first - 1:
            missed = self.storage.read(projection_session.position,
                                       min(self.batch_size, first - 1 - projection_session.position))
            for stored in missed:
                if not self._deal_with(track, projection_session, stored, blocked, careful=True):
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

    def storage_generation(self, name: str) -> int:
        return self.storage.current_generation(name)

    def table(self, projection: str, table: str) -> str:
        """The storage name of a read-model table that queries should read now (the current generation).

        Raises :class:`ReadModelUnavailableError` while that generation was built by another version of the
        projection than this code's: an older one being replaced, or a newer one this code cannot read.
        """
        from ._ports import table_name

        generation = self.storage.current_generation(projection)
        self._check_version(projection, generation)
        return table_name(projection, table, generation)

    def check_available(self, projection: str) -> None:
        """Raise :class:`ReadModelUnavailableError` unless this code can read ``projection``'s current generation."""
        self._check_version(projection, self.storage.current_generation(projection))

    def _check_version(self, projection: str, generation: int, *, outdated_ok: bool = False) -> None:
        track = self._tracks.get(projection)
        if track is not None:
            built_by = self.built_by(projection, generation, record=False)
            if built_by > track.version or (built_by < track.version and not outdated_ok):
                raise ReadModelUnavailableError(projection, built_by, track.version)

    def built_by(self, name: str, generation: int, *, record: bool = True) -> int:
        """The projection version that built ``generation`` (recorded once, then remembered: it never changes).

        A generation with no version recorded was either never written (this code's version builds it) or
        written before versions were recorded (version 1). That is recorded then, unless ``record`` is false
        (queries, which must not write): they get the same answer and ask again next time.
        """
        known = self._versions.get((name, generation))
        if known is None:
            track = self._tracks.get(name)
            recorded = self.storage.recorded_version(name, generation)
            if recorded is None:
                guess = 1 if track is None else _unrecorded_version(track, self.storage.checkpoint(name, generation))
                if not record:
                    return guess
                recorded = self.storage.record_version(name, generation, guess)
            known = self._versions[name, generation] = recorded
        return known

    # -- read side: running projections ------------------------------------------------------

    def _set_up(self, track: _Track, session: ProjectionSession) -> None:
        """Run the projection's ``setup`` in this session unless a committed session already has.

        The caller marks the generation ready only once its session commits: a
        rolled-back session takes its ``CREATE TABLE`` with it.
        """
        if session.generation not in track.ready:
            track.projection.setup(session)

    def _generations(self, track: _Track) -> list[tuple[int, bool]]:
        """The generations of ``track`` this code runs now, each with whether it is a replay.

        A generation built by another version of the projection is never run. A current one built by an older
        version is replaced by a rebuild for this one; a rebuild under way for an older version is replaced
        too. Once a newer version's rebuild or generation exists, this code stands down from the projection
        altogether: whatever it applied now, the newer code applies again as live.
        """
        name = track.name
        # The rebuild first: a swap between the two reads then shows as the rebuild already current (ignored
        # below), never as an outdated current generation with no rebuild under way.
        rebuilding = self.storage.rebuilding(name)  # in storage: a rebuild started by any process
        current = self.storage.current_generation(name)
        if rebuilding == current:
            rebuilding = None
        built_by = self.built_by(name, current)
        rebuilt_by = None if rebuilding is None else self.built_by(name, rebuilding)
        if built_by > track.version or (rebuilt_by is not None and rebuilt_by > track.version):
            track.upgrading = None
            return []  # newer code has it
        track.upgrading = current if built_by < track.version else None
        older_rebuild = rebuilt_by is not None and rebuilt_by < track.version
        if older_rebuild or (track.upgrading is not None and rebuilding is None):
            try:
                rebuilding = self._claim(track, rebuilding if older_rebuild else None, built_by)
            except ReadModelUnavailableError:  # newer code swapped its generation in since we looked
                return []
            if self.built_by(name, rebuilding) != track.version:
                return []  # a newer version's claim got there first
        out = [] if track.delivery is Delivery.INLINE or track.upgrading is not None else [(current, False)]
        if rebuilding is not None:
            out.append((rebuilding, True))
        return out

    def _claim(self, track: _Track, abandoning: int | None, built_by: int) -> int:
        """Claim a rebuild for this code's version, replacing ``abandoning`` (an older version's) if given."""
        generation = self.storage.claim_rebuild(track.name, track.version, replacing=abandoning)
        if self.built_by(track.name, generation) < track.version:
            # Joined a rebuild an older version claimed since we looked: replace that one instead.
            abandoning = generation
            generation = self.storage.claim_rebuild(track.name, track.version, replacing=abandoning)
        if self.built_by(track.name, generation) != track.version:  # a newer version's claim got there first
            return generation
        if built_by != track.version or abandoning is not None:
            log.info("projection changed: rebuilding it", projection=track.name, version=track.version,
                     built_by=built_by, generation=generation)
        if abandoning is not None and abandoning != generation:
            # A replay for an older version: dropped after the grace period, as a swapped-out generation is.
            track.retired.append((abandoning, time.monotonic() + self.retire_after))
        return generation

    def run_batch(self, track: _Track, generation: int, replaying: bool, *, ignore_backoff: bool = False) -> int:
        """Apply the next batch of one projection generation; return how many events it dealt with."""
        if not ignore_backoff and time.monotonic() < track.not_before:
            return 0
        try:
            handled = self._batch(track, generation, replaying, careful=False)
        except _Careful as failed:
            # An event failed and the whole batch was rolled back: redo it event by event, with savepoints.
            # That failure was the event's attempt; the redo stops before the event instead of trying it again.
            cause = failed.__cause__ if isinstance(failed.__cause__, Exception) else failed
            if self.storage.transient(cause):  # the storage failed, not the event: nothing to count
                raise StorageError(f"Projection {track.name!r} lost its storage at position {failed.position}: "
                                   f"{qualname(type(cause))}: {cause}") from cause
            handled = self._batch(track, generation, replaying, careful=True, failed=(failed.position, cause))
        if handled:
            for listener in self.on_applied:
                listener(track.name, handled)
            with self._progress:
                self._progress.notify_all()
        return handled

    def _batch(self, track: _Track, generation: int, replaying: bool, *, careful: bool,
               failed: tuple[int, Exception] | None = None) -> int:
        handled = 0
        with self.storage.session(track.name, generation) as session:
            limit = self.batch_size
            if replaying and track.upgrading is not None:
                # Replacing an older version's generation, which nobody here feeds: the events past its
                # checkpoint get their side effects from this replay, so they are applied as live ones.
                live_from = self.storage.checkpoint(track.name, track.upgrading)
                replaying = session.position < live_from
                if replaying:
                    limit = min(limit, live_from - session.position)
            session.replaying = replaying
            self._set_up(track, session)
            events = self.storage.read(session.position, limit)
            blocked = {letter.key for letter in session.dead_letters() if letter.key is not None}
            if careful or blocked:
                for stored in events:
                    if failed is not None and stored.position == failed[0]:
                        if not self._failed(track, session, stored, blocked, failed[1]):
                            break
                    elif not self._deal_with(track, session, stored, blocked, careful):
                        break
                    session.advance(stored.position)
                    handled += 1
            else:
                handled = self._healthy_batch(track, session, events, blocked)
        track.ready.add(generation)
        if handled and self.on_batch:
            for listener in self.on_batch:
                listener(track.name, events[:handled])
        return handled

    def _healthy_batch(self, track: _Track, session: ProjectionSession, events: list[StoredEvent],
                       blocked: set[str]) -> int:
        """The hot loop: decode and apply each event of a batch with nothing parked, no savepoints.

        Anything unusual (an unknown type, an old version to upcast, a failure) goes
        the general way, through :meth:`_deal_with`.
        """
        handlers = track.projection.handlers
        registered = self.types.entries()
        decoders: dict[str, Callable[[str], Any] | None] = {}
        for stored in events:
            position, _event_id, type_name, version, data, key, _recorded_at, _meta = stored  # cheaper than 5 lookups
            entry = registered.get(type_name)
            if entry is None or entry.version != version or (blocked and key in blocked):
                self._deal_with(track, session, stored, blocked, careful=False)
                continue
            apply = handlers.get(entry.cls)
            if apply is None:
                continue
            decode = decoders.get(type_name)
            if decode is None:
                decode = decoders[type_name] = self.types.decoder(entry)
            try:
                event = decode(data)
            except UndecodableEventError:
                self._deal_with(track, session, stored, blocked, careful=False)
                continue
            try:
                apply(event, session)
            except Exception as exc:
                raise _Careful(position) from exc
        if events:
            session.advance(events[-1].position)
        return len(events)

    def _deal_with(self, track: _Track, session: ProjectionSession, stored: StoredEvent, blocked: set[str],
                   careful: bool = True) -> bool:
        """Apply one event, or park it; ``False`` means stop the batch here and retry later.

        Not ``careful``, the event is applied with no savepoint (the fast path for a
        healthy batch); if it fails, :class:`_Careful` rolls the batch back.
        """
        event_type = self.types.named(stored.type_name)
        if event_type is not None and event_type not in track.projection.handlers:
            return True
        if stored.key is not None and stored.key in blocked:
            self._park(session, stored, BLOCKED, f"waits behind an earlier parked event with key {stored.key!r}", 0)
            return True
        try:
            event = self.types.decode(stored.type_name, stored.version, stored.data)
        except UndecodableEventError as exc:
            self._park(session, stored, PARKED, str(exc), 1)
            if stored.key is not None:
                blocked.add(stored.key)
            return True
        apply = track.projection.handlers[type(event)]
        if not careful:
            try:
                apply(event, session)
            except Exception as exc:
                raise _Careful(stored.position) from exc
            return True
        try:
            with session.savepoint():
                apply(event, session)
        except Exception as exc:
            return self._failed(track, session, stored, blocked, exc)
        track.attempts.pop((session.generation, stored.position), None)
        return True

    def _failed(self, track: _Track, session: ProjectionSession, stored: StoredEvent, blocked: set[str],
                exc: Exception) -> bool:
        """Count a failed attempt: back off and stop the batch (``False``), or park the event at the last.

        A failure of the storage itself (a dropped connection, a deadlock) is not the event's fault: it is
        raised as :class:`StorageError`, the batch rolls back, and the runner tries again without counting it.
        """
        if self.storage.transient(exc):
            raise StorageError(f"Projection {track.name!r} lost its storage at position {stored.position}: "
                               f"{qualname(type(exc))}: {exc}") from exc
        attempt_key = (session.generation, stored.position)
        attempts = track.attempts.get(attempt_key, 0) + 1
        if attempts < self.max_attempts:
            track.attempts[attempt_key] = attempts
            track.not_before = time.monotonic() + min(self.backoff * 2 ** (attempts - 1), 30.0)
            log.warning("projection failed, will retry", projection=track.name, position=stored.position,
                        attempt=attempts, error_type=qualname(type(exc)), error=str(exc))
            return False
        track.attempts.pop(attempt_key, None)
        self._park(session, stored, PARKED, f"{qualname(type(exc))}: {exc}", attempts)
        if stored.key is not None:
            blocked.add(stored.key)
        return True

    def _park(self, session: ProjectionSession, stored: StoredEvent, status: str, reason: str, attempts: int) -> None:
        session.park(DeadLetter(session.name, session.generation, stored.position, stored.event_id,
                                stored.type_name, stored.key, reason, attempts, status))
        log.error("event parked", projection=session.name, position=stored.position, status=status, reason=reason)

    def catch_up(self, *, deliveries: Iterable[Delivery] = (Delivery.BACKGROUND, Delivery.WORKER),
                 ignore_backoff: bool = False, finishing: bool = False, leased: bool = False,
                 only: Collection[str] | None = None, stop: threading.Event | None = None) -> int:
        """Run every selected projection (and rebuild) until none has more to do now; return events dealt with.

        ``finishing`` also runs the live generation of each projection being rebuilt, whatever its delivery:
        a rebuild is swapped in only once the live generation has caught up with it. ``leased`` runs only the
        projections this process holds (or can take) the storage's lock on, as runners do: with several
        runner processes, each projection is run by one at a time. Without it, projection transactions of
        different processes still take turns, so nothing is applied twice. ``only`` limits it to those names;
        ``stop``, once set, ends it after the current batch.
        """
        wanted = set(deliveries)
        total = 0
        progressed = True
        while progressed and not (stop is not None and stop.is_set()):
            progressed = False
            for track in list(self._tracks.values()):
                if only is not None and track.name not in only:
                    continue
                if stop is not None and stop.is_set():
                    break
                if track.retired:
                    self._retire(track)
                generations = self._generations(track)
                if not generations or (track.delivery not in wanted
                                       and not any(replaying for _g, replaying in generations)):
                    if leased and self.storage.holds(track.name):
                        self.storage.release(track.name)  # taken to help with a rebuild, now over
                    continue
                if leased and not self.storage.acquire(track.name):
                    continue  # another process runs it (a lease is taken only on what this runner would run)
                rebuilding = len(generations) > 1
                for generation, replaying in generations:
                    # A leased runner helping with a rebuild holds the projection: nobody else can run its live
                    # generation, which must catch up before the swap. So it runs that too, until the swap.
                    if not replaying and track.delivery not in wanted and not ((finishing or leased) and rebuilding):
                        continue
                    done = self.run_batch(track, generation, replaying, ignore_backoff=ignore_backoff)
                    total += done
                    # Without backoff, a failing event is tried again at once until it is parked.
                    progressed = progressed or done > 0 or (ignore_backoff and bool(track.attempts))
                self._maybe_swap(track)
        return total

    # -- background runner ---------------------------------------------------------------------

    def start(self, delivery: Delivery = Delivery.BACKGROUND, *, only: Collection[str] | None = None) -> None:
        """Start a runner thread for the projections delivered as ``delivery`` (and any rebuild).

        ``only`` names the projections this runner may take (default: all): several worker processes can
        split the projections between them, and a second worker given the same names stands by for the first.
        """
        if self._thread is not None:
            raise RuntimeError("The runner is already started; stop() it first.")
        if only is not None:
            unknown = sorted(set(only) - set(self._tracks))
            if unknown:
                raise LookupError(f"No projection named {', '.join(map(repr, unknown))}; "
                                  f"known: {', '.join(self._tracks)}.")
            self._only = frozenset(only)
        else:
            self._only = None
        self._stop.clear()
        self._runs = delivery
        self._next_lag_log = time.monotonic() + self.lag_log_interval  # first lag line after one interval
        self._thread = threading.Thread(target=self._run, name="mediator-readmodels", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the runner thread after its current batch."""
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # in a batch longer than the timeout: it gives up its leases as it ends
                log.warning("projection runner still finishing its batch", timeout=timeout)
            self._thread = None

    def log_lag(self) -> list[Lag]:
        """Log one structlog line per projection generation with its lag; return the rows."""
        rows = self.lag()
        for row in rows:
            log.info("projection lag", projection=row.projection, generation=row.generation,
                     rebuilding=row.rebuilding, checkpoint=row.checkpoint, positions_behind=row.positions_behind,
                     seconds_behind=row.seconds_behind, parked=row.parked)
        return rows

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # this runner's leases go with it (only its projections': a relay may share the storage)
            for name in self._tracks:
                with contextlib.suppress(Exception):  # a storage that is down has freed its locks already
                    if self.storage.holds(name):
                        self.storage.release(name)

    def _loop(self) -> None:
        assert self._runs is not None
        while not self._stop.is_set():
            if time.monotonic() >= self._next_lag_log:
                self._next_lag_log = time.monotonic() + self.lag_log_interval
                with contextlib.suppress(Exception):  # a storage outage is logged by the loop below
                    self.log_lag()
            try:
                head = self.storage.head()  # before the catch-up: a commit after this read wakes the idle wait
                done = self.catch_up(deliveries=(self._runs,), leased=True, only=self._only, stop=self._stop)
            except Exception as exc:  # a storage outage: log, wait, try again; never die silently
                log.error("projection runner failed, retrying", error_type=qualname(type(exc)), error=str(exc))
                done = 0
                self._stop.wait(self.poll_interval)
                continue
            if not done:
                self._idle(head, self._idle_wait())

    def _idle(self, head: int, longest: float) -> None:
        """Wait for a commit in this process (a wake-up), a new head of the log from another, or ``longest`` s."""
        deadline = time.monotonic() + longest
        if self.storage.notifies:  # LISTEN: blocks until some process appends; our own commits notify too
            if self._standing_by():
                # Holding none of its projections, this runner wakes only to see whether a lease came free:
                # not on every append (under load, every standby would query the database each time).
                self._stop.wait(min(self.standby_interval, longest))
            while not self._wakeup.is_set() and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self.storage.wait_for_append(min(left, 0.05)):
                    break
            self._wakeup.clear()
            return
        while not self._wakeup.wait(min(self.watch_interval, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or self._stop.is_set():
                break
            try:
                if self.storage.head() != head:
                    break
            except Exception:  # an outage is the catch-up's to report
                break
        self._wakeup.clear()

    def _standing_by(self) -> bool:
        """Whether this runner holds the lease of none of the projections it may run (it stands by for them)."""
        if not self.storage.leases:
            return False
        mine = [name for name, track in self._tracks.items()
                if track.delivery is self._runs and (self._only is None or name in self._only)]
        return bool(mine) and not any(self.storage.holds(name) for name in mine)

    def _idle_wait(self) -> float:
        now = time.monotonic()
        soonest = min((t.not_before for t in self._tracks.values() if t.not_before > now), default=None)
        return self.poll_interval if soonest is None else max(0.0, min(self.poll_interval, soonest - now))

    def __enter__(self) -> ReadModels:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- read-your-writes -----------------------------------------------------------------------

    def reached(self, token: int, names: Iterable[str]) -> dict[str, int]:
        """The checkpoints of ``names`` that are still below ``token`` (empty when all have reached it)."""
        behind = {}
        for name in names:
            track = self._tracks[name]
            if track.delivery is Delivery.INLINE:
                continue
            position = self.storage.checkpoint(name, self.storage.current_generation(name))
            if position < token:
                behind[name] = position
        return behind

    def wait(self, token: int, names: Iterable[str] | None = None, *, timeout: float = 5.0) -> bool:
        """Wait until the projections ``names`` (default: all) have reached ``token``; ``False`` on timeout.

        Runner threads in this process wake the waiter as soon as they commit a
        batch; progress made by a worker process is seen by polling the
        checkpoints, every 0.25 ms at first, backing off to every 5 ms.
        """
        names = list(self._tracks) if names is None else list(names)
        deadline = time.monotonic() + timeout
        local = self._thread is not None and self._thread.is_alive()
        # Progress made elsewhere (a worker, or another process's runner holding the projection's lease) is
        # not announced here: poll for it. With leases, always: this runner may lose one at any moment.
        remote = self.storage.leases or any(
            not local or self._tracks[n].delivery is not self._runs or (self._only is not None and n not in self._only)
            for n in names)
        pause = 0.00025
        with self._progress:
            while self.reached(token, names):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, pause) if remote else left)
                pause = min(pause * 2, 0.005)
        return True

    # -- operations: lag, rebuild, dead letters ---------------------------------------------------

    def lag(self) -> list[Lag]:
        """Lag per projection generation (a rebuild shows as a second, ``rebuilding`` row)."""
        head = self.storage.head()
        now = time.time()
        rows = []
        for track in self._tracks.values():
            current = self.storage.current_generation(track.name)
            rebuild = self.storage.rebuilding(track.name)
            generations = [(current, False)] + ([(rebuild, True)] if rebuild is not None else [])
            parked = len(self.storage.all_dead_letters(track.name))
            for generation, rebuilding in generations:
                checkpoint = self.storage.checkpoint(track.name, generation)
                oldest = self.storage.read(checkpoint, 1) if checkpoint < head else []
                rows.append(Lag(track.name, generation, rebuilding, checkpoint, head - checkpoint,
                                round(now - oldest[0].recorded_at, 3) if oldest else 0.0, parked))
        return rows

    def rebuild(self, name: str) -> int:
        """Start rebuilding ``name`` from position 0 into a fresh generation; return that generation.

        Queries keep reading the current generation until the new one has caught
        up, then it is swapped in and the old one torn down.
        """
        if name not in self._tracks:
            raise LookupError(f"No projection named {name!r}; known: {', '.join(self._tracks)}.")
        track = self._tracks[name]
        current = self.storage.current_generation(name)
        self._check_version(name, current, outdated_ok=True)
        under_way = self.storage.rebuilding(name)
        older = under_way is not None and self.built_by(name, under_way) < track.version
        # Joins a rebuild already under way, in any process, unless it is for an older version.
        generation = self._claim(track, under_way if older else None, self.built_by(name, current))
        built_by = self.built_by(name, generation)
        if built_by != track.version:
            raise ReadModelUnavailableError(name, built_by, track.version)
        self._wakeup.set()
        return generation

    def _retire(self, track: _Track) -> None:
        now = time.monotonic()
        for generation, due in list(track.retired):
            if generation == self.storage.current_generation(track.name):  # never the one queries read
                track.retired.remove((generation, due))
            elif due <= now:
                with self.storage.session(track.name, generation) as session:
                    track.projection.teardown(session)
                track.retired.remove((generation, due))

    @property
    def rebuilding(self) -> list[str]:
        """Names of the projections being rebuilt."""
        return [name for name in self._tracks if self.storage.rebuilding(name) is not None]

    def delivery(self, name: str) -> Delivery:
        """How projection ``name`` is delivered."""
        return self._tracks[name].delivery

    def _own_rebuilds(self) -> list[str]:
        """Names of the projections being rebuilt for this code's version (the ones it can finish)."""
        return [name for name, track in self._tracks.items()
                if (g := self.storage.rebuilding(name)) is not None and self.built_by(name, g) == track.version
                and self.built_by(name, self.storage.current_generation(name)) <= track.version]

    def finish_rebuilds(self) -> None:
        """Run every rebuild in this thread until it is swapped in and its old generation torn down.

        The teardown waits ``retire_after`` seconds, for queries that looked the old generation up.
        """
        while self._own_rebuilds():
            self.catch_up(deliveries=(), finishing=True)
        while any(track.retired for track in self._tracks.values()):
            due = min(d for track in self._tracks.values() for _g, d in track.retired)
            time.sleep(max(0.0, due - time.monotonic()))
            self.catch_up(deliveries=())

    def _maybe_swap(self, track: _Track) -> None:
        new = self.storage.rebuilding(track.name)
        if new is None:
            return
        old = self.storage.current_generation(track.name)
        old_by = self.built_by(track.name, old)
        if new == old or self.built_by(track.name, new) != track.version or old_by > track.version:
            return  # swapped already; or a rebuild for another version, or over a newer one: not this code's
        upgrade = old_by < track.version  # nobody here feeds the old generation
        replayed = self.storage.checkpoint(track.name, new)
        behind = self.storage.head() - replayed
        if track.delivery is Delivery.INLINE:
            # Commands write the current generation inline, under the writer's lock: catch the rest of the
            # log up and swap under that lock too, once the background replay has left only a batch or so.
            if behind > self.batch_size or not self._finish_inline_rebuild(track, new, old, upgrade):
                return
        elif behind > 0 or (not upgrade and self.storage.checkpoint(track.name, old) < replayed):
            return  # not caught up; or the live generation still owes the replayed events their side effects
        elif not self.storage.finish_rebuild(track.name, new, old, check_live=not upgrade):  # atomically
            return
        # A query may have looked up the old generation a moment ago: tear it down after a grace period.
        track.retired.append((old, time.monotonic() + self.retire_after))
        log.info("projection rebuilt", projection=track.name, generation=new, version=track.version)
        with self._progress:
            self._progress.notify_all()

    def _finish_inline_rebuild(self, track: _Track, new: int, old: int, upgrade: bool) -> bool:
        session = self.storage.begin()
        try:
            projection_session = session.projection(track.name, new)
            projection_session.replaying = True
            # Under the writer's lock nothing moves the old generation: past its checkpoint, an upgrade's replay
            # is the only delivery these events get.
            live_from = self.storage.checkpoint(track.name, old) if upgrade else None
            blocked = {letter.key for letter in projection_session.dead_letters() if letter.key is not None}
            while events := self.storage.read(projection_session.position, self.batch_size):
                for stored in events:
                    if live_from is not None:
                        projection_session.replaying = stored.position <= live_from
                    if not self._deal_with(track, projection_session, stored, blocked, careful=True):
                        session.rollback()  # a failing event: retry after its backoff
                        return False
                    projection_session.advance(stored.position)
            if not session.finish_rebuild(track.name, new, old):
                session.rollback()
                return False
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return True

    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Parked and blocked events of the current generations."""
        return self.storage.all_dead_letters(name)

    def retry(self, name: str, position: int) -> int:
        """Apply the parked event at ``position`` again, then those waiting behind it; return how many applied."""
        return self._release(name, position, apply_first=True)

    def skip(self, name: str, position: int) -> int:
        """Drop the parked event at ``position`` unapplied; apply those waiting behind it; return how many applied."""
        return self._release(name, position, apply_first=False)

    def _release(self, name: str, position: int, *, apply_first: bool) -> int:
        track = self._tracks[name]
        generation = self.storage.current_generation(name)
        self._check_version(name, generation)  # never another version's handlers on this generation
        applied = 0
        with self.storage.session(name, generation) as session:
            letters = {letter.position: letter for letter in session.dead_letters()}
            if position not in letters:
                raise LookupError(f"No dead letter of {name!r} at position {position}.")
            first = letters[position]
            earlier = [p for p, letter in letters.items() if p < position and first.key is not None
                       and letter.key == first.key]
            if earlier:
                raise ValueError(
                    f"The dead letter of {name!r} at position {position} waits behind position {min(earlier)} "
                    f"with the same key; retry or skip position {min(earlier)} first, so the key's order holds."
                )
            queue = [first] + [
                letter for p, letter in sorted(letters.items())
                if p > position and first.key is not None and letter.key == first.key
            ]
            for index, letter in enumerate(queue):
                if index == 0 and not apply_first:
                    session.release(letter.position)
                    continue
                (stored,) = self.storage.read(letter.position - 1, 1)
                try:
                    event = self.types.decode(stored.type_name, stored.version, stored.data)
                    apply = track.projection.handlers.get(type(event))
                    if apply is not None:  # a type registered since, that this projection does not handle: done
                        with session.savepoint():
                            apply(event, session)
                except Exception as exc:
                    session.park(attrs.evolve(letter, status=PARKED, attempts=letter.attempts + 1,
                                              reason=f"{qualname(type(exc))}: {exc}"))
                    for later in queue[index + 1:]:
                        session.park(attrs.evolve(later, status=BLOCKED))
                    break
                session.release(letter.position)
                applied += 1
        return applied
