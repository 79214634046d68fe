"""The composition root of the reference shop: one function builds all of it on the embedded SQLite default,
in memory, or on PostgreSQL (``build_shop(postgres="host=... dbname=...", schema="shop")``).

>>> import tempfile, pathlib
>>> shop = build_shop(pathlib.Path(tempfile.mkdtemp()) / "shop.db", logging=False)
>>> from domain.messages import CreateCategory
>>> category_id = shop.mediator.send(CreateCategory(name="Lamps"))
>>> len(category_id)
16
>>> shop.close()
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from adapters.shop_memory import MemoryReadViews, MemoryWriteModel
from adapters.shop_sqlite import WRITE_SCHEMA, SqliteReadViews, SqliteWriteModel
from domain.events import ALL_EVENTS
from handlers import commands, queries, validation
from handlers.authorization import QUERIES, Authorize, AuthorizeQueries
from handlers.commands import Clock, ShopCommands
from handlers.ports import ReadViews, WriteModel
from handlers.projections import all_projections
from handlers.queries import ShopQueries
from handlers.retry import RetryOnConflict
from mediator import Kind, Logging, Mediator, Registry, Validation
from mediator.readmodels import Delivery, EventTypes, ReadModels, Storage
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage

if TYPE_CHECKING:
    from mediator.readmodels.postgres import PostgresStorage

T = TypeVar("T")


@attrs.define
class Shop:
    """The built application: its mediator, its read-model engine and storage, and the ports its handlers use."""

    mediator: Mediator
    engine: ReadModels
    storage: Storage
    registry: Registry
    model: WriteModel
    views: ReadViews

    def inspect(self, look: Callable[[WriteModel, Any], T]) -> T:
        """Read the write model (``look(model, tx)``) in a transaction that is then rolled back."""
        session = self.storage.begin()
        try:
            return look(self.model, session.handle)
        finally:
            session.rollback()

    def close(self) -> None:
        self.engine.stop()
        self.storage.close()


def event_types() -> EventTypes:
    types = EventTypes()
    for event_type in ALL_EVENTS:
        types.register(event_type, name=f"shop.{event_type.__name__}")
    return types


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_shop(
    write_path: str | os.PathLike[str] | None = None,
    read_path: str | os.PathLike[str] | None = None,
    *,
    postgres: str | None = None,
    schema: str = "public",
    delivery: Delivery = Delivery.BACKGROUND,
    clock: Clock = utc_now,
    logging: bool = True,
    authorize: bool = True,
    tracer_provider: Any = None,
    **engine_options: Any,
) -> Shop:
    """Build the whole shop: on SQLite (write model and log in ``write_path``, read models in ``read_path``,
    the same file by default); on PostgreSQL when ``postgres`` is a libpq DSN (everything in ``schema``, which
    is created with the shop's tables if missing); or entirely in memory for tests when neither is given.

    Raises:
        ValueError: if both a SQLite path and a PostgreSQL DSN are given.
    """
    storage: Storage
    views: ReadViews
    model: WriteModel
    if postgres is not None:
        if write_path is not None or read_path is not None:
            raise ValueError("build_shop takes a SQLite path or a PostgreSQL DSN (postgres=...), not both.")
        from adapters.shop_postgres import PostgresReadViews, PostgresWriteModel  # psycopg: an optional extra

        storage = on_postgres = _postgres_storage(postgres, schema)
        engine = ReadModels(storage, event_types(), **engine_options)
        views, model = PostgresReadViews(on_postgres, engine), PostgresWriteModel()
    elif write_path is None:
        storage = MemoryStorage()
        engine = ReadModels(storage, event_types(), **engine_options)
        views, model = MemoryReadViews(storage), MemoryWriteModel()
    else:
        storage = SqliteStorage(Path(write_path), Path(read_path) if read_path is not None else None)
        storage._write().executescript(WRITE_SCHEMA)
        engine = ReadModels(storage, event_types(), **engine_options)
        views, model = SqliteReadViews(storage, engine), SqliteWriteModel()
    for projection in all_projections(views):
        engine.add(projection, delivery=delivery)
    registry = Registry()
    if tracer_provider is not None:  # the otel extra: a span per dispatch, projections as spans too
        from mediator.otel import Tracing, trace_projections

        registry.behaviour(Tracing(tracer_provider))
        trace_projections(engine, tracer_provider)
    if logging:
        registry.behaviour(Logging())
    registry.behaviour(Validation(check_types=True))  # every field of every message as its annotation says
    registry.behaviour(RetryOnConflict(), applies_to=Kind.COMMAND)  # outside the transaction it reruns
    engine.install(registry)
    if authorize:
        registry.behaviour(Authorize(model), applies_to=Kind.COMMAND)
        registry.behaviour(AuthorizeQueries(), applies_to=QUERIES)
    commands.register(registry, ShopCommands(model, clock))
    queries.register(registry, ShopQueries(views))
    validation.register(registry)
    return Shop(registry.build(), engine, storage, registry, model, views)


def shop_from_env(environ: Mapping[str, str] = os.environ, **options: Any) -> Shop:
    """The shop configured by environment variables, for service and worker processes.

    ``SHOP_POSTGRES`` (a libpq DSN) with ``SHOP_SCHEMA`` (default ``public``) builds it on PostgreSQL;
    otherwise ``SHOP_DB`` names the SQLite file (default ``shop.db``). ``SHOP_DELIVERY`` is how projections
    are delivered: ``background`` (the default: each service process's runner takes its share), ``worker``
    (only ``python -m mediator.readmodels --app adapters.shop_app:engine_from_env worker`` processes run
    them) or ``inline``. ``options`` go to :func:`build_shop`.
    """
    delivery = Delivery(environ.get("SHOP_DELIVERY", "background"))
    if environ.get("SHOP_POSTGRES"):
        return build_shop(postgres=environ["SHOP_POSTGRES"], schema=environ.get("SHOP_SCHEMA", "public"),
                          delivery=delivery, **options)
    return build_shop(environ.get("SHOP_DB", "shop.db"), delivery=delivery, **options)


def engine_from_env() -> ReadModels:
    """The read-model engine of :func:`shop_from_env`, for ``python -m mediator.readmodels --app``."""
    return shop_from_env().engine


def _postgres_storage(dsn: str, schema: str) -> PostgresStorage:
    """A :class:`~mediator.readmodels.postgres.PostgresStorage` on ``schema`` with the shop's write tables in it."""
    from adapters.shop_postgres import WRITE_SCHEMA as POSTGRES_WRITE_SCHEMA
    from mediator.readmodels.postgres import PostgresStorage, lock_key

    storage = PostgresStorage(dsn, schema=schema)
    try:
        session = storage.begin()
        try:
            # Two processes starting at once would race on the catalogue with CREATE ... IF NOT EXISTS: take turns.
            session.handle.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "__shop_schema__"),))
            session.handle.execute(POSTGRES_WRITE_SCHEMA)
        except BaseException:
            session.rollback()
            raise
        session.commit()
    except BaseException:
        storage.close()
        raise
    return storage
