"""Read models kept in step with the write side: outbox, checkpointed projections, read-your-writes.

The storage port is here, and its backends beside it: :mod:`mediator.readmodels.memory` for tests,
:mod:`mediator.readmodels.sqlite` as the embedded default, :mod:`mediator.readmodels.postgres` (the ``postgres``
extra) for many processes.
"""

from ._engine import (
    Consistency,
    Lag,
    ReadModels,
    ReadYourWrites,
    SyncReadModels,
    UnitOfWork,
    consistent,
    last_token,
)
from ._errors import (
    ConsistencyTimeoutError,
    ReadModelUnavailableError,
    StorageError,
    UndecodableEventError,
    UnregisteredEventError,
)
from ._ports import (
    BLOCKED,
    PARKED,
    DeadLetter,
    NewEvent,
    ProjectionSession,
    Storage,
    StoredEvent,
    WriteSession,
    table_name,
)
from ._projections import Delivery, Projection, on
from ._serialization import EventType, EventTypes

__all__ = [
    "BLOCKED",
    "PARKED",
    "Consistency",
    "ConsistencyTimeoutError",
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
    "ReadModelUnavailableError",
    "StorageError",
    "StoredEvent",
    "SyncReadModels",
    "UndecodableEventError",
    "UnitOfWork",
    "UnregisteredEventError",
    "WriteSession",
    "consistent",
    "last_token",
    "on",
    "table_name",
]
