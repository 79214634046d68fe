"""The storage port of the read-model engine, which every backend implements.

A backend keeps four things: the event log (the outbox: events appended in
the same transaction as a command's state change), each projection's
checkpoint (stored in the same transaction as the projection's read-model
change), dead letters, and the generation records of each read model (which one
queries see, which one a rebuild writes, which projection version built each).
The port is primitives under the storage's own locks; the rules built on them live
once, in the engine. The in-memory, SQLite and PostgreSQL backends pass the same
contract suite, which third-party backends run too (:mod:`mediator.readmodels.contract`).
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import attrs

from ._errors import StorageDataError, StorageError


class NewEvent(NamedTuple):
    """An event about to be appended: encoded, with its id, ordering key, time and metadata (JSON)."""

    event_id: str
    type_name: str
    version: int
    data: str
    key: str | None
    recorded_at: float
    meta: str = "{}"


class StoredEvent(NamedTuple):
    """An event in the log, at its position (1, 2, 3, ... in commit order, no gaps).

    A named tuple rather than an attrs class: projections read these by the
    hundred thousand, and a tuple is built from a database row for a fraction
    of the cost.
    """

    position: int
    event_id: str
    type_name: str
    version: int
    data: str
    key: str | None
    recorded_at: float
    meta: str = "{}"


PARKED = "parked"
"""A dead letter whose event failed: moved aside at once, so the projection's other keys go on, and retried by the
runner on a schedule (see :attr:`DeadLetter.retry_at`)."""
BLOCKED = "blocked"
"""A dead letter held back only because an earlier event with the same key is parked."""


@attrs.frozen
class DeadLetter:
    """An event a projection could not apply, kept with why; ``status`` is PARKED or BLOCKED."""

    projection: str
    generation: int
    position: int
    event_id: str
    type_name: str
    key: str | None
    reason: str
    attempts: int
    status: str
    retry_at: float | None = None
    """When the runner tries a parked event again (seconds since the epoch); ``None``: only an operator does."""


@attrs.frozen
class Quarantined:
    """A received event an inbox could not append (the storage refused it), kept with why."""

    inbox: str
    event_id: str
    type_name: str
    reason: str
    event: str
    """The event as received, as JSON with every character escaped that a database could refuse."""
    received_at: float


class ProjectionSession(abc.ABC):
    """One transaction in which a projection changes its read model and moves its checkpoint.

    ``handle`` is the backend's own handle (a ``sqlite3.Connection`` for SQLite,
    a dict of tables for memory) that the application's read-model code uses;
    :meth:`table` names a table of this projection's generation.
    """

    name: str
    generation: int
    handle: Any
    replaying: bool = False

    def table(self, table: str) -> str:
        """The storage name of ``table`` in this projection's generation."""
        return table_name(self.name, table, self.generation)

    @property
    @abc.abstractmethod
    def position(self) -> int:
        """The checkpoint: the last log position this projection has dealt with."""

    @abc.abstractmethod
    def advance(self, position: int) -> None:
        """Move the checkpoint to ``position`` (committed with everything else in this session)."""

    @abc.abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """Undo the read-model changes made inside the block if it raises."""

    @abc.abstractmethod
    def park(self, letter: DeadLetter) -> None:
        """Keep ``letter`` in the dead-letter store."""

    @abc.abstractmethod
    def dead_letters(self) -> list[DeadLetter]:
        """This projection generation's dead letters, in log order."""

    @abc.abstractmethod
    def release(self, position: int) -> None:
        """Remove the dead letter at ``position`` (it was applied or skipped)."""


class Generations(abc.ABC):
    """The generation records of one projection, read and changed inside one transaction under the storage's lock.

    Primitives only: which generation queries read, which one a rebuild is writing, which projection version
    built each, and their checkpoints. The rules that decide what to claim, swap or record live once, in the
    engine (:mod:`mediator.readmodels._versions`), and run on these, so every backend follows them alike.
    Two transactions over the same projection's records never interleave, in any process.
    """

    name: str

    @abc.abstractmethod
    def current(self) -> int:
        """The generation queries read (1 until a rebuild swaps in another)."""

    @abc.abstractmethod
    def rebuilding(self) -> int | None:
        """The generation a rebuild is writing, if one is under way."""

    @abc.abstractmethod
    def version(self, generation: int) -> int | None:
        """The projection version recorded as having built ``generation``, if any."""

    @abc.abstractmethod
    def known(self) -> Collection[int]:
        """Every generation anything is recorded for: a checkpoint, a version, or being current."""

    @abc.abstractmethod
    def checkpoint(self, generation: int) -> int:
        """The checkpoint of ``generation`` (0 if it has none)."""

    @abc.abstractmethod
    def set_current(self, generation: int) -> None:
        """Make ``generation`` the one queries read."""

    @abc.abstractmethod
    def set_rebuilding(self, generation: int | None) -> None:
        """Record ``generation`` as the rebuild under way, or (``None``) that none is."""

    @abc.abstractmethod
    def add_version(self, generation: int, version: int) -> None:
        """Record that projection ``version`` built ``generation``, unless a version is recorded already."""


class WriteSession(abc.ABC):
    """One command's transaction on the write side: its state change and its events commit together."""

    handle: Any

    @abc.abstractmethod
    def append(self, events: Sequence[NewEvent]) -> int:
        """Append ``events`` to the log; return the position of the last one (the head if none)."""

    @abc.abstractmethod
    def projection(self, name: str, generation: int) -> ProjectionSession:
        """A projection session inside this transaction, for inline projections."""

    @abc.abstractmethod
    def generations(self, name: str) -> Generations:
        """The generation records of ``name`` inside this transaction (for inline projections).

        The write transaction holds the writer's lock, so every command's events have been applied inline by
        the time these are read.
        """

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the state change and the events visible together."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard the state change and the events."""


class Storage(abc.ABC):
    """What the read-model engine needs from a backend.

    A new backend subclasses this (and the three session classes) and runs the contract suite shipped in
    :mod:`mediator.readmodels.contract` against it.
    """

    supports_inline: bool = True
    """Whether read models can be written in a command's transaction (inline projections)."""

    @abc.abstractmethod
    def begin(self) -> WriteSession:
        """Start a command's write transaction (the writer's lock is taken here, so commit order is log order)."""

    @abc.abstractmethod
    def read(self, after: int, limit: int, type_names: Collection[str] | None = None) -> list[StoredEvent]:
        """Committed events after ``after``, in order, at most ``limit``; only ``type_names`` if given."""

    @abc.abstractmethod
    def head(self) -> int:
        """The position of the last committed event (0 for an empty log)."""

    @abc.abstractmethod
    def session(self, name: str, generation: int) -> AbstractContextManager[ProjectionSession]:
        """A projection transaction: committed if the block succeeds, rolled back if it raises."""

    @abc.abstractmethod
    def generations(self, name: str) -> AbstractContextManager[Generations]:
        """A transaction over the generation records of ``name``, under a lock that serialises such transactions
        for one projection across processes: committed if the block succeeds, rolled back if it raises."""

    @abc.abstractmethod
    def checkpoint(self, name: str, generation: int) -> int:
        """The committed checkpoint of a projection generation (a read outside any transaction)."""

    @abc.abstractmethod
    def current_generation(self, name: str) -> int:
        """The generation queries read (1 until a rebuild swaps in another); a read outside any transaction."""

    @abc.abstractmethod
    def rebuilding(self, name: str) -> int | None:
        """The generation of ``name`` being rebuilt, if a rebuild is under way (in any process)."""

    @abc.abstractmethod
    def recorded_version(self, name: str, generation: int) -> int | None:
        """The projection version recorded as having built ``generation``, if one is (a read, never a write)."""

    @abc.abstractmethod
    def applied(self, name: str, generation: int) -> int:
        """The last position up to which every event of the generation has been applied: its checkpoint, or the
        position just before its earliest dead letter (a parked event is not applied, nor what waits behind it)."""

    @abc.abstractmethod
    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Dead letters of current generations, of one projection or all."""

    @abc.abstractmethod
    def quarantine(self, inbox: str, event: NewEvent, reason: str) -> None:
        """Keep ``event``, received by ``inbox`` and refused by this storage, with why (committed at once)."""

    @abc.abstractmethod
    def quarantined(self, inbox: str | None = None) -> list[Quarantined]:
        """The events quarantined by ``inbox`` (or by every inbox), oldest first."""

    leases: bool = False
    """Whether runners hold projections by lease (:meth:`acquire`): then another process's runner may be the
    one running a projection, and read-your-writes waits poll its checkpoint rather than wait for this one's."""

    notifies: bool = False
    """Whether :meth:`wait_for_append` blocks until an append (PostgreSQL's LISTEN) rather than sleeping."""

    def close(self) -> None:  # noqa: B027  # optional for backends with nothing to release
        """Release connections or files."""

    def acquire(self, name: str) -> bool:
        """Try to become the one runner of projection ``name``, across processes; ``True`` while this one is.

        Runners call it before each batch. Backends whose projection transactions
        already run one at a time (SQLite's single writer, memory) need no lock and
        always say yes; PostgreSQL holds an advisory lock, freed when the process dies.
        """
        return True

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised while applying an event, is the storage failing rather than the event.

        Such failures (a dropped connection, a deadlock, a server restart) are retried without counting
        as the event's attempts, so they never park a healthy event. Backends add their driver's errors. A value
        the storage refuses (:class:`StorageDataError`) is the event's fault, never transient.
        """
        return isinstance(exc, StorageError) and not isinstance(exc, StorageDataError)

    def holds(self, name: str) -> bool:
        """Whether this process holds projection ``name`` (see :meth:`acquire`); without locks, always."""
        return True

    def release(self, name: str) -> None:  # noqa: B027  # only backends with locks have anything to give up
        """Give up projection ``name``, if this process holds it."""

    def release_all(self) -> None:  # noqa: B027  # only backends with locks have anything to give up
        """Give up every projection this process runs, so other runners can take them."""

    def wait_for_append(self, timeout: float) -> bool:
        """Block until an append may have happened in any process, or ``timeout`` s; ``True`` if one did.

        The default sleeps and answers ``False``: the caller polls :meth:`head`.
        """
        time.sleep(timeout)
        return False

    def events(self, after: int = 0, batch: int = 500) -> Iterator[StoredEvent]:
        """Every committed event after ``after``, read in batches."""
        while True:
            chunk = self.read(after, batch)
            if not chunk:
                return
            yield from chunk
            after = chunk[-1].position


@functools.lru_cache(maxsize=4096)  # called per event by projections: the same few names, over and over
def table_name(projection: str, table: str, generation: int) -> str:
    """The storage name of a read-model table: one set of tables per projection generation."""
    return f"{projection}__{table}__g{generation}"
