"""Read models kept in step with the write side: outbox, checkpointed projections, read-your-writes.

The storage port is here, and its backends beside it: :mod:`mediator.readmodels.memory` for tests,
:mod:`mediator.readmodels.sqlite` as the embedded default, :mod:`mediator.readmodels.postgres` (the ``postgres``
extra) for many processes. :mod:`mediator.readmodels.contract` is the contract suite every backend passes.
"""

from .._context import new_event_id
from .._messages import name_by_package as _name_by_package
from ._engine import Lag, ReadModels
from ._errors import (
    ConsistencyTimeoutError,
    DatabaseNotFoundError,
    DeadLetterNotFoundError,
    DeadLetterOrderError,
    EventFieldError,
    EventRegistrationError,
    ProjectionConfigError,
    ReadModelUnavailableError,
    RebuildCancelError,
    RebuildNotFoundError,
    RebuildRefusedError,
    RowFieldError,
    ScheduleNotFoundError,
    ScheduleTimeError,
    StorageDataError,
    StorageError,
    TableQueryError,
    TokenBeyondHeadError,
    UndecodableEventError,
    UnknownProjectionError,
    UnregisteredEventError,
    UnschedulableCommandError,
)
from ._health import Health, HealthReport, ProjectionHealth, Readiness
from ._idempotency import Idempotency, IdempotencyClaims, digest_of
from ._live import LiveHub
from ._opening import existing_only
from ._ports import (
    BLOCKED,
    PARKED,
    PENDING,
    DeadLetter,
    Generations,
    IdempotencyRecord,
    NewEvent,
    ProjectionSession,
    Quarantined,
    ReadStore,
    ScheduledCommand,
    Storage,
    StoredEvent,
    WriteSession,
)
from ._processes import ProcessManager, ProcessStatus, Step
from ._projections import Delivery, Projection, on
from ._rebuilds import Rebuilds
from ._routed import RoutedStorage
from ._serialization import EventType, EventTypes
from ._tables import Codec, Prefix, Query, Range, Table, table_name
from ._tokens import Consistency, ReadYourWrites, consistent, fresh_token, last_token
from ._unit_of_work import SyncReadModels, UnitOfWork
from ._verify import RebuildCheck, TableDiff

__all__ = [
    "BLOCKED",
    "Codec",
    "Consistency",
    "ConsistencyTimeoutError",
    "DatabaseNotFoundError",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DeadLetterOrderError",
    "Delivery",
    "EventFieldError",
    "EventRegistrationError",
    "EventType",
    "EventTypes",
    "Generations",
    "Health",
    "HealthReport",
    "Idempotency",
    "IdempotencyClaims",
    "IdempotencyRecord",
    "Lag",
    "LiveHub",
    "NewEvent",
    "PARKED",
    "PENDING",
    "Prefix",
    "ProcessManager",
    "ProcessStatus",
    "Projection",
    "ProjectionConfigError",
    "ProjectionHealth",
    "ProjectionSession",
    "Quarantined",
    "Query",
    "Range",
    "ReadModelUnavailableError",
    "ReadModels",
    "ReadStore",
    "ReadYourWrites",
    "Readiness",
    "RebuildCancelError",
    "RebuildCheck",
    "RebuildNotFoundError",
    "RebuildRefusedError",
    "Rebuilds",
    "RoutedStorage",
    "RowFieldError",
    "ScheduleNotFoundError",
    "ScheduleTimeError",
    "ScheduledCommand",
    "Step",
    "Storage",
    "StorageDataError",
    "StorageError",
    "StoredEvent",
    "SyncReadModels",
    "Table",
    "TableDiff",
    "TableQueryError",
    "TokenBeyondHeadError",
    "UndecodableEventError",
    "UnitOfWork",
    "UnknownProjectionError",
    "UnregisteredEventError",
    "UnschedulableCommandError",
    "WriteSession",
    "consistent",
    "digest_of",
    "existing_only",
    "fresh_token",
    "last_token",
    "new_event_id",
    "on",
    "table_name",
]

_name_by_package(globals())
