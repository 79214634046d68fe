"""The storage port of the read-model engine, which every backend implements.

A backend keeps four things: the event log (the outbox: events appended in
the same transaction as a command's state change), each projection's
checkpoint (stored in the same transaction as the projection's read-model
change), dead letters, and which generation of each read model queries see.
The in-memory, SQLite and PostgreSQL adapters pass the same contract tests.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import attrs

from ._errors import StorageError


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
"""A dead letter whose event failed every attempt."""
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
    def swap(self, name: str, generation: int) -> None:
        """Make ``generation`` the one queries read, in this transaction (for inline projections)."""

    @abc.abstractmethod
    def record_version(self, name: str, generation: int, version: int) -> int:
        """Like :meth:`Storage.record_version`, in this transaction (for inline projections)."""

    @abc.abstractmethod
    def finish_rebuild(self, name: str, generation: int, old: int) -> bool:
        """Like :meth:`Storage.finish_rebuild`, in this transaction (for inline projections).

        The live generation is not checked here: the transaction holds the writer lock, so every command's
        events have been applied inline already.
        """

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the state change and the events visible together."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard the state change and the events."""


class Storage(abc.ABC):
    """What the read-model engine needs from a backend."""

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
    def checkpoint(self, name: str, generation: int) -> int:
        """The committed checkpoint of a projection generation."""

    @abc.abstractmethod
    def current_generation(self, name: str) -> int:
        """The generation queries read (1 until a rebuild swaps in another)."""

    @abc.abstractmethod
    def swap(self, name: str, generation: int) -> None:
        """Make ``generation`` the one queries read, atomically."""

    @abc.abstractmethod
    def rebuilding(self, name: str) -> int | None:
        """The generation of ``name`` being rebuilt, if a rebuild is under way (in any process)."""

    @abc.abstractmethod
    def claim_rebuild(self, name: str, version: int = 1, *, replacing: int | None = None) -> int:
        """Start a rebuild of ``name`` into a new generation, or join the one under way; return its generation.

        A new generation is recorded as built by projection ``version``, in the same transaction. With
        ``replacing``, a rebuild under way into that generation is abandoned for a new one (the engine does
        this to a rebuild started for an older version); a different rebuild under way is joined instead.
        Raises :class:`ReadModelUnavailableError`, claiming nothing, when the current generation was built by a
        newer version: older code never starts a rebuild over newer code's read model.
        """

    @abc.abstractmethod
    def recorded_version(self, name: str, generation: int) -> int | None:
        """The projection version recorded as having built ``generation``, if one is (a read, never a write)."""

    @abc.abstractmethod
    def record_version(self, name: str, generation: int, version: int) -> int:
        """Record that projection ``version`` built ``generation``, unless a version is recorded; return the one
        recorded. Generations made before versions were recorded get theirs this way, the first time they are
        looked at."""

    @abc.abstractmethod
    def finish_rebuild(self, name: str, generation: int, old: int, *, check_live: bool = True) -> bool:
        """Atomically swap ``generation`` in and end the rebuild, if it is still the rebuild and ``old`` current.

        Returns ``False`` (changing nothing) when another process finished or replaced it first, or, if
        ``check_live``, when ``old`` has not yet reached the checkpoint of ``generation``: events the replay
        applied before the live generation did have had no side effects yet, and the live generation must still
        deliver them. An upgrade passes ``check_live=False``: nobody feeds an outdated generation, and the
        replay delivered the side effects of every event past its checkpoint itself.
        """

    @abc.abstractmethod
    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Dead letters of current generations, of one projection or all."""

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
        as the event's attempts, so they never park a healthy event. Backends add their driver's errors.
        """
        return isinstance(exc, StorageError)

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
