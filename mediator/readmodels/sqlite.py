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

import structlog

from ._errors import DatabaseNotFoundError, StorageError
from ._opening import may_create
from ._ports import Generations, NewEvent, ProjectionSession, StoredEvent, WriteSession
from ._sql import (
    EVENT_COLUMNS,
    READ_SCHEMA,
    WRITE_SCHEMAS,
    Dialect,
    SqlGenerations,
    SqlProjectionSession,
    SqlStorage,
    SqlWriteSession,
    Statements,
    translate,
    translated,
    upgrade_schema,
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
""" + WRITE_SCHEMAS

_INSERT_EVENT = (
    "INSERT INTO events (event_id, type_name, version, data, key, recorded_at, meta) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

_DATA_ERRORS: tuple[type[Exception], ...] = (sqlite3.DataError, OverflowError, UnicodeEncodeError)
"""What sqlite3 raises for a value it cannot store: the input's fault, not the database's."""
_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, *_DATA_ERRORS)
SQLITE = Dialect(
    "SQLite", "?", locks_rows=False, driver_error=sqlite3.Error, data_errors=_DATA_ERRORS,
    column_types={"text": "TEXT", "integer": "INTEGER", "real": "REAL", "boolean": "INTEGER", "json": "TEXT"},
    replace="replace", table_options=" WITHOUT ROWID",
    missing_table=lambda exc: isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc),
)
_SQL = Statements(SQLITE)
_log = structlog.get_logger("mediator.readmodels")


SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
CHECKPOINT_EVERY = 0.02
"""Seconds between the background WAL checkpoints of a :class:`SqliteStorage` that writes (its default), while
commits come. A checkpoint's fsyncs hold up the commits of every process writing to the same disk for as long as
they take, longer the more pages they copy; more checkpoints copy a page written often more times. Measured with a
projection worker beside a writer (ext4): at 2,000,000 orders, paced at half CRUD's checkout rate, lag p99 medians
of 64 ms every 0.05 s, 49 ms every 0.02 s and 43 ms every 0.01 s; at 200,000 orders, back to back, the writer's
checkouts a second 4% fewer every 0.02 s and 8% fewer every 0.01 s than every 0.05 s."""
IDLE_CHECKPOINT_WAIT = 0.25
"""Seconds the background checkpoints wait at most while nothing is committed: after a pass that found nothing new
to copy the wait doubles, up to this; the first pass that copies something goes back to ``checkpoint_every``."""
FALLBACK_CHECKPOINT_PAGES = 20_000
"""WAL pages (80 MB at 4 KiB) past which a committing connection checkpoints by itself after all, as SQLite does
at 1,000 by default: only reached if the background checkpoints stopped or cannot keep up."""


def connect(path: str | Path, *, timeout: float = 30.0, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """Open a connection the way the engine uses them: autocommit (we BEGIN ourselves), WAL, busy timeout.

    ``synchronous`` is SQLite's setting: ``NORMAL`` (in WAL mode, a commit survives the process crashing, but not
    the machine losing power before the next checkpoint), ``FULL`` (every commit is synced to disk: it survives
    power loss too, at a cost per commit), ``EXTRA`` (``FULL`` and the directory synced as well).
    """
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous={synchronous!r}: use one of {', '.join(SYNCHRONOUS)}.")
    connection = sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return connection


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _leniently(connection: sqlite3.Connection, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``statement`` with text that is not UTF-8 (a row written by other means) read with its bad
    bytes escaped, so such an event is parked as undecodable instead of stopping every projection.

    Only after the plain read failed: sqlite3's own decoding is several times faster than a text factory.
    """
    connection.text_factory = _lenient_text
    try:
        return connection.execute(statement, params).fetchall()
    finally:
        connection.text_factory = str


def _abandon(connection: sqlite3.Connection) -> None:
    """Roll back whatever is open, so a failed transaction never keeps the file's write lock."""
    if connection.in_transaction:
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite failed to roll back: {exc}") from exc


@contextlib.contextmanager
def _transaction(connection: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the file's write lock) on ``connection``: committed if the block succeeds."""
    with translated(SQLITE, f"begin {what}"):
        connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException as exc:
        _abandon(connection)
        if isinstance(exc, _ERRORS):
            raise translate(SQLITE, f"run {what}", exc) from exc
        raise


class SqliteWriteSession(SqlWriteSession):
    _sql = _SQL
    _storage: SqliteStorage

    def _abandon(self) -> None:
        _abandon(self.handle)

    def append(self, events: Sequence[NewEvent]) -> int:
        # try/except rather than translated(): this runs once per command.
        try:
            if not events:
                row = self.handle.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
                return int(row[0])
            execute = self.handle.execute
            for e in events:
                cursor = execute(_INSERT_EVENT, e)  # NewEvent is a tuple in the column order
            # Positions are handed out under the writer's lock, so the last row id is the last position.
            return int(cursor.lastrowid or 0)
        except _ERRORS as exc:
            raise translate(SQLITE, "append events", exc) from exc

    def _need_one_file(self, name: str) -> None:
        if not self._storage.supports_inline:
            raise StorageError(
                f"Inline projection {name!r} needs its read model in the write database, but the read models "
                "are in a separate file; use one file or deliver this projection in the background."
            )

    def projection(self, name: str, generation: int) -> ProjectionSession:
        self._need_one_file(name)
        try:  # not translated(): this runs per inline projection per command
            session = SqlProjectionSession(self.handle, name, generation, _SQL)
        except sqlite3.Error as exc:
            raise translate(SQLITE, "start an inline projection", exc) from exc
        self._projections.append(session)
        return session

    def generations(self, name: str) -> Generations:
        self._need_one_file(name)
        return SqlGenerations(self.handle, name, _SQL)


# -- existing_only() (mediator.readmodels._opening): open, never create ------------------------------------------
def _require_existing(path: Path, role: str, table: str) -> None:
    """Raise :class:`DatabaseNotFoundError` unless ``path`` is a SQLite file holding ``table``; never create it.

    Opened with ``mode=rw``: unlike a plain connect, that fails rather than create a missing file.
    """
    where = f"SQLite {role} {str(path.resolve())!r}"
    if not path.is_file():
        raise DatabaseNotFoundError(where, "does not exist", "the path")
    with translated(SQLITE, f"open the {role}"), contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)) as connection:
        found = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    if found is None:
        raise DatabaseNotFoundError(where, f"has no table {table}: no read-model engine has set it up", "the path")
# -- end of existing_only() ------------------------------------------------------------------------------------


class _Checkpointer:
    """A daemon thread that copies the WAL back into the database every ``every`` seconds (``PASSIVE``: it never
    waits for a reader or a writer), so committing connections do not. While nothing is committed it looks less
    and less often, down to every :data:`IDLE_CHECKPOINT_WAIT` seconds.

    SQLite's own rule checkpoints in whichever connection's commit passes 1,000 WAL pages: that commit waits for
    two fsyncs and the copy, a few milliseconds every hundred commands or so (half a checkout's commit time, all
    in the slowest 1%). Here the copy runs beside the writer; sqlite3 releases the GIL while it runs. The thread
    holds no reference to the storage: it ends when the storage is closed or collected.
    """

    def __init__(self, paths: Collection[Path], every: float, timeout: float) -> None:
        self.stop = threading.Event()
        self.failures = 0
        """Checkpoints that raised (the last error is logged once per run of failures; the next success resets)."""
        self.thread = threading.Thread(target=self._run, args=(sorted(set(paths)), every, timeout),
                                       name="mediator-sqlite-checkpoints", daemon=True)
        self.thread.start()

    def _run(self, paths: list[Path], every: float, timeout: float) -> None:
        connections: list[sqlite3.Connection] = []
        try:
            connections += (sqlite3.connect(str(path), timeout=timeout, isolation_level=None) for path in paths)
            seen: list[object] = [None] * len(connections)
            wait = every
            while not self.stop.wait(wait):
                copied = False
                for index, connection in enumerate(connections):
                    state = self._checkpoint(connection)
                    if state != seen[index]:  # the WAL moved since the last pass: something was committed
                        seen[index], copied = state, True
                wait = every if copied else min(wait * 2, max(every, IDLE_CHECKPOINT_WAIT))
        except sqlite3.Error as exc:  # could not even open the files: commits checkpoint at the fallback
            _log.warning("sqlite_checkpoints_stopped", error=str(exc))
        finally:
            for connection in connections:
                connection.close()

    def _checkpoint(self, connection: sqlite3.Connection) -> object:
        """Checkpoint one file; return the WAL's state after it (its frames and how many are copied back), or
        ``None`` if the checkpoint failed."""
        try:
            state = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the file removed under us, a disk error: commits checkpoint at the fallback
            self.failures += 1
            if self.failures == 1:
                _log.warning("sqlite_checkpoint_failed", error=str(exc))
            return None
        self.failures = 0
        return tuple(state[1:]) if state else None


def _close_with_thread(storage: weakref.ref[SqliteStorage], connection: sqlite3.Connection) -> None:
    alive = storage()
    if alive is not None:
        alive._close_one(connection)
    else:
        connection.close()


class SqliteStorage(SqlStorage):
    """Event log and write model in ``write_path``; read models in ``read_path`` (the same file by default).

    Each write transaction takes a pooled connection of its own (so commands
    interleaved on one event loop never share one); reads use one connection per
    thread, closed when the thread ends. Driver errors surface as
    :class:`~mediator.readmodels.StorageError`.

    ``checkpoint_every`` (seconds; :data:`CHECKPOINT_EVERY` by default): once the storage first writes, a
    background thread checkpoints the WAL that often, instead of the commit that crosses SQLite's 1,000 pages
    (a connection still checkpoints by itself past :data:`FALLBACK_CHECKPOINT_PAGES`). ``None`` leaves
    checkpoints to SQLite's own rule.
    """

    _sql = _SQL

    def __init__(self, write_path: str | os.PathLike[str], read_path: str | os.PathLike[str] | None = None,
                 *, timeout: float = 30.0, synchronous: str = "NORMAL",
                 checkpoint_every: float | None = CHECKPOINT_EVERY) -> None:
        if checkpoint_every is not None and not checkpoint_every > 0:
            raise ValueError(f"checkpoint_every={checkpoint_every!r}: a number of seconds above 0, or None.")
        self.write_path = Path(write_path)
        self.read_path = Path(read_path) if read_path is not None else self.write_path
        self.single_file = self.read_path.resolve() == self.write_path.resolve()
        self.supports_inline = self.single_file
        self.timeout = timeout
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: set[sqlite3.Connection] = set()
        self._all_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._closed = False
        self.checkpoint_every = checkpoint_every
        self._checkpointer: _Checkpointer | None = None
        self._checkpoints_due = checkpoint_every is not None
        if not may_create():  # existing_only(): the command line never creates a database a typo named
            _require_existing(self.write_path, "database" if self.single_file else "write database", "events")
            _require_existing(self.read_path, "database" if self.single_file else "read database",
                              "projection_tracking")
        with translated(SQLITE, "create the schema"):
            self._write().executescript(_WRITE_SCHEMA)
            self._read().executescript(READ_SCHEMA)
            upgrade_schema(self._read(), SQLITE)
            if not self.single_file:  # process managers keep their checkpoints and parked steps beside the log
                self._write().executescript(READ_SCHEMA)
                upgrade_schema(self._write(), SQLITE)

    def _connection(self, attribute: str, path: Path) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, attribute, None)
        if connection is None:
            connection = self._open(path)
            setattr(self._local, attribute, connection)
            # Close it when its thread is gone, so short-lived threads do not pile up connections (through a weak
            # reference: a thread that outlives the storage must not keep it, and its checkpoints, alive).
            weakref.finalize(threading.current_thread(), _close_with_thread, weakref.ref(self), connection)
        return connection

    def _open(self, path: Path) -> sqlite3.Connection:
        connection = connect(path, timeout=self.timeout, synchronous=self.synchronous)
        if self.checkpoint_every is not None:
            connection.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}")
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

    def _start_checkpoints(self) -> None:
        """Start the background checkpoints, on the first write (a process that only reads never starts them)."""
        with self._all_lock:
            if self._checkpoints_due and self.checkpoint_every is not None and not self._closed:
                self._checkpoints_due = False
                self._checkpointer = _Checkpointer((self.write_path, self.read_path), self.checkpoint_every,
                                                   self.timeout)
                weakref.finalize(self, self._checkpointer.stop.set)

    def _write(self) -> sqlite3.Connection:
        """This thread's connection to the write database, for reading the log (never for writing)."""
        return self._connection("write", self.write_path)

    def _read(self) -> sqlite3.Connection:
        return self._connection("read", self.read_path)

    def transient(self, exc: BaseException) -> bool:
        # "database is locked" (another process held the lock past the busy timeout), a disk I/O error.
        if isinstance(exc, StorageError):
            return super().transient(exc)
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
            if self._checkpoints_due:
                self._start_checkpoints()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._give_back(connection)
            raise StorageError(f"SQLite failed to begin a write transaction: {exc}") from exc
        return SqliteWriteSession(self, connection)

    def _rows(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._read().execute(statement, params).fetchall()

    def _log_rows(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._write().execute(statement, params).fetchall()

    def _change(self, statement: str, params: Sequence[Any]) -> None:
        if self._checkpoints_due:
            self._start_checkpoints()
        self._read().execute(statement, params)  # autocommit: committed at once

    def read(self, after: int, limit: int, type_names: Collection[str] | None = None) -> list[StoredEvent]:
        if type_names is None:
            statement = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
            params: tuple[Any, ...] = (after, limit)
        else:
            names = sorted(type_names)
            statement = (f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? "
                         f"AND type_name IN ({','.join('?' * len(names))}) ORDER BY position LIMIT ?")
            params = (after, *names, limit)
        connection = self._write()
        with translated(SQLITE, "read the event log"):
            try:
                rows = connection.execute(statement, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "decode" not in str(exc):
                    raise
                rows = _leniently(connection, statement, params)
        return list(map(StoredEvent._make, rows))

    def head(self) -> int:
        with translated(SQLITE, "read the head of the log"):
            row = self._write().execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def session(self, name: str, generation: int) -> Iterator[ProjectionSession]:
        if self._checkpoints_due:
            self._start_checkpoints()
        with _transaction(self._read(), "a projection transaction") as connection:
            session = SqlProjectionSession(connection, name, generation, _SQL)
            yield session
            session.flush()

    @contextlib.contextmanager
    def generations(self, name: str) -> Iterator[Generations]:
        if self._checkpoints_due:
            self._start_checkpoints()
        # BEGIN IMMEDIATE takes the read database's one write lock: no two of these interleave, in any process.
        with _transaction(self._read(), "a transaction on generation records") as connection:
            yield SqlGenerations(connection, name, _SQL)

    def close(self) -> None:
        self._closed = True
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop.set()
            checkpointer.thread.join()
        with self._all_lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
            self._pool.clear()
        self._local = threading.local()


__all__ = [
    "CHECKPOINT_EVERY", "FALLBACK_CHECKPOINT_PAGES", "IDLE_CHECKPOINT_WAIT", "SqliteStorage", "SqliteWriteSession",
    "connect",
]
