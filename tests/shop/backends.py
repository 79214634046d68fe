"""The backends the shop's tests run on: SQLite, memory and PostgreSQL (skipped, or in CI failed, when absent)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters.shop_app import Shop, build_shop
from tests import postgres, redis_server

if TYPE_CHECKING:
    from mediator.readmodels.postgres import PostgresStorage

BACKENDS = ["sqlite", "memory", "postgres", "sqlite+redis"]
ON_REDIS = ("inventory", "search", "dashboard")
"""The projections ``sqlite+redis`` serves from Redis (the rest, and the log, in SQLite)."""


@contextlib.contextmanager
def shop_on(backend: str, folder: Path, **options: Any) -> Iterator[Shop]:
    """The shop built on ``backend``: SQLite in ``folder``, memory, or PostgreSQL in a schema dropped afterwards."""
    if backend == "sqlite+redis":
        redis_server.require()
        from mediator.readmodels.redis import RedisReadStore

        redis = RedisReadStore(redis_server.URL, prefix=redis_server.new_prefix())
        shop = build_shop(folder / "shop.db", read_stores=dict.fromkeys(ON_REDIS, redis), **options)
        try:
            yield shop
        finally:
            redis.drop_all()
            shop.close()
        return
    if backend != "postgres":
        shop = build_shop(folder / "shop.db" if backend == "sqlite" else None, **options)
        try:
            yield shop
        finally:
            shop.close()
        return
    from mediator.readmodels.postgres import PostgresStorage

    postgres.require()
    shop = build_shop(postgres=postgres.DSN, schema=postgres.new_schema(), **options)
    try:
        yield shop
    finally:
        shop.close()
        assert isinstance(shop.storage, PostgresStorage)
        shop.storage.drop_schema()


def postgres_write_storage() -> PostgresStorage:
    """A ``PostgresStorage`` on a fresh schema with the shop's write tables; ``drop_schema()`` it afterwards."""
    from adapters.shop_postgres import WRITE_SCHEMA
    from mediator.readmodels.postgres import PostgresStorage

    postgres.require()
    storage = PostgresStorage(postgres.DSN, schema=postgres.new_schema())
    session = storage.begin()
    session.handle.execute(WRITE_SCHEMA)
    session.commit()
    return storage
