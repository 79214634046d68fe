"""Projection versions and generations: the rules, written once for every backend.

Each read model lives in a *generation* (its own set of tables and its own checkpoint). A rebuild writes a
new generation beside the current one and swaps it in once it has caught up. Each generation records the
*version* of the projection code that built it: code of another version neither writes it nor reads it.

The storage offers primitives under its own lock (:class:`~mediator.readmodels.Generations`); the rules that
use them are the functions below, so a backend only stores and never decides.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs
import structlog

from ._errors import ReadModelUnavailableError
from ._ports import Generations, ReadStore, partition_name
from ._projections import Delivery, Projection, partition_of

if TYPE_CHECKING:
    from ._engine import ReadModels

log = structlog.get_logger("mediator.readmodels")


# -- the rules, on one projection's generation records, inside the storage's transaction -----------------------

def claim(records: Generations, version: int, replacing: int | None = None) -> int:
    """Start a rebuild into a new generation, built by projection ``version``, or join the one under way.

    With ``replacing``, a rebuild under way into that generation is abandoned for a new one (the engine does
    this to a rebuild started for an older version); a different rebuild under way is joined instead.

    Raises:
        ReadModelUnavailableError: claiming nothing, when the current generation was built by a newer version:
            older code never starts a rebuild over newer code's read model.
    """
    under_way = records.rebuilding()
    if under_way is not None and under_way != replacing:
        return under_way
    current_version = records.version(records.current())
    if current_version is not None and current_version > version:
        raise ReadModelUnavailableError(records.name, current_version, version)
    generation = max([1, *records.known()]) + 1  # never one that left anything behind, not even a checkpoint
    records.set_rebuilding(generation)
    records.add_version(generation, version)
    return generation


def finish(records: Generations, generation: int, old: int, *, live: bool) -> bool:
    """Swap ``generation`` in and end the rebuild, if it is still the rebuild and ``old`` still current.

    ``False`` (changing nothing) when another process finished or replaced it first, or, if ``live``, when
    ``old`` has not yet reached the checkpoint of ``generation``: events the replay applied before the live
    generation did have had no side effects yet, and the live generation must still deliver them. An upgrade,
    and an inline projection (whose live generation is never behind under the writer's lock), pass
    ``live=False``.
    """
    if records.rebuilding() != generation or records.current() != old:
        return False
    if live and records.checkpoint(old) < records.checkpoint(generation):
        return False
    records.set_current(generation)
    records.set_rebuilding(None)
    return True


def record(records: Generations, generation: int, version: int) -> int:
    """Record that ``version`` built ``generation`` unless one is recorded; return the one recorded.

    Generations made before versions were recorded get theirs this way, the first time they are looked at.
    """
    records.add_version(generation, version)
    recorded = records.version(generation)
    assert recorded is not None  # just added, in this transaction
    return recorded


# -- the same, each in a transaction of its own ----------------------------------------------------------------

def claim_rebuild(storage: ReadStore, name: str, version: int = 1, *, replacing: int | None = None) -> int:
    """:func:`claim` in a transaction of its own."""
    with storage.generations(name) as records:
        return claim(records, version, replacing)


def finish_rebuild(storage: ReadStore, name: str, generation: int, old: int, *, live: bool = True) -> bool:
    """:func:`finish` in a transaction of its own."""
    with storage.generations(name) as records:
        return finish(records, generation, old, live=live)


def record_version(storage: ReadStore, name: str, generation: int, version: int) -> int:
    """:func:`record` in a transaction of its own."""
    with storage.generations(name) as records:
        return record(records, generation, version)


def swap(storage: ReadStore, name: str, generation: int) -> None:
    """Make ``generation`` the one queries read, whatever rebuild is under way (for tools and tests)."""
    with storage.generations(name) as records:
        records.set_current(generation)


# -- the engine's side: which generations this code runs --------------------------------------------------------

@attrs.frozen
class Stall:
    """A projection that stopped because its events fail alike (its store is down, say), not one event."""

    error_type: str
    error: str
    since: float
    """When it stalled (seconds since the epoch)."""
    position: int
    """The first event it could not apply."""
    rounds: int = 1


@attrs.frozen
class Holding:
    """An event that failed with no other event to compare it with: held, not parked, until one is."""

    position: int
    attempts: int
    error: str


@attrs.define
class Share:
    """How this engine's runner shares a partitioned projection's partitions with the runners of other processes.

    Each runner holds one *slot* (a lease named ``orders#slot1``); every ``standby_interval`` it looks which slots
    are held, and takes the partitions whose number, modulo that count, is its slot's rank among them. A runner
    that joins or dies changes the count: the others give up or take partitions at their next look, and leases
    keep any partition from running twice meanwhile.
    """

    slot: int | None = None
    occupied: list[int] = attrs.field(factory=list)
    next_look: float = 0.0

    @staticmethod
    def slot_name(name: str, slot: int) -> str:
        """The lease a runner holds as slot ``slot`` of projection ``name``: ``orders#slot1``."""
        return partition_name(name, f"slot{slot}")


@attrs.define
class Track:
    """A projection as the engine runs it."""

    projection: Projection
    delivery: Delivery
    not_before: float = 0.0
    """While stalled or holding: no batch before this (monotonic time)."""
    stall: Stall | None = None
    holding: Holding | None = None
    next_retry: float | None = None
    """When the earliest of its parked events is due to be tried again (seconds since the epoch)."""
    ready: set[int] = attrs.field(factory=set)
    """Generations whose ``setup`` a committed session has run."""
    retired: list[tuple[int, float]] = attrs.field(factory=list)
    """Replaced generations to tear down, each once its grace period ends (monotonic time)."""
    upgrading: int | None = None
    """The current generation while it was built by an older version and a rebuild for this one replaces it."""
    partition: int | None = None
    """Of a partitioned projection's partition: its number (it applies the events whose keys map to it)."""
    lanes: list[Track] = attrs.field(factory=list)
    """Of a partitioned projection: its partitions, each run as a track of its own (the projection's own track
    keeps its generation records, rebuilds and retired generations)."""
    mirrored: int = 0
    """Of a partitioned projection: the current generation its partitions' records were last made to follow."""
    share: Share = attrs.field(factory=Share)
    """Of a partitioned projection: how this engine's runner shares its partitions with other processes'."""

    @property
    def name(self) -> str:
        """The name its checkpoint, dead letters and lease are kept under (``orders#2`` for a partition)."""
        if self.partition is None:
            return self.projection.name
        return partition_name(self.projection.name, self.partition)

    @property
    def base(self) -> str:
        """The projection's name: its generation records, versions and tables are kept under it."""
        return self.projection.name

    def runs(self) -> list[Track]:
        """What the runner runs: the partitions of a partitioned projection, else this track."""
        return self.lanes or [self]

    def owns(self, key: str | None) -> bool:
        """Whether this track applies the events with ordering ``key`` (a partition only its keys')."""
        return self.partition is None or partition_of(key, self.projection.partitions) == self.partition

    @property
    def version(self) -> int:
        return self.projection.version


def unrecorded_version(track: Track, checkpoint: int) -> int:
    """The version of a generation with none recorded: this code's if nothing was written to it, else 1 (made
    before versions were recorded)."""
    return track.version if checkpoint == 0 else 1


class Versions:
    """Which version built each generation (remembered: it never changes), and what this code may run."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.known: dict[tuple[str, int], int] = {}
        self.layouts: dict[tuple[str, int], int] = {}

    def layout(self, name: str, generation: int, *, record: bool = True) -> int:
        """How many partitions built ``generation`` of projection ``name`` (recorded once, then remembered).

        Kept in the generation records of ``<name>#partitions``, as a version is. A generation with none
        recorded was written by code without partitions if its own checkpoint moved, else it is this code's.
        A generation built with another count than this code's is rebuilt, as one built by another version is:
        its partitions' checkpoints do not say what a different split has applied.
        """
        known = self.layouts.get((name, generation))
        if known is None:
            storage, track = self.engine.storage, self.engine._tracks.get(name)
            records = partition_name(name, "partitions")
            recorded = storage.recorded_version(records, generation)
            if recorded is None:
                mine = 1 if track is None else track.projection.partitions
                guess = 1 if storage.checkpoint(name, generation) > 0 else mine
                if not record:
                    return guess
                recorded = record_version(storage, records, generation, guess)
            known = self.layouts[name, generation] = recorded
        return known

    def checkpoint_names(self, name: str, generation: int) -> list[str]:
        """The names ``generation``'s checkpoints are kept under: ``name``, or each of its partitions'."""
        count = self.layout(name, generation, record=False)
        return [name] if count == 1 else [partition_name(name, p) for p in range(count)]

    def built_by(self, name: str, generation: int, *, record: bool = True) -> int:
        """The projection version that built ``generation`` (recorded once, then remembered).

        A generation with no version recorded was either never written (this code's version builds it) or
        written before versions were recorded (version 1). That is recorded then, unless ``record`` is false
        (queries, which must not write): they get the same answer and ask again next time.
        """
        known = self.known.get((name, generation))
        if known is None:
            storage, track = self.engine.storage, self.engine._tracks.get(name)
            recorded = storage.recorded_version(name, generation)
            if recorded is None:
                guess = 1 if track is None else unrecorded_version(track, self.engine.checkpoint(name, generation))
                if not record:
                    return guess
                recorded = record_version(storage, name, generation, guess)
            known = self.known[name, generation] = recorded
        return known

    def check(self, name: str, generation: int, *, outdated_ok: bool = False) -> None:
        """Raise :class:`ReadModelUnavailableError` unless this code may read (or, ``outdated_ok``, replace)
        ``generation``."""
        track = self.engine._tracks.get(name)
        if track is not None:
            built_by = self.built_by(name, generation, record=False)
            if built_by > track.version or (built_by < track.version and not outdated_ok):
                raise ReadModelUnavailableError(name, built_by, track.version)

    def to_run(self, track: Track) -> list[tuple[int, bool]]:
        """The generations of ``track`` this code runs now, each with whether it is a replay.

        A generation built by another version of the projection is never run. A current one built by an older
        version is replaced by a rebuild for this one; a rebuild under way for an older version is replaced
        too. Once a newer version's rebuild or generation exists, this code stands down from the projection
        altogether: whatever it applied now, the newer code applies again as live.
        """
        name, storage = track.base, self.engine.storage
        # The rebuild first: a swap between the two reads then shows as the rebuild already current (ignored
        # below), never as an outdated current generation with no rebuild under way.
        rebuilding = storage.rebuilding(name)  # in storage: a rebuild started by any process
        current = storage.current_generation(name)
        if rebuilding == current:
            rebuilding = None
        built_by = self.built_by(name, current)
        rebuilt_by = None if rebuilding is None else self.built_by(name, rebuilding)
        if built_by > track.version or (rebuilt_by is not None and rebuilt_by > track.version):
            track.upgrading = None
            return []  # newer code has it
        partitions = track.projection.partitions
        track.upgrading = current if built_by < track.version or self.layout(name, current) != partitions else None
        older_rebuild = rebuilt_by is not None and (rebuilt_by < track.version or (
            rebuilding is not None and self.layout(name, rebuilding) != partitions))  # claimed by another split
        if older_rebuild or (track.upgrading is not None and rebuilding is None):
            try:
                rebuilding = self.claim(track, rebuilding if older_rebuild else None, built_by)
            except ReadModelUnavailableError:  # newer code swapped its generation in since we looked
                return []
            if self.built_by(name, rebuilding) != track.version:
                return []  # a newer version's claim got there first
        out = [] if track.delivery is Delivery.INLINE or track.upgrading is not None else [(current, False)]
        if rebuilding is not None:
            out.append((rebuilding, True))
        return out

    def claim(self, track: Track, abandoning: int | None, built_by: int) -> int:
        """Claim a rebuild for this code's version, replacing ``abandoning`` (an older version's) if given."""
        storage, name = self.engine.storage, track.base
        generation = claim_rebuild(storage, name, track.version, replacing=abandoning)
        self.layout(name, generation)  # recorded as this code's split before any partition writes it
        if self.built_by(name, generation) < track.version:
            # Joined a rebuild an older version claimed since we looked: replace that one instead.
            abandoning = generation
            generation = claim_rebuild(storage, name, track.version, replacing=abandoning)
        if self.built_by(name, generation) != track.version:  # a newer version's claim got there first
            return generation
        if built_by != track.version or abandoning is not None:
            log.info("projection changed: rebuilding it", projection=name, version=track.version,
                     built_by=built_by, generation=generation)
        if abandoning is not None and abandoning != generation:
            # A replay for an older version: dropped after the grace period, as a swapped-out generation is.
            track = self.engine._tracks[name]  # a partition's projection's track tears generations down
            track.retired.append((abandoning, time.monotonic() + self.engine.retire_after))
        return generation
