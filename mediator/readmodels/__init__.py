"""Read models kept in step with the write side: outbox, checkpointed projections, read-your-writes.

The storage port is here; the backends live in ``adapters`` (``adapters.memory``
for tests, ``adapters.sqlite`` as the embedded default).
"""

from ._engine import (
    Consistency,
    ConsistencyTimeout,
    Lag,
    ReadModels,
    ReadYourWrites,
    SyncReadModels,
    UnitOfWork,
    UnregisteredEvent,
    consistent,
    last_token,
)
from ._ports import (
    BLOCKED,
    PARKED,
    DeadLetter,
    NewEvent,
    ProjectionSession,
    ReadModelUnavailable,
    Storage,
    StorageError,
    StoredEvent,
    WriteSession,
    table_name,
)
from ._projections import Delivery, Projection, on
from ._serialization import EventType, EventTypes, UndecodableEvent

__all__ = [
    "BLOCKED",
    "PARKED",
    "Consistency",
    "ConsistencyTimeout",
    "DeadLetter",
    "Delivery",
    "EventType",
    "EventTypes",
    "Lag",
    "NewEvent",
    "Projection",
    "ProjectionSession",
    "ReadModels",
    "ReadYourWrites",
    "Storage",
    "ReadModelUnavailable",
    "StorageError",
    "StoredEvent",
    "SyncReadModels",
    "UndecodableEvent",
    "UnitOfWork",
    "UnregisteredEvent",
    "WriteSession",
    "consistent",
    "last_token",
    "on",
    "table_name",
]
