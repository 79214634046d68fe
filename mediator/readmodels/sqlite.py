"""SQLite storage for the read-model engine: the embedded default.

The write database holds the write model and the event log; the read
database holds the read models, their checkpoints, dead letters and which
generation queries read. They may be one file or two. Both run in WAL mode, so
readers never block the writer. A command's transaction starts with
``BEGIN IMMEDIATE``, taking SQLite's single writer lock up front: positions are
handed out in commit order with no gaps, so a projection that reads "after my
checkpoint" can never skip an event, even with several writer processes.

Inline projections write in the command's own transaction, so they need the
read models in the write database (one file): SQLite commits a transaction
that spans attached WAL databases atomically per file only.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

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

_WRITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    key TEXT,
    recorded_at REAL NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
"""

_READ_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    projection TEXT NOT NULL,
    generation INTEGER NOT NULL,
    position INTEGER NOT NULL,
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
    position INTEGER NOT NULL,
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
    "INSERT INTO events (event_id, type_name, version, data, key, recorded_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def connect(path: str | Path, *, timeout: float = 30.0) -> sqlite3.Connection:
    """Open a connection the way the engine uses them: autocommit (we BEGIN ourselves), WAL, busy timeout."""
    connection = sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL checkpoints on fsync
    connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return connection


def _abandon(connection: sqlite3.Connection) -> None:
    """Roll back whatever is open, so a failed transaction never keeps the file's write lock."""
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite failed to roll back: {exc}") from exc


def _finish_rebuild_on(connection: sqlite3.Connection, name: str, generation: int, old: int, *, live: bool) -> bool:
    row = connection.execute(
        "SELECT r.generation, COALESCE(g.generation, 1) FROM projection_rebuilds r "
        "LEFT JOIN projection_generations g ON g.projection = r.projection WHERE r.projection = ?", (name,)
    ).fetchone()
    if row is None or tuple(row) != (generation, old):
        return False
    if not live:  # inline: the command's transaction holds the writer lock; the live generation is never behind
        return _swap(connection, name, generation)
    # The replay treats what it applies as replayed; an event it reached before the live generation did would
    # never get its side effects. Swap only once the live generation has dealt with everything the new one has.
    positions = dict(connection.execute(
        "SELECT generation, position FROM projection_tracking WHERE projection = ? AND generation IN (?, ?)",
        (name, generation, old),
    ).fetchall())
    if positions.get(old, 0) < positions.get(generation, 0):
        return False
    return _swap(connection, name, generation)


def _record_version_on(connection: sqlite3.Connection, name: str, generation: int, version: int) -> int:
    connection.execute("INSERT INTO projection_versions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                       (name, generation, version))
    row = connection.execute("SELECT version FROM projection_versions WHERE projection = ? AND generation = ?",
                             (name, generation)).fetchone()
    return int(row[0])


def _swap(connection: sqlite3.Connection, name: str, generation: int) -> bool:
    connection.execute(
        "INSERT INTO projection_generations (projection, generation) VALUES (?, ?) "
        "ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation", (name, generation),
    )
    connection.execute("DELETE FROM projection_rebuilds WHERE projection = ?", (name,))
    return True


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"SQLite failed to {action}: {exc}") from exc


class SqliteProjectionSession(ProjectionSession):
    def __init__(self, connection: sqlite3.Connection, name: str, generation: int) -> None:
        self.name = name
        self.generation = generation
        self.handle = connection
        row = connection.execute(
            "SELECT position FROM projection_tracking WHERE projection = ? AND generation = ?", (name, generation)
        ).fetchone()
        self._position = row[0] if row else 0
        self._moved = False
        self._savepoints = 0

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> None:
        self._position = position
        self._moved = True

    def flush(self) -> None:
        """Write the checkpoint (inside the session's transaction)."""
        if self._moved:
            self.handle.execute(
                "INSERT INTO projection_tracking (projection, generation, position) VALUES (?, ?, ?) "
                "ON CONFLICT (projection, generation) DO UPDATE SET position = excluded.position",
                (self.name, self.generation, self._position),
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
            self.handle.execute(f"ROLLBACK TO {name}")
            self.handle.execute(f"RELEASE {name}")
            raise
        self.handle.execute(f"RELEASE {name}")

    def park(self, letter: DeadLetter) -> None:
        self.handle.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (letter.projection, letter.generation, letter.position, letter.event_id, letter.type_name, letter.key,
             letter.reason, letter.attempts, letter.status),
        )

    def dead_letters(self) -> list[DeadLetter]:
        rows = self.handle.execute(
            "SELECT * FROM dead_letters WHERE projection = ? AND generation = ? ORDER BY position",
            (self.name, self.generation),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def release(self, position: int) -> None:
        self.handle.execute(
            "DELETE FROM dead_letters WHERE projection = ? AND generation = ? AND position = ?",
            (self.name, self.generation, position),
        )


class SqliteWriteSession(WriteSession):
    def __init__(self, storage: SqliteStorage, connection: sqlite3.Connection) -> None:
        self._storage = storage
        self.handle = connection
        self._projections: list[SqliteProjectionSession] = []
        self._open = True

    def append(self, events: Sequence[NewEvent]) -> int:
        # try/except rather than _translated(): this runs once per command.
        try:
            if not events:
                row = self.handle.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
                return int(row[0])
            execute = self.handle.execute
            for e in events:
                cursor = execute(_INSERT_EVENT, e)  # NewEvent is a tuple in the column order
            # Positions are handed out under the writer's lock, so the last row id is the last position.
            return int(cursor.lastrowid or 0)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite failed to append events: {exc}") from exc

    def _need_one_file(self, name: str) -> None:
        if not self._storage.supports_inline:
            raise StorageError(
                f"Inline projection {name!r} needs its read model in the write database, but the read models "
                "are in a separate file; use one file or deliver this projection in the background."
            )

    def projection(self, name: str, generation: int) -> ProjectionSession:
        self._need_one_file(name)
        session = SqliteProjectionSession(self.handle, name, generation)
        self._projections.append(session)
        return session

    def swap(self, name: str, generation: int) -> None:
        self._need_one_file(name)
        self._storage._swap_on(self.handle, name, generation)

    def record_version(self, name: str, generation: int, version: int) -> int:
        self._need_one_file(name)
        with _translated("record a projection version"):
            return _record_version_on(self.handle, name, generation, version)

    def finish_rebuild(self, name: str, generation: int, old: int) -> bool:
        self._need_one_file(name)
        return _finish_rebuild_on(self.handle, name, generation, old, live=False)

    def commit(self) -> None:
        if self._open:
            self._open = False
            try:
                for session in self._projections:
                    session.flush()
                self.handle.execute("COMMIT")
            except BaseException as exc:
                _abandon(self.handle)
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"SQLite failed to commit: {exc}") from exc
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


class SqliteStorage(Storage):
    """Event log and write model in ``write_path``; read models in ``read_path`` (the same file by default).

    Each write transaction takes a pooled connection of its own (so commands
    interleaved on one event loop never share one); reads use one connection per
    thread, closed when the thread ends. Driver errors surface as
    :class:`~mediator.readmodels.StorageError`.
    """

    def __init__(self, write_path: str | os.PathLike[str], read_path: str | os.PathLike[str] | None = None,
                 *, timeout: float = 30.0) -> None:
        self.write_path = Path(write_path)
        self.read_path = Path(read_path) if read_path is not None else self.write_path
        self.single_file = self.read_path.resolve() == self.write_path.resolve()
        self.supports_inline = self.single_file
        self.timeout = timeout
        self._local = threading.local()
        self._all: set[sqlite3.Connection] = set()
        self._all_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._closed = False
        with _translated("create the schema"):
            self._write().executescript(_WRITE_SCHEMA)
            self._read().executescript(_READ_SCHEMA)

    def _connection(self, attribute: str, path: Path) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, attribute, None)
        if connection is None:
            connection = self._open(path)
            setattr(self._local, attribute, connection)
            # Close it when its thread is gone, so short-lived threads do not pile up connections.
            weakref.finalize(threading.current_thread(), self._close_one, connection)
        return connection

    def _open(self, path: Path) -> sqlite3.Connection:
        connection = connect(path, timeout=self.timeout)
        with self._all_lock:
            self._all.add(connection)
        return connection

    def _close_one(self, connection: sqlite3.Connection) -> None:
        with self._all_lock:
            self._all.discard(connection)
        connection.close()

    def _give_back(self, connection: sqlite3.Connection) -> None:
        if not self._closed:
            self._pool.append(connection)  # list.append and .pop are atomic: no lock on the command path

    def _write(self) -> sqlite3.Connection:
        """This thread's connection to the write database, for reading the log (never for writing)."""
        return self._connection("write", self.write_path)

    def _read(self) -> sqlite3.Connection:
        return self._connection("read", self.read_path)

    def transient(self, exc: BaseException) -> bool:
        # "database is locked" (another process held the lock past the busy timeout), a disk I/O error.
        if isinstance(exc, StorageError):
            return True
        return isinstance(exc, sqlite3.OperationalError) and any(
            word in str(exc) for word in ("database is locked", "database table is locked", "disk I/O error"))

    def read_connection(self) -> sqlite3.Connection:
        """This thread's connection to the read models, for query handlers (never inside a transaction)."""
        return self._read()

    def begin(self) -> WriteSession:
        # Each write session takes a pooled connection of its own, so commands interleaved on one event loop
        # (one thread) do not share a transaction.
        try:
            connection = self._pool.pop()
        except IndexError:
            connection = self._open(self.write_path)
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._give_back(connection)
            raise StorageError(f"SQLite failed to begin a write transaction: {exc}") from exc
        return SqliteWriteSession(self, connection)

    def read(self, after: int, limit: int, type_names: Collection[str] | None = None) -> list[StoredEvent]:
        with _translated("read the event log"):
            if type_names is None:
                rows = self._write().execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                    (after, limit),
                ).fetchall()
            else:
                names = sorted(type_names)
                marks = ",".join("?" * len(names))
                rows = self._write().execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE position > ? AND type_name IN ({marks}) "
                    "ORDER BY position LIMIT ?",
                    (after, *names, limit),
                ).fetchall()
        return list(map(StoredEvent._make, rows))

    def head(self) -> int:
        with _translated("read the head of the log"):
            row = self._write().execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def session(self, name: str, generation: int) -> Iterator[ProjectionSession]:
        connection = self._read()
        with _translated("begin a projection transaction"):
            connection.execute("BEGIN IMMEDIATE")
        try:
            session = SqliteProjectionSession(connection, name, generation)
            yield session
            session.flush()
            connection.execute("COMMIT")
        except BaseException as exc:
            _abandon(connection)
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"SQLite failed in a projection transaction: {exc}") from exc
            raise

    def checkpoint(self, name: str, generation: int) -> int:
        with _translated("read a checkpoint"):
            row = self._read().execute(
                "SELECT position FROM projection_tracking WHERE projection = ? AND generation = ?", (name, generation)
            ).fetchone()
        return int(row[0]) if row else 0

    def current_generation(self, name: str) -> int:
        with _translated("read a generation"):
            row = self._read().execute(
                "SELECT generation FROM projection_generations WHERE projection = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else 1

    def swap(self, name: str, generation: int) -> None:
        self._swap_on(self._read(), name, generation)

    def _swap_on(self, connection: sqlite3.Connection, name: str, generation: int) -> None:
        with _translated("swap a generation"):
            connection.execute(
                "INSERT INTO projection_generations (projection, generation) VALUES (?, ?) "
                "ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation",
                (name, generation),
            )

    def rebuilding(self, name: str) -> int | None:
        with _translated("read a rebuild"):
            row = self._read().execute(
                "SELECT generation FROM projection_rebuilds WHERE projection = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else None

    def claim_rebuild(self, name: str, version: int = 1, *, replacing: int | None = None) -> int:
        connection = self._read()
        with _translated("claim a rebuild"):
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = connection.execute(
                    "SELECT generation FROM projection_rebuilds WHERE projection = ?", (name,)).fetchone()
                if row is None or row[0] == replacing:
                    current = connection.execute(
                        "SELECT version FROM projection_versions WHERE projection = ? AND generation = COALESCE("
                        "(SELECT generation FROM projection_generations WHERE projection = ?), 1)", (name, name),
                    ).fetchone()
                    if current is not None and current[0] > version:
                        raise ReadModelUnavailableError(name, int(current[0]), version)
                    highest = connection.execute(
                        "SELECT MAX(g) FROM (SELECT generation AS g FROM projection_tracking WHERE projection = ? "
                        "UNION ALL SELECT generation FROM projection_generations WHERE projection = ? "
                        "UNION ALL SELECT generation FROM projection_versions WHERE projection = ? "
                        "UNION ALL SELECT 1)", (name, name, name)).fetchone()[0]
                    row = (int(highest) + 1,)
                    connection.execute(
                        "INSERT INTO projection_rebuilds VALUES (?, ?) "
                        "ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation", (name, row[0]))
                    connection.execute("INSERT INTO projection_versions VALUES (?, ?, ?)", (name, row[0], version))
                connection.execute("COMMIT")
            except BaseException:
                _abandon(connection)
                raise
        return int(row[0])

    def recorded_version(self, name: str, generation: int) -> int | None:
        with _translated("read a projection version"):
            row = self._read().execute(
                "SELECT version FROM projection_versions WHERE projection = ? AND generation = ?", (name, generation)
            ).fetchone()
        return int(row[0]) if row else None

    def record_version(self, name: str, generation: int, version: int) -> int:
        with _translated("record a projection version"):
            return _record_version_on(self._read(), name, generation, version)

    def finish_rebuild(self, name: str, generation: int, old: int, *, check_live: bool = True) -> bool:
        connection = self._read()
        with _translated("finish a rebuild"):
            connection.execute("BEGIN IMMEDIATE")
            try:
                done = _finish_rebuild_on(connection, name, generation, old, live=check_live)
                connection.execute("COMMIT")
            except BaseException:
                _abandon(connection)
                raise
        return done

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        query = (
            "SELECT d.* FROM dead_letters d LEFT JOIN projection_generations g ON g.projection = d.projection "
            "WHERE d.generation = COALESCE(g.generation, 1)"
        )
        params: tuple[Any, ...] = ()
        if name is not None:
            query += " AND d.projection = ?"
            params = (name,)
        with _translated("read dead letters"):
            rows = self._read().execute(query + " ORDER BY d.projection, d.position", params).fetchall()
        return [DeadLetter(*row) for row in rows]

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
            self._pool.clear()
        self._local = threading.local()
