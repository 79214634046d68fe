"""The Redis the tests use: ``MEDIATOR_TEST_REDIS`` (a redis-py URL), by default the machine's own.

Each test's store gets a key prefix of its own, deleted afterwards, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import uuid

from tests.conftest import skip_or_fail

URL = os.environ.get("MEDIATOR_TEST_REDIS", "redis://127.0.0.1:6379/0")


def available() -> str | None:
    """``None`` if Redis answers at URL, else why not."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install -e '.[redis]')"
    try:
        client = redis.Redis.from_url(URL, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"Redis is not reachable at {URL!r}: {exc}"
    return None


def require() -> None:
    """Skip (or, in CI, fail) the calling test when Redis is not there."""
    why = available()
    if why is not None:
        skip_or_fail(why)


def new_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
