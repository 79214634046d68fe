"""Rebuilds: a projection replayed from position 0 into a fresh generation, swapped in once caught up.

Queries read the current generation meanwhile. The swap is atomic (one transaction over the projection's
generation records) and waits for the live generation to have dealt with everything the replay has, so no
event's side effects are lost; the old generation is torn down after a grace period, for queries that looked
it up just before the swap.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from ._apply import FAILED
from ._errors import ReadModelUnavailableError, RebuildCancelError, RebuildNotFoundError, UnknownProjectionError
from ._projections import Delivery
from ._verify import RebuildCheck, compare
from ._versions import Track, finish, finish_rebuild

if TYPE_CHECKING:
    from ._engine import ReadModels

log = structlog.get_logger("mediator.readmodels")


class Rebuilds:
    """Starts, swaps in and retires the rebuilds of one engine's projections."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.checks: dict[str, RebuildCheck] = {}
        """The last comparison of each projection's rebuild with its live generation, made in this process
        (projections with ``verify_rebuilds``)."""
        self._passed: set[tuple[str, int]] = set()
        """Rebuilds (projection, generation) compared and found fit to swap in, or accepted by an operator."""
        self._refused: dict[tuple[str, int], tuple[int, ...]] = {}
        """Rebuilds refused, with the positions they were compared at (not compared again until one moves)."""

    # -- checked rebuilds ----------------------------------------------------------------------------

    def _under_way(self, name: str) -> tuple[int, int]:
        """(the rebuild's generation, the live one) of ``name``.

        Raises:
            RebuildNotFoundError: if no rebuild of it is under way.
        """
        self.engine._track(name)
        new = self.engine.storage.rebuilding(name)
        if new is None:
            raise RebuildNotFoundError(name)
        return new, self.engine.storage.current_generation(name)

    def holds_at(self, track: Track, generation: int) -> int | None:
        """Where the rebuild ``generation`` of ``track`` must wait to be compared (an upgrade, verified, not yet
        found fit): the live generation's checkpoint; ``None`` if it need not wait."""
        if not track.projection.verify_rebuilds or track.upgrading is None or (track.base, generation) in (
                self._passed):
            return None
        storage, versions = self.engine.storage, self.engine.versions
        if versions.layout(track.base, track.upgrading, record=False) != track.projection.partitions:  # in a session
            return None  # another split built the live generation: no position to compare both at (see _verified)
        live = storage.checkpoint(track.name, track.upgrading)  # a partition is held at its own live checkpoint
        if storage.checkpoint(track.name, generation) > live:
            # Past it already: the process that took it there found it fit, or was told to accept it (a verdict
            # is known where it was reached; this one may have restarted since, or be another runner).
            self._passed.add((track.base, generation))
            return None
        return live

    def check(self, name: str) -> RebuildCheck | None:
        """Compare the rebuild of ``name`` with its live generation now (whether or not the projection verifies its
        rebuilds); ``None`` while the two are at different positions of the log.

        Raises:
            RebuildNotFoundError: if no rebuild of it is under way.
        """
        new, old = self._under_way(name)
        versions = self.engine.versions
        found = compare(self.engine, name, old, new, versions.built_by(name, old) < versions.built_by(name, new))
        if found is not None:
            self.checks[name] = found
        return found

    def refused(self, name: str) -> bool:
        """Whether this process compared the rebuild of ``name`` under way and refused it (it waits for an
        operator)."""
        new = self.engine.storage.rebuilding(name)
        return new is not None and (name, new) in self._refused and (name, new) not in self._passed

    def accept(self, name: str) -> None:
        """Let the rebuild of ``name`` be swapped in whatever its comparison found (an operator's decision), by
        this process: call it where the rebuild runs (``rebuild NAME --accept-differences`` runs it itself); once
        this process has taken the rebuild past the live generation's position, every runner lets it go on."""
        new, _ = self._under_way(name)
        self._passed.add((name, new))
        log.warning("rebuild accepted without its check", projection=name, generation=new)
        self.engine.wake()

    def cancel(self, name: str) -> int:
        """Stop the rebuild of ``name``: the live generation stays as it is, and the rebuild's is dropped (after
        the grace period, by the runner that held it; at once by :meth:`drop_cancelled` otherwise). Return the
        cancelled generation.

        Raises:
            RebuildNotFoundError: if no rebuild of it is under way.
            RebuildCancelError: if it is an upgrade to this code's version (which cannot serve the old one).
        """
        track = self.engine._track(name)
        storage, versions = self.engine.storage, self.engine.versions
        with storage.generations(name) as generations:
            new = generations.rebuilding()
            if new is None:
                raise RebuildNotFoundError(name)
            live_by = versions.built_by(name, generations.current())
            if live_by < track.version:
                raise RebuildCancelError(name, live_by, track.version)
            generations.set_rebuilding(None)
        track.retired.append((new, time.monotonic() + self.engine.retire_after))
        self.checks.pop(name, None)
        log.info("rebuild cancelled", projection=name, generation=new)
        self.engine.progress.notify()
        return new

    def drop_cancelled(self, name: str) -> None:
        """Drop the tables of the cancelled rebuilds of ``name`` now (a command that cancelled and ends)."""
        track = self.engine._track(name)
        track.retired = [(generation, 0.0) for generation, _ in track.retired]
        self.retire(track)

    def _verified(self, track: Track, new: int, old: int, upgrade: bool) -> bool:
        """Whether the rebuild may be swapped in as far as its check goes (compared now if it must be)."""
        if not track.projection.verify_rebuilds or (track.name, new) in self._passed:
            return True
        engine = self.engine
        if engine.versions.layout(track.name, old) != track.projection.partitions:
            # Split anew: no partition of the rebuild stands where one of the live generation does, so the two
            # cannot be compared at one position. Swapped in unchecked, and said so.
            log.warning("rebuild not compared: the live generation was built with another number of partitions",
                        projection=track.name, generation=new)
            self._passed.add((track.name, new))
            return True
        at, live_at = engine.positions(track.name, new), engine.positions(track.name, old)
        if upgrade and any(mine > theirs for mine, theirs in zip(at, live_at, strict=True)):
            # Let past the live one (a partition held at its live checkpoint moves on only once found fit).
            self._passed.add((track.name, new))
            return True
        if self._refused.get((track.name, new)) == at:
            return False  # compared here already and refused: only an operator (or more events) changes that
        found = compare(self.engine, track.name, old, new, upgrade)
        if found is None:
            return False  # the generations are at different positions: compared when they are not
        self.checks[track.name] = found
        if found.unexpected:
            self._refused[(track.name, new)] = at
            log.error("rebuild refused: it differs from the live generation where its version does not say it "
                      "changes", projection=track.name, generation=new, check=found.summary())
            return False
        self._passed.add((track.name, new))
        if not found.same:
            log.warning("rebuild differs from the live generation" if upgrade else "rebuild repairs drift",
                        projection=track.name, generation=new, check=found.summary())
        return True

    def start(self, name: str) -> int:
        """Start rebuilding ``name`` into a fresh generation, or join the rebuild under way; return its generation."""
        engine = self.engine
        track = engine._tracks.get(name)
        if track is None:
            raise UnknownProjectionError([name], engine._tracks)
        storage, versions = engine.storage, engine.versions
        current = storage.current_generation(name)
        versions.check(name, current, outdated_ok=True)
        under_way = storage.rebuilding(name)
        older = under_way is not None and versions.built_by(name, under_way) < track.version
        # Joins a rebuild already under way, in any process, unless it is for an older version.
        generation = versions.claim(track, under_way if older else None, versions.built_by(name, current))
        built_by = versions.built_by(name, generation)
        if built_by != track.version:
            raise ReadModelUnavailableError(name, built_by, track.version)
        engine.wake()
        return generation

    def own(self) -> list[str]:
        """Names of the projections being rebuilt for this code's version (the ones it can finish)."""
        storage, versions = self.engine.storage, self.engine.versions
        return [name for name, track in self.engine._tracks.items()
                if (g := storage.rebuilding(name)) is not None and versions.built_by(name, g) == track.version
                and versions.built_by(name, storage.current_generation(name)) <= track.version]

    def retire(self, track: Track) -> None:
        """Tear down the replaced generations of ``track`` whose grace period is over."""
        storage = self.engine.storage
        now = time.monotonic()
        for generation, due in list(track.retired):
            if generation == storage.current_generation(track.name):  # never the one queries read
                track.retired.remove((generation, due))
            elif due <= now:
                with storage.session(track.name, generation) as session:
                    track.projection.teardown(session)
                    session.drop_tables(track.projection.tables)
                track.retired.remove((generation, due))

    def maybe_swap(self, track: Track) -> None:
        """Swap in the rebuild of ``track`` if it is this code's and has caught up."""
        engine = self.engine
        storage, versions = engine.storage, engine.versions
        new = storage.rebuilding(track.name)
        if new is None:
            return
        old = storage.current_generation(track.name)
        old_by = versions.built_by(track.name, old)
        if new == old or versions.built_by(track.name, new) != track.version or old_by > track.version:
            return  # swapped already; or a rebuild for another version, or over a newer one: not this code's
        # Nobody here feeds the old generation: built by an older version, or with another number of partitions.
        upgrade = old_by < track.version or versions.layout(track.name, old) != track.projection.partitions
        if upgrade and not self._verified(track, new, old, upgrade):
            return  # held at the live generation's checkpoint (see holds_at) until compared and found fit
        replayed = engine.checkpoint(track.name, new)  # of a partitioned projection: its partitions' lowest
        behind = storage.head() - replayed
        if track.delivery is Delivery.INLINE:
            # Commands write the current generation inline, under the writer's lock: catch the rest of the
            # log up and swap under that lock too, once the background replay has left only a batch or so.
            if behind > engine.batch_size or not self._finish_inline(track, new, old, upgrade):
                return
        elif behind > 0 or (not upgrade and engine.checkpoint(track.name, old) < replayed):
            return  # not caught up; or the live generation still owes the replayed events their side effects
        elif not upgrade and not self._verified(track, new, old, upgrade):
            return  # compared when both generations stand at the same position
        elif not finish_rebuild(storage, track.name, new, old, live=not upgrade):  # atomically
            return
        if track.lanes:
            engine._mirror(track, new)
        # A query may have looked up the old generation a moment ago: tear it down after a grace period.
        track.retired.append((old, time.monotonic() + engine.retire_after))
        log.info("projection rebuilt", projection=track.name, generation=new, version=track.version)
        engine.progress.notify()

    def _finish_inline(self, track: Track, new: int, old: int, upgrade: bool) -> bool:
        engine = self.engine
        storage = engine.storage
        session = storage.begin()
        try:
            projection_session = session.projection(track.name, new)
            projection_session.replaying = True
            # Under the writer's lock nothing moves the old generation: past its checkpoint, an upgrade's replay
            # is the only delivery these events get.
            live_from = engine.checkpoint(track.name, old) if upgrade else None
            blocked = {letter.key for letter in projection_session.dead_letters() if letter.key is not None}
            while events := storage.read(projection_session.position, engine.batch_size):
                for stored in events:
                    if live_from is not None:
                        projection_session.replaying = stored.position <= live_from
                    if engine.applier.deal_with(track, projection_session, stored, blocked) is FAILED:
                        session.rollback()  # a failing event: retry after its backoff
                        return False
                    projection_session.advance(stored.position)
            # Inline, the live generation is never behind: the writer's lock held every command's inline apply.
            if not finish(session.generations(track.name), new, old, live=False):
                session.rollback()
                return False
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return True
