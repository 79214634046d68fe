"""Read models kept in step with the write side: outbox, checkpointed projections, read-your-writes.

The storage port is here, and its backends beside it: :mod:`mediator.readmodels.memory` for tests,
:mod:`mediator.readmodels.sqlite` as the embedded default, :mod:`mediator.readmodels.postgres` (the ``postgres``
extra) for many processes. :mod:`mediator.readmodels.contract` is the contract suite every backend passes.
"""

from .._messages import name_by_package as _name_by_package
from ._engine import Lag, ReadModels
from ._errors import (
    ConsistencyTimeoutError,
    DeadLetterNotFoundError,
    DeadLetterOrderError,
    EventFieldError,
    EventRegistrationError,
    ProjectionConfigError,
    ReadModelUnavailableError,
    StorageDataError,
    StorageError,
    UndecodableEventError,
    UnknownProjectionError,
    UnregisteredEventError,
)
from ._ports import (
    BLOCKED,
    PARKED,
    DeadLetter,
    Generations,
    NewEvent,
    ProjectionSession,
    Quarantined,
    Storage,
    StoredEvent,
    WriteSession,
    table_name,
)
from ._projections import Delivery, Projection, on
from ._serialization import EventType, EventTypes
from ._tokens import Consistency, ReadYourWrites, consistent, last_token
from ._unit_of_work import SyncReadModels, UnitOfWork

__all__ = [
    "BLOCKED",
    "PARKED",
    "Consistency",
    "ConsistencyTimeoutError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DeadLetterOrderError",
    "Delivery",
    "EventFieldError",
    "EventRegistrationError",
    "EventType",
    "EventTypes",
    "Generations",
    "Lag",
    "NewEvent",
    "Projection",
    "ProjectionConfigError",
    "ProjectionSession",
    "Quarantined",
    "ReadModelUnavailableError",
    "ReadModels",
    "ReadYourWrites",
    "Storage",
    "StorageDataError",
    "StorageError",
    "StoredEvent",
    "SyncReadModels",
    "UndecodableEventError",
    "UnitOfWork",
    "UnknownProjectionError",
    "UnregisteredEventError",
    "WriteSession",
    "consistent",
    "last_token",
    "on",
    "table_name",
]

_name_by_package(globals())
