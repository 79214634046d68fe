"""A storage whose log is one backend and whose projections keep their read models in stores of their own.

The seeds' "different databases for each": the write model and the event log stay where commands commit them
(SQLite, PostgreSQL), and some projections keep their read models, checkpoints and dead letters in another store
(Redis, a SQLite file per service), in that store's own transactions, so every event still takes effect once::

    storage = RoutedStorage(PostgresStorage(dsn), {"inventory": RedisReadStore("redis://cache:6379/0")})
    engine = ReadModels(storage, event_types)

Projections not named keep theirs in the log's storage. A projection in another store cannot be inline: its
changes would not commit with the command's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ._errors import ProjectionConfigError, StorageError
from ._ports import (
    DeadLetter,
    Generations,
    IdempotencyRecord,
    NewEvent,
    ProjectionSession,
    Quarantined,
    ReadStore,
    ScheduledCommand,
    Storage,
    StoredEvent,
    WriteSession,
    owner_of,
)
from ._tables import Query, Table


class RoutedStorage(Storage):
    """``log`` for the event log, the write model and every projection not in ``read_stores``; each projection
    named in ``read_stores`` in its own store. :meth:`close` closes them all."""

    def __init__(self, log: Storage, read_stores: Mapping[str, ReadStore]) -> None:
        for name, store in read_stores.items():
            if not isinstance(store, ReadStore):
                raise ProjectionConfigError(f"The read store of {name!r} is a {type(store).__name__}, not a ReadStore.")
        self.log = log
        self.read_stores = dict(read_stores)
        self.supports_inline = log.supports_inline
        self.notifies = log.notifies
        self.leases = log.leases or any(store.leases for store in self.read_stores.values())
        self._stores: list[ReadStore] = [log, *{id(s): s for s in self.read_stores.values() if s is not log}.values()]

    def store_of(self, name: str) -> ReadStore:
        """The store that keeps projection ``name``'s read models."""
        return self.read_stores.get(owner_of(name), self.log)  # a partition's name: its projection's store

    def partitioned_for(self, name: str) -> bool:
        return self.store_of(name).partitioned_for(name)

    def inline_for(self, name: str) -> bool:
        return name not in self.read_stores and self.log.inline_for(name)

    # -- the log and the write side: the log's -------------------------------------------------------

    def begin(self) -> WriteSession:
        return _RoutedWriteSession(self.log.begin(), self)

    def read(self, after: int, limit: int, type_names: Collection[str] | None = None) -> list[StoredEvent]:
        return self.log.read(after, limit, type_names)

    def head(self) -> int:
        return self.log.head()

    def wait_for_append(self, timeout: float) -> bool:
        return self.log.wait_for_append(timeout)

    def quarantine(self, inbox: str, event: NewEvent, reason: str) -> None:
        self.log.quarantine(inbox, event, reason)

    def expire_keys(self, now: float) -> int:
        return self.log.expire_keys(now)

    def count_keys(self, now: float) -> int:
        return self.log.count_keys(now)

    def scheduled(self, status: str | None = None) -> list[ScheduledCommand]:
        return self.log.scheduled(status)

    def next_due(self) -> float | None:
        return self.log.next_due()

    def quarantined(self, inbox: str | None = None) -> list[Quarantined]:
        return self.log.quarantined(inbox)

    def ensure_schema(self, name: str, create: Callable[[Any], None], *, version: int = 1) -> bool:
        return self.log.ensure_schema(name, create, version=version)

    # -- each projection's store ---------------------------------------------------------------------

    def session(self, name: str, generation: int) -> AbstractContextManager[ProjectionSession]:
        return self.store_of(name).session(name, generation)

    def generations(self, name: str) -> AbstractContextManager[Generations]:
        return self.store_of(name).generations(name)

    def checkpoint(self, name: str, generation: int) -> int:
        return self.store_of(name).checkpoint(name, generation)

    def current_generation(self, name: str) -> int:
        return self.store_of(name).current_generation(name)

    def rebuilding(self, name: str) -> int | None:
        return self.store_of(name).rebuilding(name)

    def recorded_version(self, name: str, generation: int) -> int | None:
        return self.store_of(name).recorded_version(name, generation)

    def applied(self, name: str, generation: int) -> int:
        return self.store_of(name).applied(name, generation)

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        if name is not None:
            return self.store_of(name).all_dead_letters(name)
        routed = set(self.read_stores)
        letters = [letter for letter in self.log.all_dead_letters() if letter.projection not in routed]
        for projection, store in self.read_stores.items():
            letters += store.all_dead_letters(projection)
        return sorted(letters, key=lambda letter: (letter.projection, letter.position))

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        return self.store_of(str(table.projection)).load_row(table, physical, key)

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        return self.store_of(str(table.projection)).select_rows(table, physical, query)

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        return self.store_of(str(table.projection)).count_rows(table, physical, query)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """A snapshot in each store at once: reads within one store see one commit (stores commit apart, so two
        stores' tables may be of different moments)."""
        with contextlib.ExitStack() as stack:
            for store in self._stores:
                stack.enter_context(store.snapshot())
            yield

    def acquire(self, name: str) -> bool:
        return self.store_of(name).acquire(name)

    def holds(self, name: str) -> bool:
        return self.store_of(name).holds(name)

    def release(self, name: str) -> None:
        self.store_of(name).release(name)

    def release_all(self) -> None:
        for store in self._stores:
            store.release_all()

    def transient(self, exc: BaseException) -> bool:
        return any(store.transient(exc) for store in self._stores)

    def close(self) -> None:
        for store in self._stores:
            store.close()


class _RoutedWriteSession(WriteSession):
    """The log's write session, refusing inline work on projections whose read models are in another store."""

    def __init__(self, session: WriteSession, storage: RoutedStorage) -> None:
        self._session = session
        self._storage = storage
        self.handle = session.handle

    def _refuse_routed(self, name: str) -> None:
        if name in self._storage.read_stores:
            raise StorageError(f"Projection {name!r} keeps its read models in another store than the log's: its "
                               "changes cannot commit in a command's transaction (it cannot be inline).")

    def append(self, events: Sequence[NewEvent]) -> int:
        return self._session.append(events)

    def projection(self, name: str, generation: int) -> ProjectionSession:
        self._refuse_routed(name)
        return self._session.projection(name, generation)

    def generations(self, name: str) -> Generations:
        self._refuse_routed(name)
        return self._session.generations(name)

    def claim_key(self, key: str) -> IdempotencyRecord | None:
        return self._session.claim_key(key)

    def keep_key(self, record: IdempotencyRecord) -> None:
        self._session.keep_key(record)

    def process(self, name: str) -> ProjectionSession:
        return self._session.process(name)

    def schedule(self, scheduled: ScheduledCommand) -> None:
        self._session.schedule(scheduled)

    def unschedule(self, schedule_id: str) -> bool:
        return self._session.unschedule(schedule_id)

    def take_due(self, now: float) -> ScheduledCommand | None:
        return self._session.take_due(now)

    def commit(self) -> None:
        self._session.commit()

    def rollback(self) -> None:
        self._session.rollback()


__all__ = ["RoutedStorage"]
