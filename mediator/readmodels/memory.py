"""In-memory storage for the read-model engine: for tests, and the reference for the contract.

The write model and every read model are dicts of tables (dicts) in the
session's ``handle``. A write session works on a deep copy that replaces the
committed state on commit, so a command that fails leaves nothing behind. One
lock serialises writers, as SQLite's does.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import attrs

from ._errors import StorageError
from ._ports import (
    PENDING,
    DeadLetter,
    Generations,
    IdempotencyRecord,
    NewEvent,
    ProjectionSession,
    Quarantined,
    ScheduledCommand,
    Storage,
    StoredEvent,
    WriteSession,
)
from ._tables import Adding, Query, Table, table_name


@attrs.define
class _Tracking:
    position: int = 0
    letters: dict[int, DeadLetter] = attrs.field(factory=dict)


class _State:
    def __init__(self) -> None:
        self.log: list[StoredEvent] = []
        self.tables: dict[str, Any] = {}
        self.tracking: dict[tuple[str, int], _Tracking] = {}
        self.generations: dict[str, int] = {}
        self.rebuilds: dict[str, int] = {}
        self.versions: dict[tuple[str, int], int] = {}
        self.keys: dict[str, IdempotencyRecord] = {}
        self.schedules: dict[str, ScheduledCommand] = {}

    def records_copy(self) -> _State:
        """A copy whose generation records can change apart (read models and checkpoints stay shared)."""
        work = _State()
        work.log, work.tables, work.tracking = self.log, self.tables, self.tracking
        work.generations = dict(self.generations)
        work.rebuilds = dict(self.rebuilds)
        work.versions = dict(self.versions)
        work.keys = self.keys
        work.schedules = self.schedules
        return work

    def working_copy(self) -> _State:
        """A copy to change and later swap in; the log is shared (it is only ever appended to, on commit)."""
        work = _State()
        work.log = self.log
        work.tables = copy.deepcopy(self.tables)
        work.tracking = copy.deepcopy(self.tracking)
        work.generations = dict(self.generations)
        work.rebuilds = dict(self.rebuilds)
        work.versions = dict(self.versions)
        work.keys = dict(self.keys)
        work.schedules = dict(self.schedules)
        return work


class MemoryGenerations(Generations):
    """One projection's generation records in a state being changed (a working copy, or a write session's)."""

    def __init__(self, state: _State, name: str) -> None:
        self.name = name
        self._state = state

    def current(self) -> int:
        return self._state.generations.get(self.name, 1)

    def rebuilding(self) -> int | None:
        return self._state.rebuilds.get(self.name)

    def version(self, generation: int) -> int | None:
        return self._state.versions.get((self.name, generation))

    def known(self) -> Collection[int]:
        state, name = self._state, self.name
        found = {g for (n, g) in state.tracking if n == name} | {g for (n, g) in state.versions if n == name}
        return found | ({state.generations[name]} if name in state.generations else set())

    def checkpoint(self, generation: int) -> int:
        tracking = self._state.tracking.get((self.name, generation))
        return 0 if tracking is None else tracking.position

    def set_current(self, generation: int) -> None:
        self._state.generations[self.name] = generation

    def set_rebuilding(self, generation: int | None) -> None:
        if generation is None:
            self._state.rebuilds.pop(self.name, None)
        else:
            self._state.rebuilds[self.name] = generation

    def add_version(self, generation: int, version: int) -> None:
        self._state.versions.setdefault((self.name, generation), version)


class MemoryProjectionSession(ProjectionSession):
    def __init__(self, state: _State, name: str, generation: int) -> None:
        self.name = name
        self.generation = generation
        self.handle = state.tables
        self._tracking = state.tracking.setdefault((name, generation), _Tracking())

    @property
    def position(self) -> int:
        return self._tracking.position

    def advance(self, position: int) -> None:
        self._tracking.position = position

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self.flush_rows()
        saved = copy.deepcopy(self._handle)
        try:
            yield
        except BaseException:
            self.discard_rows()
            self._handle.clear()
            self._handle.update(saved)
            raise

    # -- typed tables: a dict of stored values by key per table, beside the raw tables ---------------

    def create_table(self, table: Table[Any], physical: str) -> None:
        self._handle.setdefault(physical, {})

    def drop_table(self, table: Table[Any], physical: str) -> None:
        self._handle.pop(physical, None)

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        rows = self._handle.get(physical)
        return None if rows is None else rows.get(key)

    def write_rows(self, table: Table[Any], physical: str, puts: list[tuple[Any, ...]],
                   deletes: list[tuple[Any, ...]]) -> None:
        rows = self._handle.setdefault(physical, {})
        for key in deletes:
            rows.pop(key, None)
        key_of = table.key_of
        for values in puts:
            rows[key_of(values)] = values

    def add_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        stored = self._handle.setdefault(physical, {})
        key_of = table.key_of
        for values in rows:
            key = key_of(values)
            stored[key] = Adding(values, at).onto(stored.get(key))

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        return query.run(table.codec, self._handle.get(physical, {}).values())

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        return len(Query(query.where).run(table.codec, self._handle.get(physical, {}).values()))

    def park(self, letter: DeadLetter) -> None:
        self._tracking.letters[letter.position] = letter

    def dead_letters(self) -> list[DeadLetter]:
        return [self._tracking.letters[p] for p in sorted(self._tracking.letters)]

    def release(self, position: int) -> None:
        self._tracking.letters.pop(position, None)


class MemoryWriteSession(WriteSession):
    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage
        self._work = storage._state.working_copy()
        self.handle = self._work.tables
        self._pending: list[StoredEvent] = []
        self._projections: list[MemoryProjectionSession] = []
        self._done = False

    def append(self, events: Sequence[NewEvent]) -> int:
        start = len(self._work.log) + len(self._pending)
        for offset, event in enumerate(events, 1):
            self._pending.append(StoredEvent(start + offset, *event))
        return start + len(events)

    def projection(self, name: str, generation: int) -> ProjectionSession:
        session = MemoryProjectionSession(self._work, name, generation)
        self._projections.append(session)
        return session

    def generations(self, name: str) -> Generations:
        return MemoryGenerations(self._work, name)

    def claim_key(self, key: str) -> IdempotencyRecord | None:
        return self._work.keys.get(key)  # one writer at a time: the write lock is the claim

    def keep_key(self, record: IdempotencyRecord) -> None:
        self._work.keys[record.key] = record

    def process(self, name: str) -> ProjectionSession:
        session = MemoryProjectionSession(self._work, name, 1)
        self._projections.append(session)
        return session

    def schedule(self, scheduled: ScheduledCommand) -> None:
        self._work.schedules[scheduled.schedule_id] = scheduled

    def unschedule(self, schedule_id: str) -> bool:
        return self._work.schedules.pop(schedule_id, None) is not None

    def take_due(self, now: float) -> ScheduledCommand | None:
        due = [s for s in self._work.schedules.values() if s.status == PENDING and s.due_at <= now]
        return min(due, key=lambda s: (s.due_at, s.schedule_id), default=None)

    def commit(self) -> None:
        if not self._done:
            for session in self._projections:
                session.flush_rows()
            self._work.log.extend(self._pending)
            self._storage._state = self._work
            self._finish()

    def rollback(self) -> None:
        if not self._done:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._storage._owner = None
        self._storage._writer.release()


class MemoryStorage(Storage):
    """Everything in process memory; one writer at a time."""

    def __init__(self) -> None:
        self._state = _State()
        self._quarantined: dict[tuple[str, str], Quarantined] = {}
        self._writer = threading.Lock()
        self._owner: int | None = None
        self._pins = threading.local()
        self._schemas: dict[str, int] = {}

    def begin(self) -> WriteSession:
        if self._owner == threading.get_ident():
            raise StorageError(
                "A write transaction is already open in this thread (two commands interleaved on one event "
                "loop?); the memory storage serialises writers per thread, so run them one after the other."
            )
        self._writer.acquire()
        self._owner = threading.get_ident()
        try:
            return MemoryWriteSession(self)
        except BaseException:
            self._owner = None
            self._writer.release()
            raise

    def expire_keys(self, now: float) -> int:
        with self._writer:
            live = {key: record for key, record in self._state.keys.items() if record.expires_at > now}
            gone = len(self._state.keys) - len(live)
            self._state.keys = live
        return gone

    def count_keys(self, now: float) -> int:
        return sum(record.expires_at > now for record in list(self._state.keys.values()))

    def scheduled(self, status: str | None = None) -> list[ScheduledCommand]:
        found = [s for s in list(self._state.schedules.values()) if status is None or s.status == status]
        return sorted(found, key=lambda s: (s.due_at, s.schedule_id))

    def next_due(self) -> float | None:
        return min((s.due_at for s in list(self._state.schedules.values()) if s.status == PENDING), default=None)

    def read(self, after: int, limit: int, type_names: Collection[str] | None = None) -> list[StoredEvent]:
        log = self._state.log
        found: list[StoredEvent] = []
        for event in log[after:]:
            if type_names is None or event.type_name in type_names:
                found.append(event)
                if len(found) == limit:
                    break
        return found

    def head(self) -> int:
        return len(self._state.log)

    @contextlib.contextmanager
    def session(self, name: str, generation: int) -> Iterator[ProjectionSession]:
        with self._writer:
            work = self._state.working_copy()
            session = MemoryProjectionSession(work, name, generation)
            yield session
            session.flush_rows()
            self._state = work

    @contextlib.contextmanager
    def generations(self, name: str) -> Iterator[Generations]:
        with self._writer:
            work = self._state.records_copy()
            yield MemoryGenerations(work, name)
            self._state = work

    def ensure_schema(self, name: str, create: Callable[[Any], None], *, version: int = 1) -> bool:
        session = self.begin()
        try:
            if self._schemas.get(name, 0) >= version:
                session.rollback()
                return False
            create(session.handle)
        except BaseException:
            session.rollback()
            raise
        self._schemas[name] = version  # under the writer's lock, which the session holds until it commits
        session.commit()
        return True

    def _seen(self) -> _State:
        """The committed state this thread reads: the one pinned by :meth:`snapshot`, or the latest."""
        pinned: _State | None = getattr(self._pins, "state", None)
        return self._state if pinned is None else pinned

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        outer = getattr(self._pins, "state", None)
        if outer is None:
            self._pins.state = self._state  # committed states are never changed, only replaced
        try:
            yield
        finally:
            if outer is None:
                self._pins.state = None

    def checkpoint(self, name: str, generation: int) -> int:
        tracking = self._seen().tracking.get((name, generation))
        return tracking.position if tracking else 0

    def current_generation(self, name: str) -> int:
        return self._seen().generations.get(name, 1)

    def read_table(self, projection: str, table: str) -> Any:
        """The current generation's ``table`` of ``projection``, both looked up in one committed state."""
        state = self._state
        return state.tables.get(table_name(projection, table, state.generations.get(projection, 1)))

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        rows = self._seen().tables.get(physical)
        return None if rows is None else rows.get(key)

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        return query.run(table.codec, self._seen().tables.get(physical, {}).values())

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        return len(Query(query.where).run(table.codec, self._seen().tables.get(physical, {}).values()))

    def rebuilding(self, name: str) -> int | None:
        return self._seen().rebuilds.get(name)

    def recorded_version(self, name: str, generation: int) -> int | None:
        return self._seen().versions.get((name, generation))

    def applied(self, name: str, generation: int) -> int:
        tracking = self._state.tracking.get((name, generation))
        if tracking is None:
            return 0
        return min([tracking.position, *(position - 1 for position in tracking.letters)])

    def quarantine(self, inbox: str, event: NewEvent, reason: str) -> None:
        escaped = json.dumps(event._asdict(), ensure_ascii=True)
        with self._writer:
            self._quarantined[inbox, event.event_id] = Quarantined(
                inbox, event.event_id, event.type_name, reason, escaped, time.time())

    def quarantined(self, inbox: str | None = None) -> list[Quarantined]:
        found = [q for (name, _id), q in self._quarantined.items() if inbox is None or name == inbox]
        return sorted(found, key=lambda q: (q.received_at, q.event_id))

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        found = []
        for (projection, generation), tracking in sorted(self._state.tracking.items()):
            if (name is None or projection == name) and generation == self.current_generation(projection):
                found += [tracking.letters[p] for p in sorted(tracking.letters)]
        return found


__all__ = ["MemoryGenerations", "MemoryProjectionSession", "MemoryStorage", "MemoryWriteSession"]
