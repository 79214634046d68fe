"""The read-model engine's facade: :class:`ReadModels` holds the storage, the event types and the projections,
and hands each job to the module that does it.

- writing: the unit of work and the outbox (:mod:`._unit_of_work`);
- applying events, retrying and parking (:mod:`._apply`);
- projection versions and generations (:mod:`._versions`);
- rebuilds and swaps (:mod:`._rebuilds`);
- consistency tokens and waiting for them (:mod:`._tokens`);
- the runner thread (:mod:`._runner`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import structlog

from .. import Kind, Scope
from .._messages import IdempotentCommand, qualname
from ._apply import Applier
from ._errors import ProjectionConfigError, RebuildRefusedError, UnknownProjectionError
from ._health import Health
from ._idempotency import Idempotency
from ._live import LiveHub
from ._ports import PARKED, DeadLetter, Storage, StoredEvent
from ._processes import Processes, ProcessManager
from ._projections import Delivery, Projection
from ._rebuilds import Rebuilds
from ._runner import Runner
from ._schedules import Schedules
from ._serialization import EventTypes
from ._tables import Table, table_name
from ._tokens import Progress, ReadYourWrites
from ._unit_of_work import SyncReadModels, UnitOfWork, Writer
from ._versions import Share, Track, Versions

R = TypeVar("R")

if TYPE_CHECKING:
    from .. import Mediator, Registry

log = structlog.get_logger("mediator.readmodels")


@attrs.frozen
class Lag:
    """How far one projection generation is behind the head of the log, parked and blocked events counted.

    A projection with a parked event has not applied it, nor what waits behind it: ``applied`` stops before
    the earliest, and the behind figures count from there, so a degraded projection never looks current.
    """

    projection: str
    generation: int
    rebuilding: bool
    checkpoint: int
    positions_behind: int
    """From the head of the log back to :attr:`applied`."""
    seconds_behind: float
    """The age of the oldest event not applied yet (0 when none is)."""
    parked: int
    """Events that failed, parked (retried on a schedule)."""
    blocked: int = 0
    """Events waiting behind a parked event of their key."""
    applied: int = 0
    """The position up to which every event has been applied."""
    oldest_parked_seconds: float = 0.0
    """The age of the oldest parked or blocked event."""
    health: str = "ok"
    """``ok``; ``parked`` (it has dead letters); ``stalled`` (its events fail alike: its store is failing);
    ``holding`` (an event failed with nothing after it yet to tell its fault from the projection's). The last
    two are known only in the process that runs the projection."""
    error: str | None = None
    """Why it is stalled or holding, in that process."""
    partition: int | None = None
    """Of a partitioned projection: which partition the row is about (each has its checkpoint and dead letters)."""


class ReadModels:
    """The engine: storage, event types, projections and how each is delivered.

    Args:
        storage: the backend (:class:`~mediator.readmodels.sqlite.SqliteStorage`, for tests
            :class:`~mediator.readmodels.memory.MemoryStorage`).
        types: the registered event types.
        batch_size: events a background projection applies per transaction.
        max_attempts: quick tries of a parked event (the first failure included) before the slow schedule.
        backoff: seconds before the first quick retry of a parked event, and before a stalled projection or a
            held event is tried again; doubled each time, capped at ``max_backoff``.
        max_backoff: the longest wait between two quick tries, and between two tries of a stalled projection.
        heal_interval: seconds before the first try of the slow schedule; doubled each time, capped at an hour.
        heal_attempts: tries of the slow schedule; after those, a parked event waits for an operator.
        stall_limit: seconds a projection may stall at the same event before that event is taken for poison after
            all (events of different keys failing alike in a row look like an outage).
        poll_interval: how often an idle runner runs its projections anyway (for retries, and rebuilds started
            by other processes).
        watch_interval: how often an idle runner looks at the head of the log for events committed by other
            processes (one cheap query); commits in this process wake it at once.
        retire_after: seconds a replaced generation is kept after a rebuild swaps in its successor,
            for queries that looked up the old one just before the swap.
        standby_interval: with leases (PostgreSQL), the shortest time between two looks of a runner that holds
            none of its projections: it takes over a dead runner's within about this, and does not query the
            database on every append meanwhile.
        idempotency_ttl: seconds an idempotent command's record answers its repeats (a day by default); after
            that its key may be used again, and the runner deletes the record.
        clock: the wall clock (seconds since the epoch) for idempotency records and scheduled commands; the
            testing kit's :class:`~mediator.testing.Clock` moves it by hand.
        live_interval: the longest time before a subscription (``mediator.subscribe(query)``) sees a change applied
            by another process (this process's runner wakes subscriptions at once); see :attr:`live`.
    """

    def __init__(self, storage: Storage, types: EventTypes, *, batch_size: int = 500, max_attempts: int = 5,
                 backoff: float = 0.05, max_backoff: float = 5.0, heal_interval: float = 60.0, heal_attempts: int = 10,
                 stall_limit: float = 300.0, poll_interval: float = 0.2, watch_interval: float = 0.002,
                 retire_after: float = 5.0, standby_interval: float = 0.05, idempotency_ttl: float = 86_400.0,
                 clock: Callable[[], float] = time.time, live_interval: float = 0.01) -> None:
        if not idempotency_ttl > 0:
            raise ProjectionConfigError(f"idempotency_ttl={idempotency_ttl!r}: a number of seconds above 0.")
        self.storage = storage
        self.types = types
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.heal_interval = heal_interval
        self.heal_attempts = heal_attempts
        self.stall_limit = stall_limit
        self.poll_interval = poll_interval
        self.watch_interval = watch_interval
        self.retire_after = retire_after
        self.standby_interval = standby_interval
        self.idempotency_ttl = idempotency_ttl
        self.clock = clock
        self.expire_keys_every = 60.0
        """Seconds between two deletions of expired idempotency records by a running runner."""
        self._next_key_expiry = 0.0
        self.lag_log_interval = 60.0
        """Seconds between two lag lines of a running runner."""
        self._listen()
        self._tracks: dict[str, Track] = {}
        self._partitions: dict[str, Track] = {}
        """The partitions of partitioned projections, by the names they keep their checkpoints under."""
        self.versions = Versions(self)
        self.applier = Applier(self)
        self.rebuilds = Rebuilds(self)
        self.writer = Writer(self)
        self.idempotency = Idempotency(self)
        self.schedules = Schedules(self)
        self.processes = Processes(self)
        self._next_schedule_look = 0.0
        self.progress = Progress(self)
        self.health = Health(self)
        """The readiness rules and their check (``engine.health.ready_when(...)``, ``engine.health.check()``)."""
        self.live = LiveHub(self, live_interval)
        """The change feed of subscription queries: ``engine.live.close()`` ends them all (at shutdown)."""
        self._runner = Runner("mediator-readmodels", self._run_round, self._idle, self._round_failed,
                              self._release_leases)
        self._running = False
        self._runs: Delivery | None = None
        self._only: frozenset[str] | None = None
        self._head = 0
        self._next_lag_log = 0.0

    def _listen(self) -> None:
        """Make the engine's lists of listeners (empty)."""
        self.on_applied: list[Callable[[str, int], None]] = []
        """Called with (projection name, events dealt with) after each committed batch (e.g. for metrics)."""
        self.on_batch: list[Callable[[str, list[StoredEvent]], None]] = []
        """Called with (projection name, the events of the batch) after each committed batch (e.g. for tracing)."""
        self.on_batch_start: list[Callable[[str], None]] = []
        """Called with the projection's name as a batch begins (e.g. to time it, for tracing)."""
        self.event_metadata: list[Callable[[], dict[str, str]]] = []
        """Called at each commit; what they return is stored with the events (e.g. the trace context)."""

    # -- set-up -------------------------------------------------------------------------

    def add(self, projection: Projection, *, delivery: Delivery = Delivery.BACKGROUND) -> ReadModels:
        """Add a projection, delivered as ``delivery``."""
        if projection.name in self._tracks:
            raise ProjectionConfigError(f"A projection named {projection.name!r} is already added.")
        if delivery is Delivery.INLINE and not self.storage.inline_for(projection.name):
            raise ProjectionConfigError(
                f"Projection {projection.name!r} cannot be inline: this storage keeps read models apart from the "
                "write database (e.g. SQLite with two files); deliver it in the background or use one file."
            )
        partitions = projection.partitions
        if partitions > 1 and delivery is Delivery.INLINE:
            raise ProjectionConfigError(
                f"Projection {projection.name!r} has {partitions} partitions and cannot be inline: an inline "
                "projection is applied in each command's transaction already; deliver it in the background or by "
                "workers.")
        if partitions > 1 and not self.storage.partitioned_for(projection.name):
            raise ProjectionConfigError(
                f"Projection {projection.name!r} has {partitions} partitions, which its read store cannot run at once "
                "without losing additions to shared rows; keep it in a SQL store (SQLite, PostgreSQL).")
        for event_type in projection.handlers:
            self.types.entry(event_type)  # raises with the fix if it is not registered
        track = self._tracks[projection.name] = Track(projection, delivery)
        if partitions > 1:
            track.lanes = [Track(projection, delivery, partition=p) for p in range(partitions)]
            self._partitions.update((lane.name, lane) for lane in track.lanes)
        self.writer.add(track)
        return self

    def install(self, registry: Registry) -> None:
        """Wire the engine into ``registry``: the scoped ``UnitOfWork``, this engine, its behaviours (the unit of
        work's, read-your-writes', and idempotency's around and inside the unit of work's, for idempotent commands
        only), and its change feed (:attr:`live`), which ``subscribe(query)`` waits on.

        Call it after the behaviours that should run outside the transaction
        (logging, validation): ``SyncReadModels`` is added here, innermost so far.
        """

        def unit_of_work(scope: Scope) -> UnitOfWork:
            return UnitOfWork.of(scope, self)

        registry.scoped(UnitOfWork, unit_of_work)
        registry.singleton(ReadModels, instance=self)
        registry.behaviour(self.idempotency.claims, applies_to=IdempotentCommand)
        registry.behaviour(SyncReadModels(self), applies_to=Kind.COMMAND)
        # Innermost, even of behaviours registered later: a repeat is answered only once it passes what the first
        # had to (an authorization check registered after install must not be skipped by a replay).
        registry.behaviour(self.idempotency, applies_to=IdempotentCommand, innermost=True)
        registry.behaviour(ReadYourWrites(self), applies_to=Kind.QUERY)
        registry.change_feed(self.live)

    def schedulable(self, command_type: type, *, name: str | None = None) -> ReadModels:
        """Let handlers schedule ``command_type`` (``uow.schedule(...)``), stored under ``name`` (its qualified name
        by default: give a stable one, as for events, if the class may move)."""
        self.schedules.register(command_type, name)
        return self

    def add_process(self, manager: ProcessManager[Any]) -> ReadModels:
        """Add a process manager: the runner (given :meth:`dispatch_with`) takes its steps, each in one write
        transaction with the commands it sends (see :class:`~mediator.readmodels.ProcessManager`)."""
        if manager.name in self._tracks:
            raise ProjectionConfigError(f"{manager.name!r} is the name of a projection; give the process manager "
                                        "another.")
        self.processes.add(manager)
        return self

    def dispatch_with(self, mediator: Mediator) -> ReadModels:
        """Dispatch scheduled commands and process managers' commands through ``mediator`` (the sync one
        ``registry.build()`` made): the runner and the testing kit's ``settle`` run them only once this is
        given."""
        self.schedules.mediator = mediator
        return self

    @property
    def sharing(self) -> bool:
        """Whether more than one projection runs here, so what one reads and decodes is kept for the others."""
        return len(self._tracks) + len(self._partitions) > 1

    @property
    def projections(self) -> dict[str, Projection]:
        """The projections by name."""
        return {name: track.projection for name, track in self._tracks.items()}

    def delivery(self, name: str) -> Delivery:
        """How projection ``name`` is delivered."""
        return self._track(name).delivery

    def _track(self, name: str) -> Track:
        track = self._tracks.get(name)
        if track is None:
            raise UnknownProjectionError([name], self._tracks)
        return track

    def _runnable(self, name: str) -> Track:
        """The track of projection ``name``, or of the partition that keeps its checkpoint under ``name``."""
        track = self._tracks.get(name) or self._partitions.get(name)
        if track is None:
            raise UnknownProjectionError([name], self._tracks)
        return track

    # -- positions: of a partitioned projection, its partitions' -------------------------------------------

    def checkpoint(self, name: str, generation: int) -> int:
        """The checkpoint of projection ``name``'s ``generation``: of a partitioned one, the lowest of its
        partitions' (every event up to it has been dealt with by every partition)."""
        return min(self.positions(name, generation))

    def positions(self, name: str, generation: int) -> tuple[int, ...]:
        """The checkpoints of ``generation``: its own, or each partition's, by the split that built it."""
        if name not in self._tracks:
            return (self.storage.checkpoint(name, generation),)
        return tuple(self.storage.checkpoint(each, generation)
                     for each in self.versions.checkpoint_names(name, generation))

    def applied(self, name: str, generation: int) -> int:
        """The position up to which every event of ``generation`` has been applied (parked events hold it back):
        of a partitioned projection, the lowest of its partitions'."""
        if name not in self._tracks:
            return self.storage.applied(name, generation)
        return min(self.storage.applied(each, generation)
                   for each in self.versions.checkpoint_names(name, generation))

    def level(self, name: str, generation: int) -> int | None:
        """The checkpoint of ``generation`` if every partition of it stands there (``None`` if they differ)."""
        found = set(self.positions(name, generation))
        return found.pop() if len(found) == 1 else None

    def _mirror(self, track: Track, current: int | None = None) -> None:
        """Make a partitioned projection's partitions' generation records follow its own (after a swap): its
        partitions' dead letters are read by them."""
        storage = self.storage
        current = storage.current_generation(track.base) if current is None else current
        if track.mirrored == current:
            return
        for lane in track.lanes:
            if storage.current_generation(lane.name) != current:
                with storage.generations(lane.name) as records:
                    records.set_current(current)
        track.mirrored = current

    # -- reading --------------------------------------------------------------------------

    def table(self, projection: str, table: str) -> str:
        """The storage name of a read-model table that queries should read now (the current generation).

        Raises :class:`ReadModelUnavailableError` while that generation was built by another version of the
        projection than this code's: an older one being replaced, or a newer one this code cannot read.
        """
        generation = self.storage.current_generation(projection)
        self.versions.check(projection, generation)
        return table_name(projection, table, generation)

    def _current(self, table: Table[Any]) -> str:
        """The storage name of ``table`` in the generation queries read now (checked as :meth:`table` is)."""
        projection = table.projection
        if projection is None or projection not in self._tracks:
            raise UnknownProjectionError([str(projection)], self._tracks)
        generation = self.storage.current_generation(projection)
        self.versions.check(projection, generation)
        return table.physical(generation)

    def get(self, table: Table[R], key: Any) -> R | None:
        """The row of a typed read-model ``table`` with ``key`` (a tuple for a key of several fields), for
        queries: the current generation, as committed. Inside ``consistent(token)`` a query that declares the
        projection in ``reads`` has waited for it already.

        Raises :class:`ReadModelUnavailableError` while the generation was built by another version of the
        projection than this code's.
        """
        physical = self._current(table)
        values = self.storage.load_row(table, physical, table.stored_key(key))
        return None if values is None else typing.cast(R, table.codec.decode(values))

    def find(self, table: Table[R], where: Mapping[str, Any] | None = None, *, order_by: str | Sequence[str] = (),
             limit: int | None = None, offset: int = 0) -> list[R]:
        """The rows of ``table`` matching ``where`` (key or lookup fields, each a value or a
        :class:`Range`), ordered by ``order_by`` (``"-field"`` for descending) and then the key, paged by
        ``limit`` and ``offset``: the same answer on every backend.

        Raises:
            TableQueryError: for a field that is not the table's key or one of its lookups.
        """
        query = table.query(where, order_by, limit, offset)
        decode = table.codec.decode
        return [decode(values) for values in self.storage.select_rows(table, self._current(table), query)]

    def count(self, table: Table[Any], where: Mapping[str, Any] | None = None) -> int:
        """How many rows of ``table`` match ``where`` (as :meth:`find`)."""
        query = table.query(where)
        return self.storage.count_rows(table, self._current(table), query)

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Reads of this thread inside the block (:meth:`get`, :meth:`find`, :meth:`count`) see one commit, so a
        query reading several tables (a page and its total, a dashboard's days and categories) never mixes a
        batch that committed between two of its reads. Nested blocks join the outer one."""
        return self.storage.snapshot()

    def check_available(self, projection: str) -> None:
        """Raise :class:`ReadModelUnavailableError` unless this code can read ``projection``'s current generation."""
        self.versions.check(projection, self.storage.current_generation(projection))

    def built_by(self, name: str, generation: int, *, record: bool = True) -> int:
        """The projection version that built ``generation`` (see :meth:`Versions.built_by`)."""
        return self.versions.built_by(name, generation, record=record)

    def wait(self, token: int, names: Iterable[str] | None = None, *, timeout: float = 5.0) -> bool:
        """Wait until the projections ``names`` (default: all) have reached ``token``; ``False`` on timeout."""
        return self.progress.wait(token, list(self._tracks) if names is None else names, timeout)

    def reached(self, token: int, names: Iterable[str]) -> dict[str, int]:
        """The checkpoints of ``names`` that are still below ``token`` (empty when all have reached it)."""
        return self.progress.behind(token, names)

    def runs_here(self, name: str) -> bool:
        """Whether this process's runner thread applies projection ``name`` (so it announces its progress)."""
        return (self._runner.alive and self._tracks[name].delivery is self._runs
                and (self._only is None or name in self._only))

    # -- running projections ----------------------------------------------------------------

    def catch_up(self, *, deliveries: Iterable[Delivery] = (Delivery.BACKGROUND, Delivery.WORKER),
                 ignore_backoff: bool = False, finishing: bool = False, leased: bool = False,
                 only: Collection[str] | None = None, stop: threading.Event | None = None) -> int:
        """Run every selected projection (and rebuild) until none has more to do now; return events dealt with.

        ``finishing`` also runs the live generation of each projection being rebuilt, whatever its delivery:
        a rebuild is swapped in only once the live generation has caught up with it. ``leased`` runs only the
        projections this process holds (or can take) the storage's lock on, as runners do: with several
        runner processes, each projection is run by one at a time. Without it, projection transactions of
        different processes still take turns, so nothing is applied twice. ``only`` limits it to those names;
        ``stop``, once set, ends it after the current batch.
        """
        wanted = set(deliveries)
        total = 0
        progressed = True
        while progressed and not (stop is not None and stop.is_set()):
            progressed = False
            for track in list(self._tracks.values()):
                if only is not None and track.name not in only:
                    continue
                if stop is not None and stop.is_set():
                    break
                if track.retired:
                    self.rebuilds.retire(track)
                if track.lanes:
                    self._mirror(track)
                    # Only a runner of the projection's delivery takes a share; another helps with a rebuild only.
                    shared = leased and self.storage.leases and track.delivery in wanted
                    runs = self._shared(track) if shared else self._unshared(track, leased)
                else:
                    runs = [track]
                rebuilding = False
                for run in runs:
                    done, replayed = self._run_track(run, wanted, leased=leased, finishing=finishing,
                                                     ignore_backoff=ignore_backoff)
                    total += done
                    progressed = progressed or done > 0
                    rebuilding = rebuilding or replayed
                if rebuilding:  # else there was no rebuild to swap in when to_run looked: the next pass sees one
                    self.rebuilds.maybe_swap(track)
        return total

    def _run_track(self, track: Track, wanted: set[Delivery], *, leased: bool, finishing: bool,
                   ignore_backoff: bool) -> tuple[int, bool]:
        """A batch of each generation of ``track`` (a projection, or a partition of one) this runner runs now;
        return the events dealt with and whether a rebuild is under way."""
        generations = self.versions.to_run(track)
        if not generations or (track.delivery not in wanted and not any(replaying for _g, replaying in generations)):
            if leased and self.storage.holds(track.name):
                self.storage.release(track.name)  # taken to help with a rebuild, now over
            return 0, False
        if leased and not self.storage.acquire(track.name):
            return 0, False  # another process runs it (a lease is taken only on what this runner would run)
        rebuilding = any(replaying for _g, replaying in generations)
        total = 0
        for generation, replaying in generations:
            # A leased runner helping with a rebuild holds the projection: nobody else can run its live
            # generation, which must catch up before the swap. So it runs that too, until the swap.
            if not replaying and track.delivery not in wanted and not ((finishing or leased) and rebuilding):
                continue
            total += self.applier.run_batch(track, generation, replaying, ignore_backoff=ignore_backoff)
        return total, rebuilding

    def _unshared(self, track: Track, leased: bool) -> list[Track]:
        """Every partition of ``track``, this runner holding no slot of it (it does not run its delivery)."""
        share = track.share
        if leased and share.slot is not None:
            self.storage.release(Share.slot_name(track.base, share.slot))
            share.slot, share.occupied, share.next_look = None, [], 0.0
        return track.lanes

    def _shared(self, track: Track) -> list[Track]:
        """The partitions of ``track`` this runner runs now, beside the runners of other processes (see
        :class:`_Share`); it gives up the leases of the others it holds."""
        storage, lanes = self.storage, track.lanes
        share = track.share
        now = time.monotonic()
        if now >= share.next_look:
            share.next_look = now + self.standby_interval
            slots = [Share.slot_name(track.base, k) for k in range(len(lanes))]
            if share.slot is None or not storage.holds(slots[share.slot]):
                share.slot = next((k for k, slot in enumerate(slots) if storage.acquire(slot)), None)
            occupied = []
            for k, slot in enumerate(slots):
                if k == share.slot:
                    occupied.append(k)
                elif storage.acquire(slot):  # free: nobody is there (given back at once)
                    storage.release(slot)
                else:
                    occupied.append(k)
            if occupied != share.occupied:
                log.info("partitions shared anew", projection=track.base, runners=len(occupied), slot=share.slot)
            share.occupied = occupied
        mine: list[Track] = []
        if share.slot is not None:  # else more runners than partitions: this one stands by
            rank, count = share.occupied.index(share.slot), len(share.occupied)
            mine = [lane for lane in lanes if lane.partition is not None and lane.partition % count == rank]
        for lane in lanes:
            if lane not in mine and storage.holds(lane.name):
                storage.release(lane.name)  # another runner's share now
        return mine

    def start(self, delivery: Delivery = Delivery.BACKGROUND, *, only: Collection[str] | None = None) -> None:
        """Start a runner thread for the projections delivered as ``delivery`` (and any rebuild).

        ``only`` names the projections this runner may take (default: all): several worker processes can
        split the projections between them, and a second worker given the same names stands by for the first.
        """
        if self._running:
            raise RuntimeError("The runner is already started; stop() it first.")
        if only is not None:
            unknown = sorted(set(only) - set(self._tracks))
            if unknown:
                raise UnknownProjectionError(unknown, self._tracks)
        self._only = None if only is None else frozenset(only)
        self._runs = delivery
        self._next_lag_log = time.monotonic() + self.lag_log_interval  # first lag line after one interval
        self._runner.start()
        self._running = True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the runner thread after its current batch."""
        self._running = False
        self._runner.stop(timeout)

    def wake(self) -> None:
        """Have this process's runner look at the log now rather than at its next poll (after a commit here)."""
        if self._running:
            self._runner.wake()

    def __enter__(self) -> ReadModels:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_round(self) -> bool:
        if time.monotonic() >= self._next_lag_log:
            self._next_lag_log = time.monotonic() + self.lag_log_interval
            with contextlib.suppress(Exception):  # a storage outage is logged by the round below
                self.log_lag()
        if time.monotonic() >= self._next_key_expiry:
            self._next_key_expiry = time.monotonic() + self.expire_keys_every
            with contextlib.suppress(Exception):  # as above
                self.expire_idempotency_keys()
        assert self._runs is not None
        fired = self._fire_schedules()
        self._head = self.storage.head()  # before the catch-up: a commit after this read wakes the idle wait
        stepped = self.processes.run(leased=True)
        applied = self.catch_up(deliveries=(self._runs,), leased=True, only=self._only, stop=self._runner.stopping)
        return applied > 0 or fired > 0 or stepped > 0

    def _fire_schedules(self) -> int:
        """Fire the scheduled commands that are due (a batch at most), if this engine dispatches them; the time
        of the next one is read again every poll, for those other processes scheduled."""
        schedules = self.schedules
        if schedules.mediator is None or not schedules.registered:  # nothing here can ever be scheduled
            return 0
        if time.monotonic() >= self._next_schedule_look:
            self._next_schedule_look = time.monotonic() + self.poll_interval
            schedules.look_again()
        return schedules.fire_due(limit=self.batch_size) if schedules.due() else 0

    def expire_idempotency_keys(self) -> int:
        """Delete the idempotency records past their ``idempotency_ttl`` (a running runner does it every
        :attr:`expire_keys_every` seconds); return how many. An expired record never answers, deleted or not."""
        gone = self.storage.expire_keys(self.clock())
        if gone:
            log.info("expired idempotency keys deleted", count=gone)
        return gone

    def _round_failed(self, exc: Exception) -> float:
        # A storage outage: log, wait, try again; never die silently.
        log.error("projection runner failed, retrying", error_type=qualname(type(exc)), error=str(exc))
        return self.poll_interval

    def _release_leases(self) -> None:
        # This runner's leases go with it (only its projections' and process managers': a relay may share it).
        slots = [Share.slot_name(name, k) for name, track in self._tracks.items() for k in range(len(track.lanes))]
        for track in self._tracks.values():
            track.share = Share()
        for name in [*self._tracks, *self._partitions, *slots,
                     *(track.session_name for track in self.processes.tracks.values())]:
            with contextlib.suppress(Exception):  # a storage that is down has freed its locks already
                if self.storage.holds(name):
                    self.storage.release(name)

    def _idle(self) -> None:
        """Wait for a commit in this process (a wake-up), a new head of the log from another, or the next poll."""
        head, wakeup, stopping = self._head, self._runner.wakeup, self._runner.stopping
        deadline = time.monotonic() + self._idle_wait()
        if self.storage.notifies:  # LISTEN: blocks until some process appends; our own commits notify too
            if self._standing_by():
                # Holding none of its projections, this runner wakes only to see whether a lease came free:
                # not on every append (under load, every standby would query the database each time).
                stopping.wait(min(self.standby_interval, max(0.0, deadline - time.monotonic())))
            while not wakeup.is_set() and not stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or self.storage.wait_for_append(min(left, 0.05)):
                    break
            wakeup.clear()
            return
        self._runner.idle_until(lambda: self.storage.head() != head, deadline - time.monotonic(),
                                self.watch_interval)

    def _standing_by(self) -> bool:
        """Whether this runner holds the lease of none of the projections it may run (it stands by for them)."""
        if not self.storage.leases:
            return False
        mine = [run.name for name, track in self._tracks.items()
                if track.delivery is self._runs and (self._only is None or name in self._only) for run in track.runs()]
        return bool(mine) and not any(self.storage.holds(name) for name in mine)

    def _idle_wait(self) -> float:
        """How long an idle runner may wait: until its next poll, a backoff's end or a parked event's retry."""
        now, wall = time.monotonic(), time.time()
        runs = [run for track in self._tracks.values() for run in track.runs()]
        due = [t.not_before - now for t in runs if t.not_before > now]
        due += [t.next_retry - wall for t in runs if t.next_retry is not None]
        if self.schedules.mediator is not None and self.schedules.next_due is not None:
            due.append(self.schedules.next_due - self.clock())
        return max(0.0, min([self.poll_interval, *due]))

    # -- operations: lag, rebuilds, dead letters ----------------------------------------------------

    def lag(self) -> list[Lag]:
        """Lag per projection generation (a rebuild shows as a second, ``rebuilding`` row)."""
        storage = self.storage
        head = storage.head()
        now = time.time()
        rows = []
        for base in self._tracks.values():
            current = storage.current_generation(base.name)
            rebuild = storage.rebuilding(base.name)
            for track in base.runs():  # each partition of a partitioned projection has a row
                letters = storage.all_dead_letters(track.name)
                parked = sum(1 for letter in letters if letter.status == PARKED)
                oldest = self._age(letters[0].position, now) if letters else 0.0
                health, error = self._health(track, bool(letters))
                for generation, rebuilding in [(current, False)] + ([(rebuild, True)] if rebuild is not None else []):
                    applied = storage.applied(track.name, generation)
                    first_behind = self._age(applied + 1, now) if applied < head else 0.0
                    counts = (0, 0, 0.0) if rebuilding else (parked, len(letters) - parked, oldest)
                    rows.append(Lag(base.name, generation, rebuilding, storage.checkpoint(track.name, generation),
                                    head - applied, first_behind, counts[0], counts[1], applied, counts[2],
                                    "ok" if rebuilding else health, None if rebuilding else error, track.partition))
        return rows

    def _age(self, position: int, now: float) -> float:
        found = self.storage.read(position - 1, 1)
        return round(now - found[0].recorded_at, 3) if found else 0.0

    @staticmethod
    def _health(track: Track, degraded: bool) -> tuple[str, str | None]:
        if track.stall is not None:
            return "stalled", f"{track.stall.error_type}: {track.stall.error}"
        if track.holding is not None:
            return "holding", track.holding.error
        return ("parked" if degraded else "ok"), None

    def log_lag(self) -> list[Lag]:
        """Log one structlog line per projection generation with its lag; return the rows."""
        rows = self.lag()
        for row in rows:
            log.info("projection lag", projection=row.projection, generation=row.generation,
                     rebuilding=row.rebuilding, checkpoint=row.checkpoint, positions_behind=row.positions_behind,
                     seconds_behind=row.seconds_behind, parked=row.parked, blocked=row.blocked, health=row.health)
        return rows

    def rebuild(self, name: str) -> int:
        """Start rebuilding ``name`` from position 0 into a fresh generation; return that generation.

        Queries keep reading the current generation until the new one has caught
        up, then it is swapped in and the old one torn down.
        """
        return self.rebuilds.start(name)

    @property
    def rebuilding(self) -> list[str]:
        """Names of the projections being rebuilt."""
        return [name for name in self._tracks if self.storage.rebuilding(name) is not None]

    def finish_rebuilds(self) -> None:
        """Run every rebuild in this thread until it is swapped in and its old generation torn down.

        The teardown waits ``retire_after`` seconds, for queries that looked the old generation up.

        Raises:
            RebuildRefusedError: when a verified rebuild differs from the live generation where its version does
                not say it changes (it stays held: accept it with ``rebuilds.accept(name)``, or cancel it).
        """
        while owned := self.rebuilds.own():
            self.catch_up(deliveries=(), finishing=True)
            refused = [self.rebuilds.checks[name] for name in owned if self.rebuilds.refused(name)]
            if refused:
                raise RebuildRefusedError(refused[0])
        while any(track.retired for track in self._tracks.values()):
            due = min(d for track in self._tracks.values() for _g, d in track.retired)
            time.sleep(max(0.0, due - time.monotonic()))
            self.catch_up(deliveries=())

    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Parked and blocked events of the current generations (a partition's named by its partition:
        ``orders#2``)."""
        if name is not None:
            track = self._track(name)
            if track.lanes:
                letters = [letter for lane in track.lanes for letter in self.storage.all_dead_letters(lane.name)]
                return sorted(letters, key=lambda letter: letter.position)
        return self.storage.all_dead_letters(name)

    def retry(self, name: str, position: int) -> int:
        """Apply the parked event at ``position`` again, then those waiting behind it; return how many applied."""
        return self.applier.release(self._partition_at(name, position), position, apply_first=True)

    def retry_all(self, name: str | None = None) -> dict[str, tuple[int, int]]:
        """Retry every parked event now, of projection ``name`` or of all: per projection, how many events applied
        and how many stay parked."""
        names = [self._track(name).name] if name is not None else list(self._tracks)
        found = {}
        for each in names:
            lanes = self._tracks[each].lanes
            counts = [self.applier.release_all(lane.name) for lane in lanes] if lanes else [
                self.applier.release_all(each)]
            found[each] = (sum(applied for applied, _ in counts), sum(still for _, still in counts))
        return found

    def skip(self, name: str, position: int) -> int:
        """Drop the parked event at ``position`` unapplied; apply those waiting behind it; return how many applied."""
        return self.applier.release(self._partition_at(name, position), position, apply_first=False)

    def _partition_at(self, name: str, position: int) -> str:
        """Where the parked event at ``position`` of projection ``name`` is kept: ``name``, or its partition's."""
        track = self._runnable(name)
        for letter in self.dead_letters(name) if track.lanes else ():
            if letter.position == position:
                return letter.projection
        return name
