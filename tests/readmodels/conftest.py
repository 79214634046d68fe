"""Every read-model test runs on each backend: memory and SQLite (one file, and two)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.memory import MemoryStorage
from adapters.sqlite import SqliteStorage
from mediator.readmodels import Storage


@pytest.fixture(params=["memory", "sqlite", "sqlite-two-files"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    backend: Storage
    if request.param == "memory":
        backend = MemoryStorage()
    elif request.param == "sqlite":
        backend = SqliteStorage(tmp_path / "app.db")
    else:
        backend = SqliteStorage(tmp_path / "write.db", tmp_path / "read.db")
    yield backend
    backend.close()
