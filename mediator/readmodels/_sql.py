"""What the SQL backends share: the read side's tables, their statements and their sessions, written once.

SQLite (:mod:`mediator.readmodels.sqlite`) and PostgreSQL (:mod:`mediator.readmodels.postgres`) keep
checkpoints, generation records and dead letters in the same tables with the same statements. What differs
is small and explicit in a :class:`Dialect`: the parameter marker, and whether a projection session locks
its checkpoint row (PostgreSQL, whose transactions run side by side) or relies on the database's one writer
(SQLite). The event log, connections and locks across processes are each backend's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from ._errors import StorageDataError, StorageError
from ._ports import (
    DeadLetter,
    Generations,
    IdempotencyRecord,
    NewEvent,
    ProjectionSession,
    Quarantined,
    ScheduledCommand,
    Storage,
    WriteSession,
    committed,
    looked_at,
)
from ._tables import Query, Table

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

WRITE_SCHEMAS = """
CREATE TABLE IF NOT EXISTS write_schemas (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    digest TEXT NOT NULL,
    result TEXT NOT NULL,
    position BIGINT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS scheduled_commands (
    schedule_id TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    data TEXT NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    scheduled_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS scheduled_commands_in_due_order ON scheduled_commands (status, due_at, schedule_id);
"""
"""The write database's own tables beside the log: which version of each application write schema
:meth:`SqlStorage.ensure_schema` has created, and the idempotent commands' records (written in the commands'
transactions; PostgreSQL indexes them by expiry too, SQLite deletes them in the order they were kept, see
:attr:`Statements.expire_keys`), and the scheduled commands (written in the transactions that schedule them)."""

_IDEMPOTENCY_COLUMNS = "key, command, digest, result, position, recorded_at, expires_at"
_SCHEDULE_COLUMNS = "schedule_id, command, data, due_at, scheduled_at, attempts, status, reason, meta"

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
    column_types: Mapping[str, str] = attrs.field(factory=dict)
    """The column type of each kind of stored value of typed tables (see :mod:`mediator.readmodels._tables`)."""
    replace: str = "upsert"
    """How typed rows are written: ``"replace"`` (SQLite's ``INSERT OR REPLACE``) or ``"upsert"``
    (``INSERT ... ON CONFLICT (key) DO UPDATE``)."""
    table_options: str = ""
    """What follows a typed table's definition (SQLite's ``WITHOUT ROWID``: rows clustered by their key)."""
    missing_table: Callable[[BaseException], bool] = attrs.field(default=lambda exc: False)
    table_exists: str = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    """A query with a row if the table named by its one parameter exists (and none, never an error, if not)."""
    in_transaction: Callable[[Any], bool] = attrs.field(default=lambda connection: connection.in_transaction)
    """Whether a connection has a transaction open (a snapshot then reads in that one)."""
    begin_snapshot: str = "BEGIN"
    """What starts a read-only transaction that reads one commit throughout (:meth:`SqlStorage.snapshot`)."""
    """Whether a driver error says a table does not exist (a typed table read before its projection ran)."""

    def sql(self, text: str) -> str:
        """``text``, written with ``?`` markers, in this dialect."""
        return text if self.marker == "?" else text.replace("?", self.marker)


class Statements:
    """The shared statements in one dialect, formatted once per storage."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        self.dialect = dialect
        self.rows = RowStatements(dialect)
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
        self.claim_key = q(f"SELECT {_IDEMPOTENCY_COLUMNS} FROM idempotency_keys WHERE key = ?")
        if dialect.replace == "replace":
            # A new row (a new rowid) even for a key used before, so rowids stay in the order records were kept.
            self.keep_key = (f"INSERT OR REPLACE INTO idempotency_keys ({_IDEMPOTENCY_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)")
            # No index by expiry (one b-tree less per idempotent command): with one time to live, records expire
            # in the order they were kept, so delete up to the first live one. A record kept under a longer time
            # to live holds later ones back until it expires itself; none of them answers meanwhile.
            self.expire_keys = (
                "DELETE FROM idempotency_keys WHERE rowid < COALESCE((SELECT rowid FROM idempotency_keys "
                "WHERE expires_at > ? ORDER BY rowid LIMIT 1), (SELECT MAX(rowid) + 1 FROM idempotency_keys))")
        else:
            self.keep_key = q(
                f"INSERT INTO idempotency_keys ({_IDEMPOTENCY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET command = excluded.command, digest = excluded.digest, "
                "result = excluded.result, position = excluded.position, recorded_at = excluded.recorded_at, "
                "expires_at = excluded.expires_at")
            self.expire_keys = q("DELETE FROM idempotency_keys WHERE expires_at <= ?")
        self.count_keys = q("SELECT COUNT(*) FROM idempotency_keys WHERE expires_at > ?")
        if dialect.replace == "replace":
            self.schedule = (f"INSERT OR REPLACE INTO scheduled_commands ({_SCHEDULE_COLUMNS}) "
                             f"VALUES ({', '.join('?' * 9)})")
        else:
            self.schedule = q(
                f"INSERT INTO scheduled_commands ({_SCHEDULE_COLUMNS}) VALUES ({', '.join('?' * 9)}) "
                "ON CONFLICT (schedule_id) DO UPDATE SET command = excluded.command, data = excluded.data, "
                "due_at = excluded.due_at, scheduled_at = excluded.scheduled_at, attempts = excluded.attempts, "
                "status = excluded.status, reason = excluded.reason, meta = excluded.meta")
        self.unschedule = q("DELETE FROM scheduled_commands WHERE schedule_id = ?")
        self.take_due = q(
            f"SELECT {_SCHEDULE_COLUMNS} FROM scheduled_commands WHERE status = 'pending' AND due_at <= ? "
            "ORDER BY due_at, schedule_id LIMIT 1" + (" FOR UPDATE SKIP LOCKED" if dialect.locks_rows else ""))
        self.scheduled = f"SELECT {_SCHEDULE_COLUMNS} FROM scheduled_commands ORDER BY due_at, schedule_id"
        self.scheduled_by = q(f"SELECT {_SCHEDULE_COLUMNS} FROM scheduled_commands WHERE status = ? "
                              "ORDER BY due_at, schedule_id")
        self.next_due = "SELECT MIN(due_at) FROM scheduled_commands WHERE status = 'pending'"
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


class RowStatements:
    """The statements of typed tables in one dialect, made once per storage table and query shape."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._made: dict[Hashable, str] = {}
        self._gets: dict[str, str] = {}

    def create(self, table: Table[Any], physical: str) -> list[str]:
        d = self.dialect
        columns = [f"{c.name} {d.column_types[c.kind]}{'' if c.nullable else ' NOT NULL'}"
                   for c in table.codec.columns]
        statements = [f"CREATE TABLE IF NOT EXISTS {physical} ({', '.join(columns)}, "
                      f"PRIMARY KEY ({', '.join(table.key)})){d.table_options}"]
        for lookup in table.lookups:
            index = _index_name(physical, lookup)
            statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {physical} ({', '.join(lookup)})")
        return statements

    def _cached(self, shape: Hashable, make: Callable[[], str]) -> str:
        statement = self._made.get(shape)
        if statement is None:
            statement = self._made[shape] = self.dialect.sql(make())
        return statement

    def get(self, table: Table[Any], physical: str) -> str:
        statement = self._gets.get(physical)  # per row read: a plain lookup
        if statement is None:
            statement = self._gets[physical] = self.dialect.sql(
                f"SELECT {', '.join(table.codec.names)} FROM {physical} WHERE {_matching(table.key)}")
        return statement

    def write(self, table: Table[Any], physical: str) -> str:
        def make() -> str:
            names = table.codec.names
            insert = f"INTO {physical} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            if self.dialect.replace == "replace":
                return f"INSERT OR REPLACE {insert}"
            rest = [n for n in names if n not in table.key]
            change = f"UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in rest)}" if rest else "NOTHING"
            return f"INSERT {insert} ON CONFLICT ({', '.join(table.key)}) DO {change}"

        return self._cached((physical, "write"), make)

    def add(self, table: Table[Any], physical: str, at: tuple[int, ...]) -> str:
        def make() -> str:
            names = table.codec.names
            added = {names[i] for i in at}
            change = ", ".join(
                f"{n} = COALESCE({physical}.{n} + excluded.{n}, excluded.{n})" if n in added else f"{n} = excluded.{n}"
                for n in names if n not in table.key)
            return (f"INSERT INTO {physical} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                    f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {change}")

        return self._cached((physical, "add", at), make)

    def patch(self, table: Table[Any], physical: str, at: tuple[int, ...]) -> str:
        def make() -> str:
            names = table.codec.names
            return f"UPDATE {physical} SET {', '.join(f'{names[i]} = ?' for i in at)} WHERE {_matching(table.key)}"

        return self._cached((physical, "patch", at), make)

    def delete(self, table: Table[Any], physical: str) -> str:
        return self._cached((physical, "delete"), lambda: f"DELETE FROM {physical} WHERE {_matching(table.key)}")

    def select(self, table: Table[Any], physical: str, query: Query) -> str:
        def make() -> str:
            order = ", ".join(f"{c} DESC" if descending else c for c, descending in query.order)
            statement = f"SELECT {', '.join(table.codec.names)} FROM {physical}{_where(query)} ORDER BY {order}"
            if query.limit is not None:
                statement += " LIMIT ?"
            elif query.offset:
                statement += " LIMIT -1" if self.dialect.replace == "replace" else ""  # SQLite: no OFFSET alone
            return statement + (" OFFSET ?" if query.offset else "")

        return self._cached((physical, "select", query.shape), make)

    def count(self, table: Table[Any], physical: str, query: Query) -> str:
        return self._cached((physical, "count", query.shape[0]),
                            lambda: f"SELECT COUNT(*) FROM {physical}{_where(query)}")


def _matching(fields: Sequence[str]) -> str:
    return " AND ".join(f"{field} = ?" for field in fields)


def _where(query: Query) -> str:
    return f" WHERE {' AND '.join(f'{c} {op} ?' for c, op, _ in query.where)}" if query.where else ""


def _index_name(physical: str, lookup: Sequence[str]) -> str:
    name = f"{physical}__by_{'_'.join(lookup)}"
    if len(name) <= 63:  # PostgreSQL cuts identifiers at 63 bytes: keep long ones apart by a digest
        return name
    return f"{name[:50]}_{hashlib.sha1(name.encode()).hexdigest()[:12]}"


class SqlProjectionSession(ProjectionSession):
    """A projection's transaction on a SQL connection; ``handle`` is that connection (the driver's own)."""

    _reader: Any
    """The cursor rows are read with (made on the first read)."""

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
        """Write the rows kept and the checkpoint, if it moved (inside the session's transaction)."""
        self.flush_rows()
        if self._moved:
            self._handle.execute(self._sql.save_checkpoint, (self.name, self.generation, self._position))
            self._moved = False

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self.flush_rows()  # what came before is not the block's to undo
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self._handle.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.discard_rows()
            self._handle.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self._handle.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self._handle.execute(f"RELEASE SAVEPOINT {name}")

    # -- typed tables: one statement per table and batch, made once per table ------------------------

    def create_table(self, table: Table[Any], physical: str) -> None:
        for statement in self._sql.rows.create(table, physical):
            self._handle.execute(statement)

    def drop_table(self, table: Table[Any], physical: str) -> None:
        self._handle.execute(f"DROP TABLE IF EXISTS {physical}")

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        try:
            cursor: Any = self._reader
        except AttributeError:
            cursor = self._reader = self._handle.cursor()  # one cursor for every row read: none made per row
        row: Sequence[Any] | None = cursor.execute(self._sql.rows.get(table, physical), key).fetchone()
        return row

    def write_rows(self, table: Table[Any], physical: str, puts: list[tuple[Any, ...]],
                   deletes: list[tuple[Any, ...]]) -> None:
        cursor = self._handle.cursor()
        if deletes:
            cursor.executemany(self._sql.rows.delete(table, physical), deletes)
        if puts:
            cursor.executemany(self._sql.rows.write(table, physical), puts)

    def add_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        self._handle.cursor().executemany(self._sql.rows.add(table, physical, at), rows)

    def patch_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        self._handle.cursor().executemany(self._sql.rows.patch(table, physical, at), rows)

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        rows: Sequence[Sequence[Any]] = self._handle.execute(
            self._sql.rows.select(table, physical, query), query.params()).fetchall()
        return rows

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        row = self._handle.execute(self._sql.rows.count(table, physical, query), query.params()[:len(query.where)])
        return int(row.fetchone()[0])

    def park(self, letter: DeadLetter) -> None:
        # A letter's texts come from the log and from errors: escape what the database could refuse (a lone
        # surrogate from a row that was not UTF-8, a NUL), or parking the event would fail the projection.
        fields = tuple(_printable(value) if isinstance(value, str) else value for value in attrs.astuple(letter))
        self._handle.execute(self._sql.park, fields)

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._handle.execute(self._sql.dead_letters, (self.name, self.generation)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def release(self, position: int) -> None:
        self._handle.execute(self._sql.release, (self.name, self.generation, position))


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

    def _lock_key(self, key: str) -> None:
        """Claim idempotency ``key`` for this transaction, where writers overlap (each backend says how); SQLite's
        write transaction holds the file's one write lock already."""

    def claim_key(self, key: str) -> IdempotencyRecord | None:
        self._lock_key(key)
        try:  # not translated(): once per idempotent command
            row = self.handle.execute(self._sql.claim_key, (key,)).fetchone()
        except Exception as exc:
            raise self._translated("read an idempotency key", exc) from exc
        return None if row is None else IdempotencyRecord._make(row)

    def keep_key(self, record: IdempotencyRecord) -> None:
        try:
            self.handle.execute(self._sql.keep_key, record)
        except Exception as exc:
            raise self._translated("keep an idempotency key", exc) from exc

    def process(self, name: str) -> ProjectionSession:
        with translated(self._sql.dialect, "start a process manager's step"):
            session = SqlProjectionSession(self.handle, name, 1, self._sql)
        self._projections.append(session)
        return session

    def schedule(self, scheduled: ScheduledCommand) -> None:
        with translated(self._sql.dialect, "schedule a command"):
            self.handle.execute(self._sql.schedule, scheduled)

    def unschedule(self, schedule_id: str) -> bool:
        with translated(self._sql.dialect, "cancel a scheduled command"):
            return bool(self.handle.execute(self._sql.unschedule, (schedule_id,)).rowcount)

    def take_due(self, now: float) -> ScheduledCommand | None:
        with translated(self._sql.dialect, "take a due scheduled command"):
            row = self.handle.execute(self._sql.take_due, (now,)).fetchone()
        return None if row is None else ScheduledCommand._make(row)

    def _translated(self, action: str, exc: Exception) -> Exception:
        dialect = self._sql.dialect
        return translate(dialect, action, exc) if isinstance(exc, (dialect.driver_error, *dialect.data_errors)) else exc

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

    def _read(self) -> Any:
        """This thread's connection for reads (each backend says how)."""
        raise NotImplementedError

    def _lock_schema(self, connection: Any, name: str) -> None:
        """Take, in the write transaction on ``connection``, the lock that serialises creating schema ``name``
        across processes. SQLite's write transaction holds the file's write lock already."""

    def ensure_schema(self, name: str, create: Callable[[Any], None], *, version: int = 1) -> bool:
        q = self._sql.dialect.sql
        session = self.begin()
        try:
            with translated(self._sql.dialect, f"create the write schema {name!r}"):
                self._lock_schema(session.handle, name)
                row = session.handle.execute(q("SELECT version FROM write_schemas WHERE name = ?"), (name,)).fetchone()
                if row is not None and row[0] >= version:
                    session.rollback()
                    return False
                create(session.handle)
                session.handle.execute(q(
                    "INSERT INTO write_schemas (name, version) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET version = excluded.version"), (name, version))
        except BaseException:
            session.rollback()
            raise
        session.commit()
        return True

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        # Per thread: each thread reads on its own connection. dict.setdefault makes the one local atomically.
        state = self.__dict__.get("_snapshots") or self.__dict__.setdefault("_snapshots", threading.local())
        depth = getattr(state, "depth", 0)
        state.depth = depth + 1
        try:
            connection = self._read()
            if depth or self._sql.dialect.in_transaction(connection):  # inside a transaction of this thread's
                yield  # connection already (another snapshot, the caller's own): that one reads one commit
                return
            with translated(self._sql.dialect, "begin a read snapshot"):
                connection.execute(self._sql.dialect.begin_snapshot)
            try:
                yield
            finally:
                with translated(self._sql.dialect, "end a read snapshot"):
                    connection.execute("COMMIT")
        finally:
            state.depth = depth

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

    def _on_the_log(self, what: str, statement: str, params: Sequence[Any], *, write: bool) -> Any:
        """Run ``statement`` in a transaction of its own on the write database: a write's count of rows changed,
        or a read's first column of its first row."""
        with (committed if write else looked_at)(self) as session, translated(self._sql.dialect, what):
            cursor = session.handle.execute(statement, params)
            return cursor.rowcount if write else cursor.fetchone()[0]

    def expire_keys(self, now: float) -> int:
        return int(self._on_the_log("expire idempotency keys", self._sql.expire_keys, (now,), write=True))

    def count_keys(self, now: float) -> int:
        return int(self._on_the_log("count idempotency keys", self._sql.count_keys, (now,), write=False))

    def _log_rows(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``statement`` on the write database, outside any transaction (the read models' database,
        unless a backend keeps them apart)."""
        return self._rows(statement, params)

    def scheduled(self, status: str | None = None) -> list[ScheduledCommand]:
        with translated(self._sql.dialect, "read the scheduled commands"):
            if status is None:
                rows = self._log_rows(self._sql.scheduled, ())
            else:
                rows = self._log_rows(self._sql.scheduled_by, (status,))
        return [ScheduledCommand._make(row) for row in rows]

    def next_due(self) -> float | None:
        with translated(self._sql.dialect, "read when the next scheduled command is due"):
            (row,) = self._log_rows(self._sql.next_due, ())
        return None if row[0] is None else float(row[0])

    def quarantined(self, inbox: str | None = None) -> list[Quarantined]:
        with translated(self._sql.dialect, "read quarantined events"):
            if inbox is None:
                rows = self._rows(self._sql.quarantined, ())
            else:
                rows = self._rows(self._sql.quarantined_by, (inbox,))
        return [Quarantined(*row) for row in rows]

    # -- typed tables, for queries: committed rows; a table not made yet has none -------------------

    def _table_rows(self, physical: str, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of ``statement`` on table ``physical``; none if the table was not made yet. Whether it exists is
        asked first (once, then remembered), never learnt from a failed statement: inside a transaction (a
        snapshot, the caller's own) PostgreSQL would abort it."""
        dialect = self._sql.dialect
        seen = self.__dict__.get("_tables_seen") or self.__dict__.setdefault("_tables_seen", set())
        try:
            if physical not in seen:
                if not self._rows(dialect.sql(dialect.table_exists), (physical,)):
                    return []
                seen.add(physical)
            return self._rows(statement, params)
        except (dialect.driver_error, *dialect.data_errors) as exc:
            if dialect.missing_table(exc):  # dropped since (a retired generation): as if never made
                seen.discard(physical)
                return []
            raise translate(dialect, "read a read-model table", exc) from exc

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        rows = self._table_rows(physical, self._sql.rows.get(table, physical), key)
        return rows[0] if rows else None

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        return self._table_rows(physical, self._sql.rows.select(table, physical, query), query.params())

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        rows = self._table_rows(physical, self._sql.rows.count(table, physical, query),
                                query.params()[:len(query.where)])
        return int(rows[0][0]) if rows else 0

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
