"""Shared test settings.

``MEDIATOR_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns every "skipped because
X is not available" into a failure, so CI always exercises the real thing.
"""

import os

import pytest

REQUIRE_SERVICES = os.environ.get("MEDIATOR_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason`` on a developer machine; fail in CI, where everything must be present."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (MEDIATOR_REQUIRE_SERVICES=1: required here)")
    pytest.skip(reason)
