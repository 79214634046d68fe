"""What the SQL backends share: the read side's tables, their statements and their sessions, written once.

SQLite (:mod:`mediator.readmodels.sqlite`) and PostgreSQL (:mod:`mediator.readmodels.postgres`) keep
checkpoints, generation records and dead letters in the same tables with the same statements. What differs
is small and explicit in a :class:`Dialect`: the parameter marker, and whether a projection session locks
its checkpoint row (PostgreSQL, whose transactions run side by side) or relies on the database's one writer
(SQLite). The event log, connections and locks across processes are each backend's own.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import attrs

from ._errors import StorageDataError, StorageError
from ._ports import DeadLetter, Generations, NewEvent, ProjectionSession, Quarantined, Storage, WriteSession

READ_SCHEMA = """
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
    retry_at DOUBLE PRECISION,
    PRIMARY KEY (projection, generation, position)
);
CREATE TABLE IF NOT EXISTS inbox_quarantine (
    inbox TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    event TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (inbox, event_id)
);
"""
"""The tables of checkpoints, generation records and dead letters, in SQL both dialects read alike."""

EVENT_COLUMNS = "position, event_id, type_name, version, data, key, recorded_at, meta"
_LETTER_COLUMNS = "projection, generation, position, event_id, type_name, key, reason, attempts, status, retry_at"
_QUARANTINE_COLUMNS = "inbox, event_id, type_name, reason, event, received_at"


def upgrade_schema(connection: Any, dialect: Dialect) -> None:
    """Bring tables made by an earlier release up to :data:`READ_SCHEMA` (columns added since), idempotently."""
    if dialect.marker == "?":
        columns = {row[1] for row in connection.execute("PRAGMA table_info(dead_letters)").fetchall()}
        if "retry_at" not in columns:
            connection.execute("ALTER TABLE dead_letters ADD COLUMN retry_at DOUBLE PRECISION")
    else:
        connection.execute("ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS retry_at DOUBLE PRECISION")


@attrs.frozen
class Dialect:
    """How one SQL database differs, for the statements written once here."""

    name: str
    """The database's name, for error messages: ``"SQLite failed to read a checkpoint: ..."``."""
    marker: str
    """The driver's parameter marker (``?`` for sqlite3, ``%s`` for psycopg)."""
    locks_rows: bool
    """Whether projection sessions lock their checkpoint row (``SELECT ... FOR UPDATE``): needed where two
    sessions of one generation can run at once; SQLite runs one writing transaction at a time anyway."""
    driver_error: type[Exception]
    """The driver's root error, translated into :class:`~mediator.readmodels.StorageError`."""
    data_errors: tuple[type[Exception], ...] = ()
    """Errors that mean the database refused a value (translated into
    :class:`~mediator.readmodels.StorageDataError`, the input's fault, never transient)."""

    def sql(self, text: str) -> str:
        """``text``, written with ``?`` markers, in this dialect."""
        return text if self.marker == "?" else text.replace("?", self.marker)


class Statements:
    """The shared statements in one dialect, formatted once per storage."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        self.dialect = dialect
        self.checkpoint = q("SELECT position FROM projection_tracking WHERE projection = ? AND generation = ?")
        self.lock_checkpoint = self.checkpoint + " FOR UPDATE"
        self.create_checkpoint = q(
            "INSERT INTO projection_tracking (projection, generation, position) VALUES (?, ?, 0) "
            "ON CONFLICT (projection, generation) DO NOTHING")
        self.save_checkpoint = q(
            "INSERT INTO projection_tracking (projection, generation, position) VALUES (?, ?, ?) "
            "ON CONFLICT (projection, generation) DO UPDATE SET position = excluded.position")
        self.current = q("SELECT generation FROM projection_generations WHERE projection = ?")
        self.rebuilding = q("SELECT generation FROM projection_rebuilds WHERE projection = ?")
        self.version = q("SELECT version FROM projection_versions WHERE projection = ? AND generation = ?")
        self.known = q(
            "SELECT generation FROM projection_tracking WHERE projection = ? "
            "UNION SELECT generation FROM projection_generations WHERE projection = ? "
            "UNION SELECT generation FROM projection_versions WHERE projection = ?")
        self.set_current = q(
            "INSERT INTO projection_generations (projection, generation) VALUES (?, ?) "
            "ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation")
        self.set_rebuilding = q(
            "INSERT INTO projection_rebuilds (projection, generation) VALUES (?, ?) "
            "ON CONFLICT (projection) DO UPDATE SET generation = excluded.generation")
        self.clear_rebuilding = q("DELETE FROM projection_rebuilds WHERE projection = ?")
        self.add_version = q(
            "INSERT INTO projection_versions (projection, generation, version) VALUES (?, ?, ?) "
            "ON CONFLICT (projection, generation) DO NOTHING")
        self.park = q(
            f"INSERT INTO dead_letters ({_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (projection, generation, position) DO UPDATE SET event_id = excluded.event_id, "
            "type_name = excluded.type_name, key = excluded.key, reason = excluded.reason, "
            "attempts = excluded.attempts, status = excluded.status, retry_at = excluded.retry_at")
        self.dead_letters = q(
            f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE projection = ? AND generation = ? ORDER BY position")
        self.release = q("DELETE FROM dead_letters WHERE projection = ? AND generation = ? AND position = ?")
        current_letters = (
            f"SELECT {', '.join(f'd.{c}' for c in _LETTER_COLUMNS.split(', '))} FROM dead_letters d "
            "LEFT JOIN projection_generations g ON g.projection = d.projection "
            "WHERE d.generation = COALESCE(g.generation, 1)")
        self.all_dead_letters = current_letters + " ORDER BY d.projection, d.position"
        self.dead_letters_of = q(current_letters + " AND d.projection = ? ORDER BY d.position")
        self.applied = q(
            "SELECT (SELECT position FROM projection_tracking WHERE projection = ? AND generation = ?), "
            "(SELECT MIN(position) FROM dead_letters WHERE projection = ? AND generation = ?)")
        self.quarantine = q(
            f"INSERT INTO inbox_quarantine ({_QUARANTINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (inbox, event_id) DO UPDATE SET reason = excluded.reason, event = excluded.event, "
            "received_at = excluded.received_at")
        self.quarantined = f"SELECT {_QUARANTINE_COLUMNS} FROM inbox_quarantine ORDER BY received_at, event_id"
        self.quarantined_by = q(f"SELECT {_QUARANTINE_COLUMNS} FROM inbox_quarantine WHERE inbox = ? "
                                "ORDER BY received_at, event_id")


def translate(dialect: Dialect, action: str, exc: BaseException) -> StorageError:
    """The framework's error for ``exc`` raised by the driver while doing ``action``: a :class:`StorageDataError`
    if the database refused a value, else a :class:`StorageError`. Only the first line of the driver's message is
    kept: PostgreSQL's ``DETAIL`` lines carry the values (an e-mail, an address), which must not reach logs."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kind = StorageDataError if isinstance(exc, dialect.data_errors) else StorageError
    return kind(f"{dialect.name} failed to {action}: {first_line}")


@contextlib.contextmanager
def translated(dialect: Dialect, action: str) -> Iterator[None]:
    """Raise the driver's errors inside the block as :class:`StorageError`, saying what failed."""
    try:
        yield
    except (dialect.driver_error, *dialect.data_errors) as exc:
        raise translate(dialect, action, exc) from exc


class SqlProjectionSession(ProjectionSession):
    """A projection's transaction on a SQL connection; ``handle`` is that connection (the driver's own)."""

    def __init__(self, connection: Any, name: str, generation: int, statements: Statements) -> None:
        self.name = name
        self.generation = generation
        self.handle = connection
        self._sql = statements
        key = (name, generation)
        if statements.dialect.locks_rows:
            # Locks the checkpoint row until this transaction ends: two sessions of one generation run one after
            # the other, and the second reads the checkpoint the first committed. A row lock, not a write: an
            # idle runner polling every projection must not write a row each time.
            row = connection.execute(statements.lock_checkpoint, key).fetchone()
            if row is None:  # the generation's first session: make its row (once, whoever races), then lock it
                connection.execute(statements.create_checkpoint, key)
                row = connection.execute(statements.lock_checkpoint, key).fetchone()
        else:
            row = connection.execute(statements.checkpoint, key).fetchone()
        self._position: int = row[0] if row else 0
        self._moved = False
        self._savepoints = 0

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> None:
        self._position = position
        self._moved = True

    def flush(self) -> None:
        """Write the checkpoint (inside the session's transaction), if it moved."""
        if self._moved:
            self.handle.execute(self._sql.save_checkpoint, (self.name, self.generation, self._position))
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
        # A letter's texts come from the log and from errors: escape what the database could refuse (a lone
        # surrogate from a row that was not UTF-8, a NUL), or parking the event would fail the projection.
        fields = tuple(_printable(value) if isinstance(value, str) else value for value in attrs.astuple(letter))
        self.handle.execute(self._sql.park, fields)

    def dead_letters(self) -> list[DeadLetter]:
        rows = self.handle.execute(self._sql.dead_letters, (self.name, self.generation)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def release(self, position: int) -> None:
        self.handle.execute(self._sql.release, (self.name, self.generation, position))


class SqlGenerations(Generations):
    """A projection's generation records on a SQL connection, inside the transaction its storage opened.

    The driver's errors surface as :class:`StorageError` naming what failed, as everywhere else.
    """

    def __init__(self, connection: Any, name: str, statements: Statements) -> None:
        self.name = name
        self._connection = connection
        self._sql = statements

    def _rows(self, action: str, statement: str, params: Sequence[Any]) -> list[Any]:
        with translated(self._sql.dialect, action):
            return list(self._connection.execute(statement, params).fetchall())

    def _value(self, action: str, statement: str, params: Sequence[Any]) -> Any:
        rows = self._rows(action, statement, params)
        return rows[0][0] if rows else None

    def _change(self, action: str, statement: str, params: Sequence[Any]) -> None:
        with translated(self._sql.dialect, action):
            self._connection.execute(statement, params)

    def current(self) -> int:
        return int(self._value("read a generation", self._sql.current, (self.name,)) or 1)

    def rebuilding(self) -> int | None:
        found = self._value("read a rebuild", self._sql.rebuilding, (self.name,))
        return None if found is None else int(found)

    def version(self, generation: int) -> int | None:
        found = self._value("read a projection version", self._sql.version, (self.name, generation))
        return None if found is None else int(found)

    def known(self) -> Collection[int]:
        rows = self._rows("read the generations", self._sql.known, (self.name, self.name, self.name))
        return {int(row[0]) for row in rows}

    def checkpoint(self, generation: int) -> int:
        return int(self._value("read a checkpoint", self._sql.checkpoint, (self.name, generation)) or 0)

    def set_current(self, generation: int) -> None:
        self._change("swap a generation", self._sql.set_current, (self.name, generation))

    def set_rebuilding(self, generation: int | None) -> None:
        if generation is None:
            self._change("end a rebuild", self._sql.clear_rebuilding, (self.name,))
        else:
            self._change("claim a rebuild", self._sql.set_rebuilding, (self.name, generation))

    def add_version(self, generation: int, version: int) -> None:
        self._change("record a projection version", self._sql.add_version, (self.name, generation, version))


class SqlWriteSession(WriteSession):
    """A command's transaction on a pooled connection: inline projections' checkpoints flushed, then COMMIT."""

    _sql: Statements
    """The backend's statements (a class attribute of each backend's session)."""

    def __init__(self, storage: Any, connection: Any) -> None:
        self._storage = storage
        self.handle = connection
        self._projections: list[SqlProjectionSession] = []
        self._open = True

    def _abandon(self) -> None:
        """Roll back what is open on the connection (each backend knows how to tell)."""
        raise NotImplementedError

    def commit(self) -> None:
        if self._open:
            self._open = False
            try:
                for session in self._projections:
                    session.flush()
                self.handle.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(StorageError):  # the failure to report is the commit's
                    self._abandon()
                dialect = self._sql.dialect
                if isinstance(exc, (dialect.driver_error, *dialect.data_errors)):
                    raise translate(dialect, "commit", exc) from exc
                raise
            finally:
                self._storage._give_back(self.handle)

    def rollback(self) -> None:
        if self._open:
            self._open = False
            try:
                self._abandon()
            finally:
                self._storage._give_back(self.handle)


class SqlStorage(Storage):
    """The reads every SQL backend answers alike, outside any transaction, through the backend's :meth:`_rows`."""

    _sql: Statements

    def _rows(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement on this thread's read connection (each backend says how)."""
        raise NotImplementedError

    def _value(self, action: str, statement: str, params: Sequence[Any]) -> Any:
        with translated(self._sql.dialect, action):
            rows = self._rows(statement, params)
        return rows[0][0] if rows else None

    def checkpoint(self, name: str, generation: int) -> int:
        return int(self._value("read a checkpoint", self._sql.checkpoint, (name, generation)) or 0)

    def current_generation(self, name: str) -> int:
        return int(self._value("read a generation", self._sql.current, (name,)) or 1)

    def rebuilding(self, name: str) -> int | None:
        found = self._value("read a rebuild", self._sql.rebuilding, (name,))
        return None if found is None else int(found)

    def recorded_version(self, name: str, generation: int) -> int | None:
        found = self._value("read a projection version", self._sql.version, (name, generation))
        return None if found is None else int(found)

    def applied(self, name: str, generation: int) -> int:
        with translated(self._sql.dialect, "read a checkpoint"):
            ((checkpoint, first_letter),) = self._rows(self._sql.applied, (name, generation, name, generation))
        checkpoint = int(checkpoint or 0)
        return checkpoint if first_letter is None else min(checkpoint, int(first_letter) - 1)

    def quarantine(self, inbox: str, event: NewEvent, reason: str) -> None:
        escaped = json.dumps(event._asdict(), ensure_ascii=True)  # \u0000 and lone surrogates as escapes
        row = (inbox, _printable(event.event_id), _printable(event.type_name), _printable(reason), escaped,
               time.time())
        with translated(self._sql.dialect, "quarantine a received event"):
            self._change(self._sql.quarantine, row)

    def _change(self, statement: str, params: Sequence[Any]) -> None:
        """Run a write of its own, committed at once (each backend says how)."""
        raise NotImplementedError

    def quarantined(self, inbox: str | None = None) -> list[Quarantined]:
        with translated(self._sql.dialect, "read quarantined events"):
            if inbox is None:
                rows = self._rows(self._sql.quarantined, ())
            else:
                rows = self._rows(self._sql.quarantined_by, (inbox,))
        return [Quarantined(*row) for row in rows]

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        with translated(self._sql.dialect, "read dead letters"):
            if name is None:
                rows = self._rows(self._sql.all_dead_letters, ())
            else:
                rows = self._rows(self._sql.dead_letters_of, (name,))
        return [DeadLetter(*row) for row in rows]


def _printable(text: str) -> str:
    """``text`` with what a database could refuse (NUL, lone surrogates) escaped, for keys and reasons."""
    if text.isascii() and "\0" not in text:
        return text
    return json.dumps(text, ensure_ascii=True)[1:-1]
