"""Shared test settings.

``MEDIATOR_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns every "skipped because
X is not available" into a failure, so CI always exercises the real thing.
"""

import os
from collections.abc import Iterator

import pytest

REQUIRE_SERVICES = os.environ.get("MEDIATOR_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` on a developer machine; fail in CI, where everything must be present."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (MEDIATOR_REQUIRE_SERVICES=1: required here)")
    pytest.skip(reason)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema name (skips, or in CI fails, without PostgreSQL); dropped after the test."""
    from tests import postgres

    yield from postgres.schema_for_a_test()
