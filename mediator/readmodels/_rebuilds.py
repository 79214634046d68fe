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
from ._errors import ReadModelUnavailableError, UnknownProjectionError
from ._projections import Delivery
from ._versions import Track, finish, finish_rebuild

if TYPE_CHECKING:
    from ._engine import ReadModels

log = structlog.get_logger("mediator.readmodels")


class Rebuilds:
    """Starts, swaps in and retires the rebuilds of one engine's projections."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine

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
        upgrade = old_by < track.version  # nobody here feeds the old generation
        replayed = storage.checkpoint(track.name, new)
        behind = storage.head() - replayed
        if track.delivery is Delivery.INLINE:
            # Commands write the current generation inline, under the writer's lock: catch the rest of the
            # log up and swap under that lock too, once the background replay has left only a batch or so.
            if behind > engine.batch_size or not self._finish_inline(track, new, old, upgrade):
                return
        elif behind > 0 or (not upgrade and storage.checkpoint(track.name, old) < replayed):
            return  # not caught up; or the live generation still owes the replayed events their side effects
        elif not finish_rebuild(storage, track.name, new, old, live=not upgrade):  # atomically
            return
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
            live_from = storage.checkpoint(track.name, old) if upgrade else None
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
