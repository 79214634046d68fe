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
import os
import re
import threading
import time
import weakref
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from mediator._errors import MissingExtraError
from mediator.readmodels import (
    DeadLetter,
    NewEvent,
    ProjectionSession,
    ReadModelUnavailableError,
    Storage,
    StorageError,
    StoredEvent,
    WriteSession,
)

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
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
CREATE TABLE IF NOT EXISTS projection_tracking (
    projection TEXT NOT NULL,
    generation INTEGER NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (projection, generation)
);
CREATE TABLE IF NOT EXISTS projection_generations (
    projection TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_rebuilds (
    projection TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_versions (
    projection TEXT NOT NULL,
    generation INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (projection, generation)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    projection TEXT NOT NULL,
    generation INTEGER NOT NULL,
    position BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    type_name TEXT NOT NULL,
    key TEXT,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (projection, generation, position)
);
"""

_EVENT_COLUMNS = "position, event_id, type_name, version, data, key, recorded_at, meta"
_INSERT_EVENT = (
    "INSERT INTO events (position, event_id, type_name, version, data, key, recorded_at, meta) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_DEAD_LETTER_COLUMNS = "projection, generation, position, event_id, type_name, key, reason, attempts, status"


def connection_options(schema: str) -> dict[str, Any]:
    """The libpq options of every engine connection: autocommit, ``schema`` first on the path, keepalives.

    Keepalives on both ends make a connection over a dead network path fail within about 15 s instead of
    hours: the client stops using it, and the server ends the session and frees its advisory locks, so a
    standby takes the projection over (the server's side is set per session: ``tcp_keepalives_*`` and
    ``client_connection_check_interval``, PostgreSQL 14+). A process that dies frees them at once. The
    application name ``mediator:<pid>`` shows in ``pg_stat_activity`` which process holds what.
    """
    # The client's keepalives end our side of a dead path; the server's (the -c settings, per session) end its
    # side, and with it the session and its advisory locks, so a standby can take over in bounded time.
    server_side = ("-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
                   "-c client_connection_check_interval=2000")
    return {"autocommit": True, "options": f"-c search_path={schema} {server_side}", "keepalives": 1,
            "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "application_name": f"mediator:{os.getpid()}"}


def connect(dsn: str, schema: str, **options: Any) -> psycopg.Connection[Any]:
    """A connection the way the engine uses them (see :func:`connection_options`); we BEGIN ourselves.

    An ``application_name`` given in ``dsn`` is kept.
    """
    settings = connection_options(schema)
    if "application_name" in conninfo_to_dict(dsn):
        del settings["application_name"]
    return psycopg.connect(dsn, **{**settings, **options})


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _checked_schema(schema: str) -> str:
    # Unquoted in search_path and in SQL: lower case only, so the name means the same everywhere.
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"Schema name {schema!r}: use lower-case letters, digits and _ (at most 63, not first a "
                         "digit), so it needs no quoting.")
    return schema


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise StorageError(f"PostgreSQL failed to {action}: {exc}") from exc


def _abandon(connection: psycopg.Connection[Any]) -> None:
    """Roll back whatever is open; a broken connection has nothing open and is dropped by the caller."""
    if connection.closed or connection.broken:
        return
    if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        try:
            connection.execute("ROLLBACK")
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL failed to roll back: {exc}") from exc


def lock_key(schema: str, projection: str) -> int:
    """The advisory lock key of a projection: a stable 63-bit number from schema and name (BLAKE2b)."""
    digest = hashlib.blake2b(f"{schema}\0{projection}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFFFFFFFFFF


class PostgresProjectionSession(ProjectionSession):
    def __init__(self, connection: psycopg.Connection[Any], name: str, generation: int) -> None:
        self.name = name
        self.generation = generation
        self.handle = connection
        # Locks the checkpoint row until this transaction ends: two sessions of one generation run one after the
        # other, and the second reads the checkpoint the first committed.
        # A row lock, not a write: an idle runner polling every projection must not write a row each time.
        lock = "SELECT position FROM projection_tracking WHERE projection = %s AND generation = %s FOR UPDATE"
        row = connection.execute(lock, (name, generation)).fetchone()
        if row is None:  # the generation's first session: make its row (once, whoever races), then lock it
            connection.execute(
                "INSERT INTO projection_tracking (projection, generation, position) VALUES (%s, %s, 0) "
                "ON CONFLICT (projection, generation) DO NOTHING", (name, generation))
            row = connection.execute(lock, (name, generation)).fetchone()
            assert row is not None
        self._position: int = row[0]
        self._moved = False
        self._savepoints = 0

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> None:
        self._position = position
        self._moved = True

    def flush(self) -> None:
        if self._moved:
            self.handle.execute(
                "UPDATE projection_tracking SET position = %s WHERE projection = %s AND generation = %s",
                (self._position, self.name, self.generation),
            )
            self._moved = False

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self.handle.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.handle.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.handle.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.handle.execute(f"RELEASE SAVEPOINT {name}")

    def park(self, letter: DeadLetter) -> None:
        self.handle.execute(
            f"INSERT INTO dead_letters ({_DEAD_LETTER_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (projection, generation, position) DO UPDATE SET event_id = excluded.event_id, "
            "type_name = excluded.type_name, key = excluded.key, reason = excluded.reason, "
            "attempts = excluded.attempts, status = excluded.status",
            (letter.projection, letter.generation, letter.position, letter.event_id, letter.type_name, letter.key,
             letter.reason, letter.attempts, letter.status),
        )

    def dead_letters(self) -> list[DeadLetter]:
        rows = self.handle.execute(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE projection = %s AND generation = %s "
            "ORDER BY position", (self.name, self.generation),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def release(self, position: int) -> None:
        self.handle.execute(
            "DELETE FROM dead_letters WHERE projection = %s AND generation = %s AND position = %s",
            (self.name, self.generation, position),
        )


def _record_version_on(connection: psycopg.Connection[Any], name: str, generation: int, version: int) -> int:
    connection.execute("INSERT INTO projection_versions VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                       (name, generation, version))
    row = connection.execute("SELECT version FROM projection_versions WHERE projection = %s AND generation = %s",
                             (name, generation)).fetchone()
    assert row is not None
    return int(row[0])


def _swap(connection: psycopg.Connection[Any], name: str, generation: int) -> None:
    connection.execute(
        "INSERT INTO projection_generations (projection, generation) VALUES (%s, %s) "
        "ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation", (name, generation),
    )


def _finish_rebuild_on(connection: psycopg.Connection[Any], name: str, generation: int, old: int, *,
                       live: bool) -> bool:
    # FOR UPDATE on the rebuild row: two processes finishing the same rebuild take turns, and the second sees
    # it gone.
    row = connection.execute(
        "SELECT r.generation, COALESCE(g.generation, 1) FROM projection_rebuilds r "
        "LEFT JOIN projection_generations g ON g.projection = r.projection WHERE r.projection = %s "
        "FOR UPDATE OF r", (name,),
    ).fetchone()
    if row is None or tuple(row) != (generation, old):
        return False
    if live:
        # Swap only once the live generation has dealt with everything the replay has (see the port).
        positions = dict(connection.execute(
            "SELECT generation, position FROM projection_tracking WHERE projection = %s AND generation IN (%s, %s)",
            (name, generation, old),
        ).fetchall())
        if positions.get(old, 0) < positions.get(generation, 0):
            return False
    _swap(connection, name, generation)
    connection.execute("DELETE FROM projection_rebuilds WHERE projection = %s", (name,))
    return True


class PostgresWriteSession(WriteSession):
    def __init__(self, storage: PostgresStorage, connection: psycopg.Connection[Any]) -> None:
        self._storage = storage
        self.handle = connection
        self._projections: list[PostgresProjectionSession] = []
        self._open = True
        self._appended = False

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
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL failed to append events: {exc}") from exc

    def projection(self, name: str, generation: int) -> ProjectionSession:
        # Inline projections write under the log's lock, as on SQLite: commands apply them in log order.
        with _translated("start an inline projection"):
            if not self._appended:
                self._lock_head(0)
            session = PostgresProjectionSession(self.handle, name, generation)
        self._projections.append(session)
        return session

    def swap(self, name: str, generation: int) -> None:
        with _translated("swap a generation"):
            _swap(self.handle, name, generation)

    def record_version(self, name: str, generation: int, version: int) -> int:
        with _translated("record a projection version"):
            return _record_version_on(self.handle, name, generation, version)

    def finish_rebuild(self, name: str, generation: int, old: int) -> bool:
        with _translated("finish a rebuild"):
            if not self._appended:
                self._lock_head(0)
            return _finish_rebuild_on(self.handle, name, generation, old, live=False)

    def commit(self) -> None:
        if self._open:
            self._open = False
            try:
                for session in self._projections:
                    session.flush()
                self.handle.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(StorageError):
                    _abandon(self.handle)
                if isinstance(exc, psycopg.Error):
                    raise StorageError(f"PostgreSQL failed to commit: {exc}") from exc
                raise
            finally:
                self._storage._give_back(self.handle)

    def rollback(self) -> None:
        if self._open:
            self._open = False
            try:
                _abandon(self.handle)
            finally:
                self._storage._give_back(self.handle)


class PostgresStorage(Storage):
    """Event log, write model and read models in one PostgreSQL database, under ``schema``.

    ``dsn`` is a libpq connection string (``"host=127.0.0.1 dbname=test"``). Each write transaction takes a
    pooled connection of its own; reads use one connection per thread. The schema is created if missing.
    Driver errors, a server that is down included, surface as :class:`~mediator.readmodels.StorageError`;
    a broken connection is dropped and the next call opens a new one.
    """

    notifies = True
    leases = True

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
        self._local = threading.local()
        self._all: set[psycopg.Connection[Any]] = set()
        self._all_lock = threading.Lock()
        self._pool: list[psycopg.Connection[Any]] = []
        self._closed = False
        self._locks_connection: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()
        self._locks_checked = 0.0
        self._locks_lock = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        with _translated("create the schema"), self._open() as setup:
            # Two processes creating the schema at once would race on the catalogue: take turns.
            setup.execute("BEGIN")
            setup.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "__schema__"),))
            setup.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            setup.execute(_SCHEMA)
            setup.execute("COMMIT")

    # -- connections -----------------------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StorageError("This PostgresStorage is closed.")
        connection = connect(self.dsn, self.schema, connect_timeout=max(1, round(self.connect_timeout)))
        with self._all_lock:
            self._all.add(connection)
        return connection

    def _forget(self, connection: psycopg.Connection[Any]) -> None:
        with self._all_lock:
            self._all.discard(connection)
        with contextlib.suppress(Exception):
            connection.close()

    def _give_back(self, connection: psycopg.Connection[Any]) -> None:
        if self._closed or connection.closed or connection.broken:
            self._forget(connection)
        else:
            self._pool.append(connection)

    def _read(self) -> psycopg.Connection[Any]:
        connection: psycopg.Connection[Any] | None = getattr(self._local, "read", None)
        if connection is not None and (connection.closed or connection.broken):
            self._forget(connection)
            connection = None
        if connection is None:
            connection = self._open()
            self._local.read = connection
            weakref.finalize(threading.current_thread(), self._forget, connection)
        return connection

    def _rows(self, query: Any, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a read-only statement on this thread's connection; once more on a new one if that one broke.

        A restart of the server breaks every open connection; without the retry the first read after it
        would fail although the server is back. Outside a transaction, reading again is always safe.
        """
        connection = self._read()
        # Inside a projection's transaction (this thread's connection is the session's), a new connection
        # would read outside it, and the session would go on with the dead one: let the session fail instead.
        outside = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        try:
            return connection.execute(query, params).fetchall()
        except psycopg.OperationalError:
            if not (outside and connection.broken):
                raise
            self._drop_broken(connection)
            return self._read().execute(query, params).fetchall()

    def _begin(self) -> psycopg.Connection[Any]:
        """This thread's connection with a transaction begun on it; a new connection if that one broke."""
        connection = self._read()
        try:
            connection.execute("BEGIN")
        except psycopg.OperationalError:
            if not connection.broken:
                raise
            self._drop_broken(connection)
            connection = self._read()
            connection.execute("BEGIN")
        return connection

    def _drop_broken(self, connection: psycopg.Connection[Any]) -> None:
        """Forget this thread's broken connection, unclosed: a caller may still hold it (``read_connection``)."""
        self._local.read = None
        with self._all_lock:
            self._all.discard(connection)

    @contextlib.contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection[Any]]:
        """A transaction on this thread's connection: committed if the block succeeds, else rolled back."""
        with _translated(action):
            connection = self._begin()
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(StorageError):
                    _abandon(connection)
                raise

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

    def read_connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, for query handlers (autocommit: every statement sees the latest commit).

        Prefer :meth:`query`, which recovers from a server restart: a connection held across one fails once.
        """
        with _translated("connect"):
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
        with _translated("read the event log"):
            if type_names is None:
                rows = self._rows(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > %s ORDER BY position LIMIT %s",
                    (after, limit),
                )
            else:
                rows = self._rows(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > %s AND type_name = ANY(%s) "
                    "ORDER BY position LIMIT %s",
                    (after, sorted(type_names), limit),
                )
        return list(map(StoredEvent._make, rows))

    def head(self) -> int:
        with _translated("read the head of the log"):
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
            session = PostgresProjectionSession(connection, name, generation)
            yield session
            session.flush()

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
        return isinstance(exc, StorageError | psycopg.OperationalError | psycopg.errors.TransactionRollback
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

    def checkpoint(self, name: str, generation: int) -> int:
        with _translated("read a checkpoint"):
            rows = self._rows(
                "SELECT position FROM projection_tracking WHERE projection = %s AND generation = %s",
                (name, generation),
            )
        return int(rows[0][0]) if rows else 0

    def current_generation(self, name: str) -> int:
        with _translated("read a generation"):
            rows = self._rows("SELECT generation FROM projection_generations WHERE projection = %s", (name,))
        return int(rows[0][0]) if rows else 1

    def swap(self, name: str, generation: int) -> None:
        with self._transaction("swap a generation") as connection:
            _swap(connection, name, generation)

    def rebuilding(self, name: str) -> int | None:
        with _translated("read a rebuild"):
            rows = self._rows("SELECT generation FROM projection_rebuilds WHERE projection = %s", (name,))
        return int(rows[0][0]) if rows else None

    def claim_rebuild(self, name: str, version: int = 1, *, replacing: int | None = None) -> int:
        with self._transaction("claim a rebuild") as connection:
            # One claim at a time per projection, across processes.
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema, f"rebuild:{name}"),))
            row = connection.execute(
                "SELECT generation FROM projection_rebuilds WHERE projection = %s", (name,)).fetchone()
            if row is None or row[0] == replacing:
                current = connection.execute(
                    "SELECT version FROM projection_versions WHERE projection = %s AND generation = COALESCE("
                    "(SELECT generation FROM projection_generations WHERE projection = %s), 1)", (name, name),
                ).fetchone()
                if current is not None and current[0] > version:
                    raise ReadModelUnavailableError(name, int(current[0]), version)
                highest = connection.execute(
                    "SELECT MAX(g) FROM (SELECT generation AS g FROM projection_tracking WHERE projection = %s "
                    "UNION ALL SELECT generation FROM projection_generations WHERE projection = %s "
                    "UNION ALL SELECT generation FROM projection_versions WHERE projection = %s "
                    "UNION ALL SELECT 1) AS known", (name, name, name)).fetchone()
                assert highest is not None
                row = (int(highest[0]) + 1,)
                connection.execute("INSERT INTO projection_rebuilds VALUES (%s, %s) ON CONFLICT (projection) "
                                   "DO UPDATE SET generation = EXCLUDED.generation", (name, row[0]))
                connection.execute("INSERT INTO projection_versions VALUES (%s, %s, %s)", (name, row[0], version))
        return int(row[0])

    def recorded_version(self, name: str, generation: int) -> int | None:
        with _translated("read a projection version"):
            rows = self._rows("SELECT version FROM projection_versions WHERE projection = %s AND generation = %s",
                              (name, generation))
        return int(rows[0][0]) if rows else None

    def record_version(self, name: str, generation: int, version: int) -> int:
        with self._transaction("record a projection version") as connection:
            return _record_version_on(connection, name, generation, version)

    def finish_rebuild(self, name: str, generation: int, old: int, *, check_live: bool = True) -> bool:
        with self._transaction("finish a rebuild") as connection:
            return _finish_rebuild_on(connection, name, generation, old, live=check_live)

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        query = (
            "SELECT d.projection, d.generation, d.position, d.event_id, d.type_name, d.key, d.reason, d.attempts, "
            "d.status FROM dead_letters d LEFT JOIN projection_generations g ON g.projection = d.projection "
            "WHERE d.generation = COALESCE(g.generation, 1)"
        )
        params: tuple[Any, ...] = ()
        if name is not None:
            query += " AND d.projection = %s"
            params = (name,)
        with _translated("read dead letters"):
            rows = self._rows(query + " ORDER BY d.projection, d.position", params)
        return [DeadLetter(*row) for row in rows]

    def drop_schema(self) -> None:
        """Drop ``schema`` and everything in it (for tests and benchmarks)."""
        with _translated("drop the schema"), connect(self.dsn, self.schema) as connection:
            connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for connection in self._all:
                with contextlib.suppress(Exception):
                    connection.close()
            self._all.clear()
            self._pool.clear()
        self._held.clear()
        self._locks_connection = None
        self._listener = None
        self._local = threading.local()
