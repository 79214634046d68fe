"""Every read-model test runs on each backend: memory, SQLite (one file, and two) and PostgreSQL."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from mediator.readmodels import Storage
from tests import storages


@pytest.fixture(params=storages.KINDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    with storages.opened(request.param, tmp_path) as backend:
        yield backend
