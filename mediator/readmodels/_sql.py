"""What the SQL backends share: the read side's tables, their statements and their sessions, written once.

SQLite (:mod:`mediator.readmodels.sqlite`) and PostgreSQL (:mod:`mediator.readmodels.postgres`) keep
checkpoints, generation records and dead letters in the same tables with the same statements. What differs
is small and explicit in a :class:`Dialect`: the parameter marker, and whether a projection session locks
its checkpoint row (PostgreSQL, whose transactions run side by side) or relies on the database's one writer
(SQLite). The event log, connections and locks across processes are each backend's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import attrs

from ._errors import StorageError
from ._ports import DeadLetter, Generations, ProjectionSession, Storage, WriteSession

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
    PRIMARY KEY (projection, generation, position)
);
"""
"""The tables of checkpoints, generation records and dead letters, in SQL both dialects read alike."""

EVENT_COLUMNS = "position, event_id, type_name, version, data, key, recorded_at, meta"
_LETTER_COLUMNS = "projection, generation, position, event_id, type_name, key, reason, attempts, status"


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
            f"INSERT INTO dead_letters ({_LETTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (projection, generation, position) DO UPDATE SET event_id = excluded.event_id, "
            "type_name = excluded.type_name, key = excluded.key, reason = excluded.reason, "
            "attempts = excluded.attempts, status = excluded.status")
        self.dead_letters = q(
            f"SELECT {_LETTER_COLUMNS} FROM dead_letters WHERE projection = ? AND generation = ? ORDER BY position")
        self.release = q("DELETE FROM dead_letters WHERE projection = ? AND generation = ? AND position = ?")
        current_letters = (
            f"SELECT {', '.join(f'd.{c}' for c in _LETTER_COLUMNS.split(', '))} FROM dead_letters d "
            "LEFT JOIN projection_generations g ON g.projection = d.projection "
            "WHERE d.generation = COALESCE(g.generation, 1)")
        self.all_dead_letters = current_letters + " ORDER BY d.projection, d.position"
        self.dead_letters_of = q(current_letters + " AND d.projection = ? ORDER BY d.position")


@contextlib.contextmanager
def translated(dialect: Dialect, action: str) -> Iterator[None]:
    """Raise the driver's errors inside the block as :class:`StorageError`, saying what failed."""
    try:
        yield
    except dialect.driver_error as exc:
        raise StorageError(f"{dialect.name} failed to {action}: {exc}") from exc


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
        self.handle.execute(self._sql.park, attrs.astuple(letter))

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
                if isinstance(exc, dialect.driver_error):
                    raise StorageError(f"{dialect.name} failed to commit: {exc}") from exc
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

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        with translated(self._sql.dialect, "read dead letters"):
            if name is None:
                rows = self._rows(self._sql.all_dead_letters, ())
            else:
                rows = self._rows(self._sql.dead_letters_of, (name,))
        return [DeadLetter(*row) for row in rows]
