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
import contextlib
import time
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import attrs

from .._messages import qualname
from ._errors import StorageDataError, StorageError, TableQueryError
from ._tables import Adding, Patching, table_name

if TYPE_CHECKING:
    from ._tables import Query, Table

R = TypeVar("R")


PARTITION_MARK = "#"
"""Separates a partitioned projection's name from what is kept per partition under names of its own (checkpoints,
dead letters, leases: ``orders#0``, ``orders#1``, ...); never part of a projection's name."""


def partition_name(name: str, partition: int | str) -> str:
    """The name partition ``partition`` of projection ``name`` keeps its checkpoint, dead letters and lease under
    (``orders#2``; the engine's own records of a projection are named alike: ``orders#slot1``,
    ``orders#partitions``)."""
    return f"{name}{PARTITION_MARK}{partition}"


def owner_of(name: str) -> str:
    """The projection a checkpoint name belongs to: ``orders`` for ``orders#2``, the name itself otherwise."""
    return name.partition(PARTITION_MARK)[0]


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


class IdempotencyRecord(NamedTuple):
    """What an idempotent command left under its key: which command, a digest of its payload, its result (JSON)
    and the consistency token of the transaction that ran it; ignored from ``expires_at`` (a timestamp) on."""

    key: str
    command: str
    digest: str
    result: str
    position: int
    recorded_at: float
    expires_at: float


class ScheduledCommand(NamedTuple):
    """A command to dispatch once, when ``due_at`` (seconds since the epoch) comes: its registered name and JSON,
    how often it failed, and ``status`` :data:`PENDING`, or :data:`PARKED` once it has had every try."""

    schedule_id: str
    command: str
    data: str
    due_at: float
    scheduled_at: float
    attempts: int = 0
    status: str = "pending"
    reason: str | None = None
    meta: str = "{}"


PENDING = "pending"
"""A scheduled command waiting for its time (or, after a failure, for its next try)."""

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


_UNREAD: Any = object()


class ProjectionSession(abc.ABC):
    """One transaction in which a projection changes its read model and moves its checkpoint.

    A projection writes its typed tables through :meth:`get`, :meth:`put`, :meth:`update`, :meth:`delete`,
    :meth:`find` and :meth:`count`, the same on every backend. Writes are kept in the session and written
    together, a batch per table, before the transaction commits (or before a :meth:`find`, or before raw access
    through ``handle``), so a projection applying a thousand events makes a few statements, not a thousand.

    ``handle`` is the backend's own handle (a ``sqlite3.Connection`` for SQLite, a psycopg connection for
    PostgreSQL, a dict of tables for memory) for raw read-model code; :meth:`table` names a table of this
    projection's generation.

    A backend implements the primitives below the typed methods (:meth:`load_row`, :meth:`write_rows`,
    :meth:`select_rows`, :meth:`count_rows`, :meth:`create_table`, :meth:`drop_table`) on stored values (see
    :class:`~mediator.readmodels.Codec`), and the transaction ones (:attr:`position`, :meth:`advance`,
    :meth:`savepoint`, :meth:`park`, :meth:`dead_letters`, :meth:`release`).
    """

    name: str
    generation: int
    replaying: bool = False
    _handle: Any = None
    _owned: dict[Table[Any], str]
    _names: dict[str, str]
    """The storage names :meth:`table` gave, by table (a session's projection and generation never change)."""
    _pending_rows: dict[str, tuple[Table[Any], dict[tuple[Any, ...], Any]]] | None = None
    """Rows written and not yet flushed, per storage table name: the table, and by key the stored values, an
    :class:`~mediator.readmodels._tables.Adding` (written with ``add=``), a
    :class:`~mediator.readmodels._tables.Patching` (fields set with ``patch``), or ``None`` (deleted)."""
    _loaded: dict[tuple[str, tuple[Any, ...]], Sequence[Any] | None] | None = None
    """Rows read from storage in this session and not written since, by storage table name and key: a batch
    that reads one row for many events (a category's name for each order line) reads it from storage once. Only
    this projection writes its tables, so what it read stays true until it writes (kept apart in the pending
    rows, which :meth:`get` looks at first) or flushes (which forgets all of it), or a savepoint rolls back."""

    @property
    def handle(self) -> Any:
        """The backend's own handle, for raw read-model code (typed writes made so far are flushed first)."""
        if self._pending_rows:
            self.flush_rows()
        self._loaded = None  # raw code may change any row
        return self._handle

    @handle.setter
    def handle(self, value: Any) -> None:
        self._handle = value

    @property
    def owner(self) -> str:
        """The projection whose tables this session writes: :attr:`name`, or for a partition's session (named
        ``orders#2``, its checkpoint and dead letters kept under that name) the partitioned projection's."""
        return owner_of(self.name)

    def table(self, table: str) -> str:
        """The storage name of ``table`` in this projection's generation."""
        try:  # raw read-model code asks once per event: named once per session
            return self._names[table]
        except (AttributeError, KeyError):
            try:
                names = self._names
            except AttributeError:
                names = self._names = {}
            named = names[table] = table_name(self.owner, table, self.generation)
            return named

    # -- typed tables ------------------------------------------------------------------------------

    def _own(self, table: Table[Any]) -> str:
        """The storage name of ``table`` in this generation, checked to be this projection's (once per session)."""
        try:
            owned = self._owned
        except AttributeError:
            owned = self._owned = {}
        physical = owned.get(table)
        if physical is None:
            if table.projection != self.owner:
                raise TableQueryError(
                    f"{table!r} belongs to projection {table.projection!r}; the session of {self.owner!r} writes and "
                    "reads only its own tables (read another's through the engine, in a query).")
            physical = owned[table] = table.physical(self.generation)
        return physical

    def get(self, table: Table[R], key: Any) -> R | None:
        """The row of ``table`` with ``key`` (a tuple for a key of several fields), as this session sees it."""
        try:
            physical = self._owned[table]  # per row: the common case without a call
        except (AttributeError, KeyError):
            physical = self._own(table)
        stored = table.stored_key(key)
        pending = self._pending_rows
        if pending is not None and (written := pending.get(physical)) is not None and stored in written[1]:
            values = written[1][stored]
            if type(values) is Adding or type(values) is Patching:
                values = values.onto(self._load(table, physical, stored))
        else:
            values = self._load(table, physical, stored)
        return None if values is None else typing.cast(R, table.codec.decode(values))

    def _load(self, table: Table[Any], physical: str, stored: tuple[Any, ...]) -> Sequence[Any] | None:
        """The stored values of a row this session has not written: from storage once per session (see
        ``_loaded``)."""
        loaded = self._loaded
        if loaded is None:
            loaded = self._loaded = {}
        else:
            found = loaded.get((physical, stored), _UNREAD)
            if found is not _UNREAD:
                return typing.cast("Sequence[Any] | None", found)
        values = loaded[physical, stored] = self.load_row(table, physical, stored)
        return values

    def put(self, table: Table[R], row: R, *, add: Sequence[str] = ()) -> None:
        """Insert ``row`` into ``table``, or replace the row with its key; with ``add``, the row's values of those
        number fields are added to the stored row's instead of replacing them (a counter, kept without reading
        the row: the addition is done by the database when the rows are written).

        Raises:
            RowFieldError: if a field does not hold its declared type (it would not read back).
        """
        try:
            physical = self._owned[table]
        except (AttributeError, KeyError):
            physical = self._own(table)
        if type(row) is not table.row:
            raise TableQueryError(f"{table!r} holds {qualname(table.row)} rows, not {qualname(type(row))}.")
        values = table.codec.encode(row)
        pending = self._pending_rows
        if pending is not None and (found := pending.get(physical)) is not None:
            written = found[1]
        else:
            written = self._written(table, physical)
        key = table.key_of(values)
        if not add:
            written[key] = values
            return
        adding = Adding(values, table.adding_at(add))
        if key not in written:
            written[key] = adding
            return
        before = written[key]
        if type(before) is Patching:  # fields set on the stored row, if any: settle them first
            before = before.onto(self._load(table, physical, key))
        if before is None:  # deleted in this session (or patched where there was no row): the row is new again
            written[key] = values
        elif type(before) is not Adding:
            written[key] = adding.onto(before)
        elif before.at == adding.at:
            written[key] = before.then(adding)
        else:  # adding other fields than before: settle the first with the stored row
            written[key] = adding.onto(before.onto(self._load(table, physical, key)))

    def update(self, table: Table[R], key: Any, **changes: Any) -> R | None:
        """The row with ``key`` changed by ``changes`` (``attrs.evolve``) and put back; ``None`` (and nothing
        written) if there is no such row."""
        row = self.get(table, key)
        if row is None:
            return None
        changed: R = attrs.evolve(row, **changes)  # type: ignore[misc]  # R is an attrs class: Table says so
        self.put(table, changed)
        return changed

    def patch(self, table: Table[Any], key: Any, **changes: Any) -> None:
        """Set ``changes`` (field names and values) on the row with ``key``, without reading it: the database does it
        when the rows are written (one ``UPDATE`` per batch on SQL). Nothing happens if there is no such row.

        Cheaper than :meth:`update` for a row the projection need not see: no read, no row built. A row class
        with validators, converters or ``__attrs_post_init__`` is read and put back instead, as :meth:`update`
        does, so its rules still run.

        Raises:
            RowFieldError: if a value does not hold its field's declared type (nothing is kept).
            TableQueryError: for a field the row does not have, or a field of the key (a patch cannot move a row).
        """
        try:
            physical = self._owned[table]
        except (AttributeError, KeyError):
            physical = self._own(table)
        patcher = table.patcher(changes)
        if patcher is None:
            self.update(table, key, **changes)
            return
        stored = table.stored_key(key)
        patching = Patching(patcher.encode(changes), patcher.at)
        pending = self._pending_rows
        if pending is not None and (found := pending.get(physical)) is not None:
            written = found[1]
        else:
            written = self._written(table, physical)
        before = written.get(stored, _UNREAD)
        if before is _UNREAD:
            written[stored] = patching
        elif before is None:
            return  # deleted in this session: there is no row to set fields on
        elif type(before) is Patching:
            written[stored] = before.then(patching)
        elif type(before) is Adding:
            written[stored] = patching.onto(before.onto(self._load(table, physical, stored)))
        else:
            written[stored] = patching.onto(before)

    def delete(self, table: Table[Any], key: Any) -> None:
        """Remove the row with ``key`` from ``table`` (nothing happens if there is none)."""
        physical = self._own(table)
        self._written(table, physical)[table.stored_key(key)] = None

    def find(self, table: Table[R], where: Mapping[str, Any] | None = None, *, order_by: str | Sequence[str] = (),
             limit: int | None = None, offset: int = 0) -> list[R]:
        """The rows of ``table`` matching ``where`` (by key or lookup fields: a value, or a
        :class:`~mediator.readmodels.Range`), ordered by ``order_by`` (``"-field"`` descending) then the key."""
        physical = self._own(table)
        query = table.query(where, order_by, limit, offset)
        self.flush_rows()
        decode = table.codec.decode
        return [decode(values) for values in self.select_rows(table, physical, query)]

    def count(self, table: Table[Any], where: Mapping[str, Any] | None = None) -> int:
        """How many rows of ``table`` match ``where``."""
        physical = self._own(table)
        query = table.query(where)
        self.flush_rows()
        return self.count_rows(table, physical, query)

    def _written(self, table: Table[Any], physical: str) -> dict[tuple[Any, ...], Any]:
        pending = self._pending_rows
        if pending is None:
            pending = self._pending_rows = {}
        written = pending.get(physical)
        if written is None:
            written = pending[physical] = (table, {})
        return written[1]

    def flush_rows(self) -> None:
        """Write the rows kept so far, a batch per table (the backend calls it before committing)."""
        self._loaded = None
        pending = self._pending_rows
        if pending:
            self._pending_rows = None
            for physical, (table, rows) in pending.items():
                puts = [values for values in rows.values()
                        if values is not None and type(values) is not Adding and type(values) is not Patching]
                deletes = [key for key, values in rows.items() if values is None]
                self.write_rows(table, physical, puts, deletes)
                adding: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
                patching: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
                for key, values in rows.items():
                    kind = type(values)
                    if kind is Adding:
                        adding.setdefault(values.at, []).append(values.values)
                    elif kind is Patching:
                        patching.setdefault(values.at, []).append(values.values + key)
                for at, added in adding.items():
                    self.add_rows(table, physical, at, added)
                for at, patched in patching.items():
                    self.patch_rows(table, physical, at, patched)

    def discard_rows(self) -> None:
        """Forget the rows kept and not flushed (a savepoint rolled back)."""
        self._pending_rows = None
        self._loaded = None

    def create_tables(self, tables: Iterable[Table[Any]]) -> None:
        """Create ``tables`` in this generation (the engine does, before the generation's first event)."""
        for table in tables:
            self.create_table(table, self._own(table))

    def drop_tables(self, tables: Iterable[Table[Any]]) -> None:
        """Drop ``tables`` from this generation (the engine does, when a rebuild retires it)."""
        self.discard_rows()
        for table in tables:
            self.drop_table(table, self._own(table))

    def create_table(self, table: Table[Any], physical: str) -> None:
        """Create the storage table ``physical`` for ``table``'s rows, with its key and lookups, if missing."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def drop_table(self, table: Table[Any], physical: str) -> None:
        """Drop the storage table ``physical``, if present."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        """The stored values of the row with stored ``key``, if any."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def write_rows(self, table: Table[Any], physical: str, puts: list[tuple[Any, ...]],
                   deletes: list[tuple[Any, ...]]) -> None:
        """Insert or replace the rows of stored values ``puts`` and remove the rows with stored keys ``deletes``
        (no key is in both)."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def add_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        """Insert the rows of stored values ``rows`` whose keys are new; add the values of columns ``at`` of the
        others to the stored rows' (their other columns replace the stored ones). Keys are distinct.

        The default reads and writes each row; SQL backends do it in one statement per batch.
        """
        puts = [Adding(values, at).onto(self.load_row(table, physical, table.key_of(values))) for values in rows]
        self.write_rows(table, physical, puts, [])

    def patch_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        """Set the columns ``at`` of stored rows: each of ``rows`` holds their values, then the row's stored key.
        Keys not stored are left alone, and keys are distinct.

        The default reads and writes each row; SQL backends do it in one statement per batch.
        """
        count, puts = len(at), []
        for row in rows:
            values = Patching(row[:count], at).onto(self.load_row(table, physical, row[count:]))
            if values is not None:
                puts.append(values)
        if puts:
            self.write_rows(table, physical, puts, [])

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        """The stored values of the rows ``query`` finds, in its order."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        """How many rows ``query`` finds (its order, limit and offset aside)."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    # -- the transaction ---------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def position(self) -> int:
        """The checkpoint: the last log position this projection has dealt with."""

    @abc.abstractmethod
    def advance(self, position: int) -> None:
        """Move the checkpoint to ``position`` (committed with everything else in this session)."""

    @abc.abstractmethod
    def savepoint(self) -> AbstractContextManager[None]:
        """Undo the read-model changes made inside the block if it raises (typed rows kept but not flushed
        included: flush them before the savepoint, discard them when it rolls back)."""

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
    def claim_key(self, key: str) -> IdempotencyRecord | None:
        """The record kept under idempotency ``key`` (expired or not), with ``key`` claimed by this transaction.

        A storage whose writers take turns (SQLite, memory) has nothing to claim: its write lock is held already.
        One whose writers overlap (PostgreSQL) takes a lock on the key held to commit, and raises
        :class:`~mediator.IdempotencyKeyInUseError` at once if another transaction holds it.
        """

    @abc.abstractmethod
    def keep_key(self, record: IdempotencyRecord) -> None:
        """Keep ``record`` under its key in this transaction, replacing whatever was kept (an expired record)."""

    @abc.abstractmethod
    def process(self, name: str) -> ProjectionSession:
        """A session on process manager ``name``'s own records (its checkpoint, its parked steps, its instances'
        state, in typed tables) in the write database, inside this transaction: a step commits with the
        commands it sends, wherever the read models are kept."""

    @abc.abstractmethod
    def schedule(self, scheduled: ScheduledCommand) -> None:
        """Keep ``scheduled`` in this transaction, replacing one kept under its id."""

    @abc.abstractmethod
    def unschedule(self, schedule_id: str) -> bool:
        """Delete the scheduled command ``schedule_id`` in this transaction; whether there was one."""

    @abc.abstractmethod
    def take_due(self, now: float) -> ScheduledCommand | None:
        """The pending scheduled command due first, if it is due by ``now``, held by this transaction: where
        writers overlap (PostgreSQL), another transaction's ``take_due`` skips it until this one ends."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the state change and the events visible together."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard the state change and the events."""


class ReadStore(abc.ABC):
    """Where projections keep their read models, checkpoints, dead letters and generation records: the read side
    of a :class:`Storage`, or a store of its own for some projections (:class:`~mediator.readmodels.RoutedStorage`
    routes them there; :class:`~mediator.readmodels.redis.RedisReadStore` is one). Each projection session commits
    its read-model changes with its checkpoint, in the store's own transaction.

    A new read store subclasses this and runs :class:`~mediator.readmodels.contract.ReadStoreContract`.
    """

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

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads in this thread inside the block see one commit: several tables (and their generation records)
        read as of the same moment, though projections commit meanwhile. Nested blocks join the outer one.
        The default reads as usual (each read sees the latest commit)."""
        return contextlib.nullcontext()

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        """The committed stored values of the row with stored ``key`` in storage table ``physical`` (``None`` if
        there is none, or no such table yet), for queries. Backends with typed tables override the three."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        """The committed rows ``query`` finds (none if there is no such table yet), for queries."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        """How many committed rows ``query`` finds, for queries."""
        raise NotImplementedError(f"{type(self).__name__} does not support typed tables")

    leases: bool = False
    """Whether runners hold projections by lease (:meth:`acquire`): then another process's runner may be the
    one running a projection, and read-your-writes waits poll its checkpoint rather than wait for this one's."""

    def close(self) -> None:  # noqa: B027  # optional for backends with nothing to release
        """Release connections or files."""

    def acquire(self, name: str) -> bool:
        """Try to become the one runner of projection ``name``, across processes; ``True`` while this one is.

        Runners call it before each batch. Backends whose projection transactions
        already run one at a time (SQLite's single writer, memory) need no lock and
        always say yes; PostgreSQL holds an advisory lock, freed when the process dies.
        """
        return True

    def partitioned_for(self, name: str) -> bool:
        """Whether projection ``name`` may be partitioned here: whether sessions of its partitions, running at once
        in several processes, can write shared rows by addition without losing any (SQL's row locks can; a store
        that commits whole rows optimistically cannot)."""
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


class Storage(ReadStore):
    """What the read-model engine needs from a backend: the event log (the outbox) and a read store.

    A new backend subclasses this (and the three session classes) and runs the contract suite shipped in
    :mod:`mediator.readmodels.contract` against it.
    """

    supports_inline: bool = True
    """Whether read models can be written in a command's transaction (inline projections)."""

    def inline_for(self, name: str) -> bool:
        """Whether projection ``name`` can be delivered inline (its read store is the log's database)."""
        return self.supports_inline

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
    def quarantine(self, inbox: str, event: NewEvent, reason: str) -> None:
        """Keep ``event``, received by ``inbox`` and refused by this storage, with why (committed at once)."""

    @abc.abstractmethod
    def quarantined(self, inbox: str | None = None) -> list[Quarantined]:
        """The events quarantined by ``inbox`` (or by every inbox), oldest first."""

    @abc.abstractmethod
    def expire_keys(self, now: float) -> int:
        """Delete the idempotency records that expired by ``now`` (committed at once); return how many."""

    @abc.abstractmethod
    def count_keys(self, now: float) -> int:
        """How many idempotency records are live at ``now``."""

    @abc.abstractmethod
    def scheduled(self, status: str | None = None) -> list[ScheduledCommand]:
        """The scheduled commands (of ``status``, if given), due first first."""

    @abc.abstractmethod
    def next_due(self) -> float | None:
        """When the pending scheduled command due first is due (``None`` if there is none)."""

    def ensure_schema(self, name: str, create: Callable[[Any], None], *, version: int = 1) -> bool:
        """Create the application's own write tables: run ``create(handle)`` in a write transaction (``handle`` as
        a command's unit of work has it), once per ``name`` and ``version`` across every process that shares the
        storage, under a lock, and record that it ran; ``True`` if it ran now.

        A process that starts beside another waits for the other's ``create`` to commit, then skips its own. A
        higher ``version`` runs ``create`` again (write it to bring any earlier version's tables up to date).
        """
        raise NotImplementedError(f"{type(self).__name__} does not create write schemas")

    notifies: bool = False
    """Whether :meth:`wait_for_append` blocks until an append (PostgreSQL's LISTEN) rather than sleeping."""

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


@contextlib.contextmanager
def committed(storage: Storage) -> Iterator[WriteSession]:
    """A write transaction of its own, committed when the block ends, rolled back if it raises."""
    session = storage.begin()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    session.commit()


@contextlib.contextmanager
def looked_at(storage: Storage) -> Iterator[WriteSession]:
    """A write transaction to read in (what only a write session reaches), rolled back whatever happens."""
    session = storage.begin()
    try:
        yield session
    finally:
        session.rollback()
