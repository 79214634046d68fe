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
from typing import Any, TypeVar

import attrs

from adapters.shop_memory import MemoryWriteModel
from adapters.shop_sqlite import WRITE_SCHEMA, SqliteWriteModel
from domain.events import ALL_EVENTS
from domain.messages import ExpireUnpaidOrder
from handlers import commands, queries, validation
from handlers.authorization import QUERIES, Authorize, AuthorizeQueries
from handlers.commands import Clock, ShopCommands
from handlers.ports import WriteModel
from handlers.processes import PAYMENT_TIMEOUT, OrderFulfilment
from handlers.projections import all_projections
from handlers.queries import ShopQueries
from handlers.retry import RetryOnConflict
from mediator import Kind, Logging, Mediator, Registry, Validation
from mediator.readmodels import Delivery, EventTypes, ReadModels, ReadStore, RoutedStorage, Storage
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import CHECKPOINT_EVERY, SqliteStorage

T = TypeVar("T")


@attrs.define
class Shop:
    """The built application: its mediator, its read-model engine and storage, and its write model."""

    mediator: Mediator
    engine: ReadModels
    storage: Storage
    registry: Registry
    model: WriteModel

    def inspect(self, look: Callable[[WriteModel, Any], T]) -> T:
        """Read the write model (``look(model, tx)``) in a transaction that is then rolled back."""
        session = self.storage.begin()
        try:
            return look(self.model, session.handle)
        finally:
            session.rollback()

    def close(self) -> None:
        self.engine.live.close()  # subscriptions end (their streams with them) before the storage goes
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
    read_stores: Mapping[str, ReadStore] | None = None,
    checkpoint_every: float | None = CHECKPOINT_EVERY,
    fulfilment: bool = True,
    payment_timeout: dt.timedelta = PAYMENT_TIMEOUT,
    engine_clock: Callable[[], float] | None = None,
    **engine_options: Any,
) -> Shop:
    """Build the whole shop: on SQLite (write model and log in ``write_path``, read models in ``read_path``,
    the same file by default); on PostgreSQL when ``postgres`` is a libpq DSN (everything in ``schema``, which
    is created with the shop's tables if missing); or entirely in memory for tests when neither is given.
    ``read_stores`` keeps some projections' read models in stores of their own (``{"inventory":
    RedisReadStore(url)}``), the log and the write model staying where they are. ``checkpoint_every`` is the
    SQLite storage's (background WAL checkpoints; ``None`` leaves them to SQLite). ``fulfilment`` runs the order
    fulfilment process manager (:mod:`handlers.processes`): each order is cancelled, its stock released, if it is
    not paid within ``payment_timeout``, and shipped once paid; the engine's runner (or ``settle`` in tests) takes
    its steps and fires the timeouts, by ``engine_clock`` (seconds since the epoch; the system's by default, a
    :class:`mediator.testing.Clock` in tests). ``clock`` is the domain's (when an order was placed).

    Raises:
        ValueError: if both a SQLite path and a PostgreSQL DSN are given.
    """
    storage, model = _storage_and_model(write_path, read_path, postgres, schema, checkpoint_every)
    if read_stores:
        storage = RoutedStorage(storage, read_stores)
    if engine_clock is not None:
        engine_options["clock"] = engine_clock
    engine = ReadModels(storage, event_types(), **engine_options)
    for projection in all_projections():
        engine.add(projection, delivery=delivery)
    if fulfilment:
        engine.add_process(OrderFulfilment(payment_timeout)).schedulable(ExpireUnpaidOrder,
                                                                         name="shop.ExpireUnpaidOrder")
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
    queries.register(registry, ShopQueries(engine))
    validation.register(registry)
    mediator = registry.build()
    engine.dispatch_with(mediator)  # scheduled commands and the fulfilment's steps go through it
    return Shop(mediator, engine, storage, registry, model)


def _storage_and_model(write_path: str | os.PathLike[str] | None, read_path: str | os.PathLike[str] | None,
                       postgres: str | None, schema: str, checkpoint_every: float | None) -> tuple[Storage, WriteModel]:
    """The storage and the write model (its tables made) for :func:`build_shop`'s arguments."""
    storage: Storage
    model: WriteModel
    if postgres is not None:
        if write_path is not None or read_path is not None:
            raise ValueError("build_shop takes a SQLite path or a PostgreSQL DSN (postgres=...), not both.")
        from adapters.shop_postgres import WRITE_SCHEMA as POSTGRES_WRITE_SCHEMA  # psycopg: an optional extra
        from adapters.shop_postgres import PostgresWriteModel
        from mediator.readmodels.postgres import PostgresStorage

        storage, model = PostgresStorage(postgres, schema=schema), PostgresWriteModel()
        create: Callable[[Any], None] | None = _statements_of(POSTGRES_WRITE_SCHEMA)
    elif write_path is None:
        storage, model, create = MemoryStorage(), MemoryWriteModel(), None
    else:
        storage = SqliteStorage(Path(write_path), Path(read_path) if read_path is not None else None,
                                checkpoint_every=checkpoint_every)
        model, create = SqliteWriteModel(), _statements_of(WRITE_SCHEMA)
    if create is not None:
        try:  # the write model's tables, made once for every process sharing the database
            storage.ensure_schema("shop", create)
        except BaseException:
            storage.close()
            raise
    return storage, model


def shop_from_env(environ: Mapping[str, str] = os.environ, **options: Any) -> Shop:
    """The shop configured by environment variables, for service and worker processes.

    ``SHOP_POSTGRES`` (a libpq DSN) with ``SHOP_SCHEMA`` (default ``public``) builds it on PostgreSQL;
    otherwise ``SHOP_DB`` names the SQLite file (default ``shop.db``). ``SHOP_REDIS`` (a redis-py URL) serves the
    projections named in ``SHOP_REDIS_PROJECTIONS`` (comma-separated, default ``inventory``) from Redis.
    ``SHOP_DELIVERY`` is how projections are delivered: ``background`` (the default: each service process's
    runner takes its share), ``worker`` (only ``python -m mediator.readmodels --app
    adapters.shop_app:engine_from_env worker`` processes run them) or ``inline``. ``options`` go to
    :func:`build_shop`.
    """
    delivery = Delivery(environ.get("SHOP_DELIVERY", "background"))
    if environ.get("SHOP_REDIS") and "read_stores" not in options:
        from mediator.readmodels.redis import RedisReadStore  # redis-py: an optional extra

        on_redis = environ.get("SHOP_REDIS_PROJECTIONS", "inventory").split(",")
        options["read_stores"] = dict.fromkeys(on_redis, RedisReadStore(environ["SHOP_REDIS"]))
    if environ.get("SHOP_POSTGRES"):
        return build_shop(postgres=environ["SHOP_POSTGRES"], schema=environ.get("SHOP_SCHEMA", "public"),
                          delivery=delivery, **options)
    return build_shop(environ.get("SHOP_DB", "shop.db"), delivery=delivery, **options)


def engine_from_env() -> ReadModels:
    """The read-model engine of :func:`shop_from_env`, for ``python -m mediator.readmodels --app``."""
    return shop_from_env().engine


def _statements_of(script: str) -> Callable[[Any], None]:
    """Run each statement of ``script`` (no ``;`` inside one) on a driver connection, one ``execute`` each: sqlite3
    takes one statement at a time (its ``executescript`` would commit the transaction it runs in)."""
    def create(handle: Any) -> None:
        for statement in script.split(";"):
            if statement.strip():
                handle.execute(statement)

    return create
