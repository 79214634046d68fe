"""Every read-model test runs on each backend: memory, SQLite (one file, and two) and PostgreSQL."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.memory import MemoryStorage
from adapters.sqlite import SqliteStorage
from mediator.readmodels import Storage
from tests import postgres


@pytest.fixture(params=["memory", "sqlite", "sqlite-two-files", "postgres"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    backend: Storage
    if request.param == "memory":
        backend = MemoryStorage()
    elif request.param == "sqlite":
        backend = SqliteStorage(tmp_path / "app.db")
    elif request.param == "sqlite-two-files":
        backend = SqliteStorage(tmp_path / "write.db", tmp_path / "read.db")
    else:
        postgres.require()
        from adapters.postgres import PostgresStorage

        backend = PostgresStorage(postgres.DSN, schema=postgres.new_schema())
        yield backend
        backend.close()
        backend.drop_schema()
        return
    yield backend
    backend.close()
