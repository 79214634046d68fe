"""PostgreSQL storage for the read-model engine: many service processes and projection workers on one database.

Needs the ``postgres`` extra (psycopg 3). Everything lives in one database and
``schema``: the write model, the event log, checkpoints, dead letters, the
generation table and the read models, so inline projections work as on SQLite.

**Ordering.** Positions are handed out by a serialised append: a command's
transaction takes the row lock on ``log_head`` (one row, the last position)
when it appends, and keeps it until it commits or rolls back. The next writer's
``UPDATE`` waits on that lock and then reads the committed head. So positions
are gapless (a rollback gives its positions back) and are committed in order:
a position is never visible while a lower one is still uncommitted, and a
projection that reads "after my checkpoint" can never skip an event -- the way
a sequence-per-row design can, when a transaction that took a lower number
commits after one that took a higher number. Only the append-to-commit window
is serialised: the command's own reads and writes run concurrently with other
commands'. The alternatives, and why not: reading by transaction-id high-water
mark (``pg_snapshot_xmin``) keeps writers fully parallel but makes every reader
hold back behind the oldest open transaction, including ones that never
append, and positions get gaps; commit-order visibility through a separate
"publisher" needs a process of its own. The serialised append costs one row
lock per command, and the benchmark ``python -m benchmarks postgres`` measures
what that leaves of two writers' throughput.

**Workers.** Each projection is run by one runner at a time: a runner holds a
session-level advisory lock per projection (:meth:`PostgresStorage.acquire`) on
a connection of its own. When its process dies, PostgreSQL ends that
connection and frees the lock, and another runner takes the projection at its
next poll. A batch also locks its checkpoint row (``FOR UPDATE``), so even two
sessions that both believe they own a projection apply each event once.

**Wake-ups.** Each append notifies the schema's channel (``mediator_log_<hash of the schema>``); an idle
runner blocks on ``LISTEN`` and still reads the head now and then, in case a
notification was lost with a dropped connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from .._errors import IdempotencyKeyInUseError, MissingExtraError
from ._errors import DatabaseNotFoundError, StorageError
from ._opening import may_create
from ._pgpool import POSTGRES, Connections, _abandon, _checked_schema, connect, connection_options, lock_key
from ._ports import Generations, NewEvent, ProjectionSession, StoredEvent, WriteSession
from ._sql import (
    EVENT_COLUMNS,
    READ_SCHEMA,
    WRITE_SCHEMAS,
    SqlGenerations,
    SqlProjectionSession,
    SqlStorage,
    SqlWriteSession,
    Statements,
    translate,
    translated,
    upgrade_schema,
)

try:
    import psycopg
    from psycopg import sql
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "postgres", _missing.name) from _missing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    type_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    key TEXT,
    recorded_at DOUBLE PRECISION NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS log_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    position BIGINT NOT NULL
);
INSERT INTO log_head (only_row, position) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
""" + WRITE_SCHEMAS + """
CREATE INDEX IF NOT EXISTS idempotency_keys_by_expiry ON idempotency_keys (expires_at);
""" + READ_SCHEMA

_STAMP = f"mediator:{hashlib.blake2b(_SCHEMA.encode(), digest_size=8).hexdigest()}"
"""The row in ``write_schemas`` saying this release's tables were made (another release's tables differ)."""


def _stamped(connection: psycopg.Connection[Any], schema: str) -> bool:
    """Whether ``schema`` holds this release's tables already (its stamp, in a table that exists)."""
    row = connection.execute("SELECT to_regclass(%s)", (f"{schema}.write_schemas",)).fetchone()
    if row is None or row[0] is None:
        return False
    return connection.execute("SELECT 1 FROM write_schemas WHERE name = %s", (_STAMP,)).fetchone() is not None


_INSERT_EVENT = (
    "INSERT INTO events (position, event_id, type_name, version, data, key, recorded_at, meta) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)

_SQL = Statements(POSTGRES)


class PostgresWriteSession(SqlWriteSession):
    _sql = _SQL
    _storage: PostgresStorage
    _appended = False
    """Whether this transaction holds the log's row lock (taken by the first append, held to commit)."""

    def _abandon(self) -> None:
        _abandon(self.handle)

    def _lock_head(self, count: int) -> int:
        """Take the log's row lock (held to commit) and move the head by ``count``; return the new head."""
        row = self.handle.execute(self._storage._advance_head, (count,)).fetchone()
        assert row is not None
        self._appended = True
        return int(row[0])

    def append(self, events: Sequence[NewEvent]) -> int:
        try:
            if not events:
                if self._projections or self._appended:
                    return self._lock_head(0)
                row = self.handle.execute("SELECT position FROM log_head").fetchone()
                assert row is not None
                return int(row[0])
            last = self._lock_head(len(events))
            first = last - len(events) + 1
            cursor = self.handle.cursor()
            cursor.executemany(_INSERT_EVENT, [(first + i, *e) for i, e in enumerate(events)])
            return last
        except (psycopg.Error, UnicodeEncodeError) as exc:
            raise translate(POSTGRES, "append events", exc) from exc

    def _lock_key(self, key: str) -> None:
        # Writers overlap here: the key's own lock, held to commit, keeps a second transaction with the key from
        # running its handler beside the first (it is refused at once rather than made to wait).
        with translated(POSTGRES, "claim an idempotency key"):
            row = self.handle.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                      (lock_key(self._storage.schema, f"idempotency:{key}"),)).fetchone()
        if not row[0]:
            raise IdempotencyKeyInUseError(key)

    def projection(self, name: str, generation: int) -> ProjectionSession:
        # Inline projections write under the log's lock, as on SQLite: commands apply them in log order.
        with translated(POSTGRES, "start an inline projection"):
            if not self._appended:
                self._lock_head(0)
            session = SqlProjectionSession(self.handle, name, generation, _SQL)
        self._projections.append(session)
        return session

    def generations(self, name: str) -> Generations:
        with translated(POSTGRES, "lock generation records"):
            # Under the log's lock, as commands apply inline projections; then the projection's own lock, which
            # every transaction on its generation records takes (see PostgresStorage.generations).
            if not self._appended:
                self._lock_head(0)
            self.handle.execute("SELECT pg_advisory_xact_lock(%s)",
                                (lock_key(self._storage.schema, f"generations:{name}"),))
        return SqlGenerations(self.handle, name, _SQL)


# -- existing_only() (mediator.readmodels._opening): open, never create ------------------------------------------
_CORE_TABLES = ("events", "log_head", "projection_tracking")


def _require_existing(connection: psycopg.Connection[Any], schema: str) -> None:
    """Raise :class:`DatabaseNotFoundError` unless ``schema`` holds the engine's tables; create nothing."""
    where = f"PostgreSQL schema {schema!r} in database {connection.info.dbname!r}"
    if connection.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
        raise DatabaseNotFoundError(where, "does not exist", "the DSN and the schema name")
    found = {row[0] for row in connection.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = ANY(%s)", (schema, list(_CORE_TABLES)))}
    missing = [table for table in _CORE_TABLES if table not in found]
    if missing:
        tables = f"table {missing[0]}" if len(missing) == 1 else f"tables {', '.join(missing)}"
        raise DatabaseNotFoundError(where, f"has no {tables}: no read-model engine has set it up",
                                    "the DSN and the schema name")
# -- end of existing_only() ------------------------------------------------------------------------------------


class PostgresStorage(Connections, SqlStorage):
    """Event log, write model and read models in one PostgreSQL database, under ``schema``.

    ``dsn`` is a libpq connection string (``"host=127.0.0.1 dbname=test"``). Each write transaction takes a
    pooled connection of its own; reads use one connection per thread. The schema is created if missing (not inside
    :func:`~mediator.readmodels.existing_only`).
    Driver errors, a server that is down included, surface as :class:`~mediator.readmodels.StorageError`;
    a broken connection is dropped and the next call opens a new one.
    """

    notifies = True
    leases = True
    _sql = _SQL

    def __init__(self, dsn: str, *, schema: str = "public", connect_timeout: float = 5.0,
                 lock_recheck: float = 1.0) -> None:
        self.dsn = dsn
        self.schema = _checked_schema(schema)
        self.connect_timeout = connect_timeout
        self.lock_recheck = lock_recheck
        self.channel = f"mediator_log_{lock_key(schema, 'log'):x}"  # short whatever the schema's length
        self._advance_head = (
            f"UPDATE log_head SET position = position + %s RETURNING position, pg_notify('{self.channel}', '')"
        )
        super().__init__()
        self._locks_connection: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()
        self._locks_checked = 0.0
        self._locks_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        with translated(POSTGRES, "create the schema"), self._open() as setup:
            if not may_create():  # existing_only(): the command line never creates a schema a typo named
                _require_existing(setup, schema)
            # Two processes creating the schema at once would race on the catalogue: take turns.
            setup.execute("BEGIN")
            setup.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "__schema__"),))
            # A schema this release made already is left alone: even with IF NOT EXISTS, its DDL locks tables
            # (CREATE INDEX a SHARE lock, ALTER TABLE an exclusive one) that running writers hold, and a process
            # starting beside busy ones would wait on them, or deadlock with them.
            if not _stamped(setup, schema):
                setup.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                setup.execute(_SCHEMA)
                upgrade_schema(setup, POSTGRES)
                setup.execute("INSERT INTO write_schemas (name, version) VALUES (%s, 1) ON CONFLICT DO NOTHING",
                              (_STAMP,))
            setup.execute("COMMIT")

    async def async_connect(self) -> psycopg.AsyncConnection[Any]:
        """A new asyncio connection to this storage's database and schema, for ``async`` query handlers.

        Autocommit, so each statement reads the latest commit; the caller closes it (``async with``). For a
        pool, give ``psycopg_pool.AsyncConnectionPool(storage.dsn, kwargs=connection_options(storage.schema))``.
        The engine itself (commands' transactions, projections) uses the sync driver: an async command holds
        its event loop's turn for its transaction, as on SQLite.
        """
        try:
            return await psycopg.AsyncConnection.connect(self.dsn, **connection_options(self.schema))
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL failed to connect: {exc}") from exc

    def query(self, statement: Any, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only ``statement`` on this thread's connection, for query handlers.

        Autocommit, so it sees the latest commit. A connection broken by a server restart is replaced and the
        statement run once more; a server that stays unreachable raises :class:`StorageError`. An error in the
        statement itself (a missing table, say) raises psycopg's own error, as from ``execute``.
        """
        try:
            return self._rows(statement, params)
        except psycopg.OperationalError as exc:
            raise StorageError(f"PostgreSQL failed to run a query: {exc}") from exc

    def _change(self, statement: str, params: Sequence[Any]) -> None:
        self._read().execute(statement, params)  # autocommit: committed at once

    def _lock_schema(self, connection: Any, name: str) -> None:
        # Two processes starting at once would race on the catalogue with CREATE ... IF NOT EXISTS: take turns.
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, f"schema:{name}"),))

    def read_connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, for query handlers (autocommit: every statement sees the latest commit).

        Prefer :meth:`query`, which recovers from a server restart: a connection held across one fails once.
        """
        with translated(POSTGRES, "connect"):
            return self._read()

    # -- write side ------------------------------------------------------------------------

    def begin(self) -> WriteSession:
        while True:
            try:
                connection = self._pool.pop()
            except IndexError:
                break
            try:
                connection.execute("BEGIN")
            except psycopg.Error:
                # Pooled connections die with a server restart; nothing was done on this one: drop it, go on.
                self._forget(connection)
                continue
            return PostgresWriteSession(self, connection)
        try:
            connection = self._open()
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL failed to begin a write transaction: {exc}") from exc
        try:
            connection.execute("BEGIN")
        except psycopg.Error as exc:
            self._forget(connection)
            raise StorageError(f"PostgreSQL failed to begin a write transaction: {exc}") from exc
        return PostgresWriteSession(self, connection)

    # -- the log -----------------------------------------------------------------------------

    def read(self, after: int, limit: int, type_names: Collection[str] | None = None) -> list[StoredEvent]:
        with translated(POSTGRES, "read the event log"):
            if type_names is None:
                rows = self._rows(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s",
                    (after, limit),
                )
            else:
                rows = self._rows(
                    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > %s AND type_name = ANY(%s) "
                    "ORDER BY position LIMIT %s",
                    (after, sorted(type_names), limit),
                )
        return list(map(StoredEvent._make, rows))

    def head(self) -> int:
        with translated(POSTGRES, "read the head of the log"):
            (row,) = self._rows("SELECT position FROM log_head", ())
        return int(row[0])

    def wait_for_append(self, timeout: float) -> bool:
        """Block until some process appends (a notification), or ``timeout`` s; ``True`` if notified."""
        try:
            if self._listener is None or self._listener.closed or self._listener.broken:
                if self._listener is not None:
                    self._forget(self._listener)
                self._listener = self._open()
                self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                return True  # appends made while nobody listened are unknown: look at the head
            notified = False
            for _notice in self._listener.notifies(timeout=timeout, stop_after=1):
                notified = True
            if notified:  # drain the rest without waiting, one wake-up for a burst of commits
                for _notice in self._listener.notifies(timeout=0):
                    pass
            return notified
        except psycopg.Error:
            if self._listener is not None:
                self._forget(self._listener)
                self._listener = None
            time.sleep(min(timeout, 0.1))
            return True

    # -- projections -------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, name: str, generation: int) -> Iterator[ProjectionSession]:
        with self._transaction("run a projection transaction") as connection:
            session = SqlProjectionSession(connection, name, generation, _SQL)
            yield session
            session.flush()

    @contextlib.contextmanager
    def generations(self, name: str) -> Iterator[Generations]:
        with self._transaction("change generation records") as connection:
            # One transaction at a time per projection's records, across processes (the lock ends with it).
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, f"generations:{name}"),))
            yield SqlGenerations(connection, name, _SQL)

    def acquire(self, name: str) -> bool:
        """Try to become the one runner of projection ``name``; ``True`` while this storage holds it.

        The lock is PostgreSQL's session-level advisory lock on a connection kept for it: it is held until
        :meth:`release_all`, :meth:`close`, or this process's death, when the server frees it. Held locks are
        re-checked every ``lock_recheck`` s; if that connection broke, they were lost and are taken again.
        """
        with self._locks_lock:
            try:
                now = time.monotonic()
                connection = self._locks_connection
                if connection is not None and now - self._locks_checked >= self.lock_recheck:
                    connection.execute("SELECT 1")
                    self._locks_checked = now
                if connection is None or connection.closed or connection.broken:
                    raise psycopg.OperationalError("no lock connection")
                if name in self._held:
                    return True
                row = connection.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(self.schema, name),)).fetchone()
            except psycopg.Error:
                self._held.clear()  # a broken connection took its locks with it
                if self._locks_connection is not None:
                    self._forget(self._locks_connection)
                    self._locks_connection = None
                try:
                    self._locks_connection = connection = self._open()
                    self._locks_checked = time.monotonic()
                    row = connection.execute(
                        "SELECT pg_try_advisory_lock(%s)", (lock_key(self.schema, name),)).fetchone()
                except psycopg.Error:
                    return False
            if row is not None and row[0]:
                self._held.add(name)
                return True
            return False

    def transient(self, exc: BaseException) -> bool:
        # Connection failures (a restart included: AdminShutdown), deadlocks, serialisation failures, lock and
        # statement timeouts: none says anything about the event being applied.
        if isinstance(exc, StorageError):
            return super().transient(exc)
        return isinstance(exc, psycopg.OperationalError | psycopg.errors.TransactionRollback
                          | psycopg.errors.InFailedSqlTransaction)

    def holds(self, name: str) -> bool:
        return name in self._held

    def release(self, name: str) -> None:
        with self._locks_lock:
            if name in self._held:
                self._held.discard(name)
                if self._locks_connection is not None:
                    with contextlib.suppress(psycopg.Error):
                        self._locks_connection.execute(
                            "SELECT pg_advisory_unlock(%s)", (lock_key(self.schema, name),))

    def release_all(self) -> None:
        """Give up every projection this storage runs (another runner takes them at its next poll)."""
        with self._locks_lock:
            self._held.clear()
            if self._locks_connection is not None:
                with contextlib.suppress(psycopg.Error):
                    self._locks_connection.execute("SELECT pg_advisory_unlock_all()")

    def drop_schema(self) -> None:
        """Drop ``schema`` and everything in it (for tests and benchmarks)."""
        with translated(POSTGRES, "drop the schema"), connect(self.dsn, self.schema) as connection:
            connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def close(self) -> None:
        self._close_all()
        self._held.clear()
        self._locks_connection = None
        self._listener = None


__all__ = ["PostgresStorage", "PostgresWriteSession", "connect", "connection_options", "lock_key"]
