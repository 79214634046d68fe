"""The composition root of the reference shop: one function builds all of it on the embedded SQLite default.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs

from adapters.memory import MemoryStorage
from adapters.shop_memory import MemoryReadViews, MemoryWriteModel
from adapters.shop_sqlite import WRITE_SCHEMA, SqliteReadViews, SqliteWriteModel
from adapters.sqlite import SqliteStorage
from domain.events import ALL_EVENTS
from handlers import commands, queries
from handlers.authorization import QUERIES, Authorize, AuthorizeQueries
from handlers.commands import Clock, ShopCommands
from handlers.ports import ReadViews, WriteModel
from handlers.projections import all_projections
from handlers.queries import ShopQueries
from handlers.retry import RetryOnConflict
from mediator import Kind, Logging, Mediator, Registry, Validation
from mediator.readmodels import Delivery, EventTypes, ReadModels, Storage

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
    write_path: str | os.PathLike[str] | None,
    read_path: str | os.PathLike[str] | None = None,
    *,
    delivery: Delivery = Delivery.BACKGROUND,
    clock: Clock = utc_now,
    logging: bool = True,
    authorize: bool = True,
    tracer_provider: Any = None,
    **engine_options: Any,
) -> Shop:
    """Build the whole shop: on SQLite (write model and log in ``write_path``, read models in ``read_path``,
    the same file by default), or entirely in memory for tests when ``write_path`` is ``None``."""
    storage: Storage
    views: ReadViews
    model: WriteModel
    if write_path is None:
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
        from adapters.otel import Tracing, trace_projections

        registry.behaviour(Tracing(tracer_provider))
        trace_projections(engine, tracer_provider)
    if logging:
        registry.behaviour(Logging())
    registry.behaviour(Validation())
    registry.behaviour(RetryOnConflict(), applies_to=Kind.COMMAND)  # outside the transaction it reruns
    engine.install(registry)
    if authorize:
        registry.behaviour(Authorize(model), applies_to=Kind.COMMAND)
        registry.behaviour(AuthorizeQueries(), applies_to=QUERIES)
    commands.register(registry, ShopCommands(model, clock))
    queries.register(registry, ShopQueries(views))
    return Shop(registry.build(), engine, storage, registry, model, views)
