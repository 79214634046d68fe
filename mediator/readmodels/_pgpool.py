"""Connections to one PostgreSQL database and schema, as :mod:`mediator.readmodels.postgres` uses them.

Opened with keepalives and the schema on the search path, pooled for write transactions, one per thread for
reads, and replaced when a server restart breaks them: a read outside a transaction is run once more on a new
connection, so the first read after a restart does not fail although the server is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from .._errors import MissingExtraError
from ._errors import StorageError
from ._sql import Dialect, translated

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError("mediator.readmodels.postgres", "postgres", _missing.name) from _missing

POSTGRES = Dialect(
    "PostgreSQL", "%s", locks_rows=True, driver_error=psycopg.Error,
    data_errors=(psycopg.DataError, UnicodeEncodeError),
    # Text in code-point order ("C"), as SQLite, memory and Redis compare it, whatever the database's locale.
    column_types={"text": 'TEXT COLLATE "C"', "integer": "BIGINT", "real": "DOUBLE PRECISION", "boolean": "BOOLEAN",
                  "json": "TEXT"},
    missing_table=lambda exc: isinstance(exc, psycopg.errors.UndefinedTable),
    table_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",  # resolved on the connection's search path
    in_transaction=lambda connection: connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE,
    begin_snapshot="BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
)
"""NUL characters and numbers out of range are ``DataError``; text with lone surrogates fails to encode."""


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


class Connections:
    """The connections of one storage (a mixin: the storage sets ``dsn``, ``schema`` and ``connect_timeout``)."""

    dsn: str
    schema: str
    connect_timeout: float

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: set[psycopg.Connection[Any]] = set()
        self._all_lock = threading.Lock()
        self._pool: list[psycopg.Connection[Any]] = []
        self._closed = False

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
        with translated(POSTGRES, action):
            connection = self._begin()
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(StorageError):
                    _abandon(connection)
                raise

    def _close_all(self) -> None:
        self._closed = True
        with self._all_lock:
            for connection in self._all:
                with contextlib.suppress(Exception):
                    connection.close()
            self._all.clear()
            self._pool.clear()
        self._local = threading.local()
