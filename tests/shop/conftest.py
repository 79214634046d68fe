"""Shared fixtures of the shop's tests."""

import pytest

from tests import postgres

from .backends import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of a backend to build the shop on; PostgreSQL only where it answers."""
    if request.param == "postgres":
        postgres.require()
    return str(request.param)
