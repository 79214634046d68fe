"""The PostgreSQL the tests use: ``MEDIATOR_TEST_POSTGRES`` (a libpq DSN), by default the machine's own.

Each test gets a schema of its own, dropped afterwards, so tests never see each
other's rows and can run against a database that holds anything else.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import skip_or_fail

DSN = os.environ.get("MEDIATOR_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3")


def available() -> str | None:
    """``None`` if PostgreSQL answers at DSN, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(DSN) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {DSN!r}: {exc}"
    return None


def require() -> None:
    """Skip (or, in CI, fail) the calling test when PostgreSQL is not there."""
    why = available()
    if why is not None:
        skip_or_fail(why)


def lease_holder(schema: str, projection: str) -> int | None:
    """The OS process id of the runner holding ``projection``'s lease, from its lock connection's application_name."""
    import psycopg

    from mediator.readmodels.postgres import lock_key

    key = lock_key(schema, projection)
    with psycopg.connect(DSN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
        ).fetchone()
    return int(row[0].split(":")[1]) if row else None


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def schema_for_a_test() -> Iterator[str]:
    """A fresh schema name; the schema (if anything created it) is dropped after the test (``pg_schema``)."""
    require()
    import psycopg
    from psycopg import sql

    schema = new_schema()
    yield schema
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(name="pg_schema")
def _pg_schema() -> Iterator[str]:
    """The same as the ``pg_schema`` fixture of ``tests/conftest.py``, for modules that import it from here."""
    yield from schema_for_a_test()


def wait_until_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until PostgreSQL has ended the sessions of the (killed) processes ``pids``: until it notices, their
    open transactions keep their row locks, which ``FOR UPDATE SKIP LOCKED`` passes over."""
    import time

    import psycopg

    names = [f"mediator:{pid}" for pid in pids]
    deadline = time.monotonic() + timeout
    with psycopg.connect(DSN, autocommit=True) as admin:
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s)",
                            (names,)).fetchone() != (0,):
            assert time.monotonic() < deadline, f"PostgreSQL kept the sessions of {pids} for {timeout} s"
            time.sleep(0.01)
