"""Projections: classes that keep one read model in step with the events they declare.

>>> import attrs
>>> from mediator import Event
>>> @attrs.frozen(kw_only=True)
... class Deposited(Event):
...     account: str
...     amount: int
>>> class Balances(Projection):
...     name = "balances"
...     @on(Deposited)
...     def deposited(self, event: Deposited, session: ProjectionSession) -> None:
...         table = session.handle.setdefault(session.table("balance"), {})
...         table[event.account] = table.get(event.account, 0) + event.amount
>>> list(Balances().handlers)
[<class 'mediator.readmodels._projections.Deposited'>]
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar, TypeVar

from .._messages import Event, qualname
from ._errors import ProjectionConfigError
from ._ports import PARTITION_MARK, ProjectionSession
from ._tables import Table, tables_by_attribute, tables_of

F = TypeVar("F", bound=Callable[..., Any])

_APPLIES = "__projection_applies__"

def partition_of(key: str | None, partitions: int) -> int:
    """The partition of ``partitions`` that applies the events with ordering ``key`` (those without one: the first).

    CRC-32 of the key's UTF-8 bytes: stable across processes, runs and Python versions, unlike ``hash``.
    """
    if key is None or partitions == 1:
        return 0
    return zlib.crc32(key.encode()) % partitions


class Delivery(enum.Enum):
    """How a projection gets its events."""

    INLINE = "inline"
    """In the command's own transaction: the read model is never behind (strong consistency)."""
    BACKGROUND = "background"
    """By a runner thread in this process, after commit (eventual consistency, usually milliseconds)."""
    WORKER = "worker"
    """By a separate worker process (``python -m mediator.readmodels worker``); this process only reads it."""

    def __repr__(self) -> str:
        return f"Delivery.{self.name}"


def on(*event_types: type[Event]) -> Callable[[F], F]:
    """Mark a projection method as applying ``event_types``: ``method(self, event, session)``."""

    def mark(method: F) -> F:
        setattr(method, _APPLIES, (*getattr(method, _APPLIES, ()), *event_types))
        return method

    return mark


class Projection:
    """Base class of a projection: a ``name``, ``@on(...)`` methods, optional ``setup``/``teardown``.

    A method receives the event and the :class:`ProjectionSession`, whose
    ``handle`` is the backend's transaction handle and whose ``table(name)``
    gives the storage name of a table in the generation being written (a
    rebuild writes a fresh generation). ``session.replaying`` is true while a
    rebuild replays old events: skip side effects (e-mails, integration events)
    then. Methods must be deterministic: an event may be applied again after a
    crash only if its checkpoint was not committed, and then its earlier
    effects were not committed either.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    """Raise it when the projection's tables or what it writes change: a read model built by an older version
    is then rebuilt, by the first engine of the new version that runs, and served again once swapped in."""
    verify_rebuilds: ClassVar[bool] = False
    """Compare each rebuild with the live generation before swapping it in (row counts, digests and differing keys
    of every typed table): a rebuild by the same version is swapped in with the differences as the report of what
    was wrong; one by a new version only if every difference is declared in :attr:`expected_changes` (see
    :class:`~mediator.readmodels.RebuildCheck`)."""
    expected_changes: ClassVar[Mapping[str, Collection[str]]] = {}
    """What this version changes in the rows of the version before it, for a verified rebuild: table name to the
    columns that may differ, or ``("*",)`` for a whole table (its rows and its shape)."""
    partitions: ClassVar[int] = 1
    """Split the projection into this many partitions by its events' ordering key: each applies the events of its
    keys, in order, with a checkpoint, dead letters and lease of its own, so up to this many runners (threads of
    one engine, worker processes, service processes on PostgreSQL) apply it at once. Its handlers must write only
    rows of their event's key, or shared rows by ``put(..., add=...)`` (additions commute). Read-your-writes and
    subscriptions wait for every partition; :meth:`~mediator.readmodels.ReadModels.lag` shows each."""
    handlers: dict[type, Callable[[Any, ProjectionSession], None]]
    tables: list[Table[Any]]
    """The typed tables the class declares (see :class:`~mediator.readmodels.Table`): the engine creates them in
    a generation before its first event and drops them when a rebuild retires it."""

    def __init__(self) -> None:
        if not getattr(type(self), "name", None):
            raise ProjectionConfigError(
                f"{qualname(type(self))} needs a class attribute `name` (its stable storage name).")
        if PARTITION_MARK in self.name:
            raise ProjectionConfigError(f"{qualname(type(self))}.name={self.name!r}: a projection's name cannot hold "
                                        f"{PARTITION_MARK!r} (partitions are named with it).")
        partitions = type(self).partitions
        if type(partitions) is not int or not 1 <= partitions <= 256:
            raise ProjectionConfigError(
                f"{qualname(type(self))}.partitions={partitions!r}: a whole number from 1 to 256.")
        self.tables = tables_of(type(self))
        for attribute, table in tables_by_attribute(type(self)).items():
            self.__dict__[attribute] = table  # read per event: an instance attribute, not the class's descriptor
        names = [table.name for table in self.tables]
        if len(set(names)) != len(names):
            raise ProjectionConfigError(f"{qualname(type(self))} declares two tables named alike: {sorted(names)}.")
        self.handlers = {}
        for attribute in dir(type(self)):
            method = getattr(self, attribute, None)
            for event_type in getattr(method, _APPLIES, ()):
                if event_type in self.handlers:
                    raise ProjectionConfigError(f"{qualname(type(self))} applies {qualname(event_type)} twice.")
                self.handlers[event_type] = method  # type: ignore[assignment]

    def setup(self, session: ProjectionSession) -> None:
        """Create this generation's raw tables (called before its first event, after its typed tables are made).
        Memory needs none; typed tables need none."""

    def teardown(self, session: ProjectionSession) -> None:
        """Drop this generation's raw tables (called after a rebuild swaps in a newer one; its typed tables are
        dropped after)."""
