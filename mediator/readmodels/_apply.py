"""The apply loop: each batch of events applied to a projection generation with its checkpoint, failures retried
with backoff, then parked with their reason; later events of a parked event's key wait behind it.

A healthy batch is applied with no savepoints (the fast path). When an event fails there, the whole batch
rolls back and is redone event by event with a savepoint each, so the failure counts once and the events
before it still commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from .._messages import qualname
from ._errors import DeadLetterNotFoundError, DeadLetterOrderError, StorageError, UndecodableEventError
from ._ports import BLOCKED, PARKED, DeadLetter, ProjectionSession, StoredEvent
from ._versions import Track

if TYPE_CHECKING:
    from ._engine import ReadModels

log = structlog.get_logger("mediator.readmodels")


class _Careful(Exception):
    """A projection failed on the fast path at ``position``; its batch is redone up to there."""

    def __init__(self, position: int) -> None:
        self.position = position


class Applier:
    """Applies events to projection generations for one engine."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine

    def set_up(self, track: Track, session: ProjectionSession) -> None:
        """Run the projection's ``setup`` in this session unless a committed session already has.

        The caller marks the generation ready only once its session commits: a
        rolled-back session takes its ``CREATE TABLE`` with it.
        """
        if session.generation not in track.ready:
            track.projection.setup(session)

    def run_batch(self, track: Track, generation: int, replaying: bool, *, ignore_backoff: bool = False) -> int:
        """Apply the next batch of one projection generation; return how many events it dealt with."""
        if not ignore_backoff and time.monotonic() < track.not_before:
            return 0
        try:
            handled = self._batch(track, generation, replaying, careful=False)
        except _Careful as failed:
            # An event failed and the whole batch was rolled back: redo it event by event, with savepoints.
            # That failure was the event's attempt; the redo stops before the event instead of trying it again.
            cause = failed.__cause__ if isinstance(failed.__cause__, Exception) else failed
            if self.engine.storage.transient(cause):  # the storage failed, not the event: nothing to count
                raise StorageError(f"Projection {track.name!r} lost its storage at position {failed.position}: "
                                   f"{qualname(type(cause))}: {cause}") from cause
            handled = self._batch(track, generation, replaying, careful=True, failed=(failed.position, cause))
        if handled:
            for listener in self.engine.on_applied:
                listener(track.name, handled)
            self.engine.progress.notify()
        return handled

    def _batch(self, track: Track, generation: int, replaying: bool, *, careful: bool,
               failed: tuple[int, Exception] | None = None) -> int:
        handled = 0
        with self.engine.storage.session(track.name, generation) as session:
            limit = self.engine.batch_size
            if replaying and track.upgrading is not None:
                # Replacing an older version's generation, which nobody here feeds: the events past its
                # checkpoint get their side effects from this replay, so they are applied as live ones.
                live_from = self.engine.storage.checkpoint(track.name, track.upgrading)
                replaying = session.position < live_from
                if replaying:
                    limit = min(limit, live_from - session.position)
            session.replaying = replaying
            self.set_up(track, session)
            events = self.engine.storage.read(session.position, limit)
            blocked = {letter.key for letter in session.dead_letters() if letter.key is not None}
            if careful or blocked:
                for stored in events:
                    if failed is not None and stored.position == failed[0]:
                        if not self._failed(track, session, stored, blocked, failed[1]):
                            break
                    elif not self.deal_with(track, session, stored, blocked, careful):
                        break
                    session.advance(stored.position)
                    handled += 1
            else:
                handled = self._healthy_batch(track, session, events, blocked)
        track.ready.add(generation)
        if handled and self.engine.on_batch:
            for listener in self.engine.on_batch:
                listener(track.name, events[:handled])
        return handled

    def _healthy_batch(self, track: Track, session: ProjectionSession, events: list[StoredEvent],
                       blocked: set[str]) -> int:
        """The hot loop: decode and apply each event of a batch with nothing parked, no savepoints.

        Anything unusual (an unknown type, an old version to upcast, a failure) goes
        the general way, through :meth:`_deal_with`.
        """
        handlers = track.projection.handlers
        registered = self.engine.types.entries()
        decoders: dict[str, Callable[[str], Any] | None] = {}
        for stored in events:
            position, _event_id, type_name, version, data, key, _recorded_at, _meta = stored  # cheaper than 5 lookups
            entry = registered.get(type_name)
            if entry is None or entry.version != version or (blocked and key in blocked):
                self.deal_with(track, session, stored, blocked, careful=False)
                continue
            apply = handlers.get(entry.cls)
            if apply is None:
                continue
            decode = decoders.get(type_name)
            if decode is None:
                decode = decoders[type_name] = self.engine.types.decoder(entry)
            try:
                event = decode(data)
            except UndecodableEventError:
                self.deal_with(track, session, stored, blocked, careful=False)
                continue
            try:
                apply(event, session)
            except Exception as exc:
                raise _Careful(position) from exc
        if events:
            session.advance(events[-1].position)
        return len(events)

    def deal_with(self, track: Track, session: ProjectionSession, stored: StoredEvent, blocked: set[str],
                   careful: bool = True) -> bool:
        """Apply one event, or park it; ``False`` means stop the batch here and retry later.

        Not ``careful``, the event is applied with no savepoint (the fast path for a
        healthy batch); if it fails, :class:`_Careful` rolls the batch back.
        """
        event_type = self.engine.types.named(stored.type_name)
        if event_type is not None and event_type not in track.projection.handlers:
            return True
        if stored.key is not None and stored.key in blocked:
            self._park(session, stored, BLOCKED, f"waits behind an earlier parked event with key {stored.key!r}", 0)
            return True
        try:
            event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
        except UndecodableEventError as exc:
            self._park(session, stored, PARKED, str(exc), 1)
            if stored.key is not None:
                blocked.add(stored.key)
            return True
        apply = track.projection.handlers[type(event)]
        if not careful:
            try:
                apply(event, session)
            except Exception as exc:
                raise _Careful(stored.position) from exc
            return True
        try:
            with session.savepoint():
                apply(event, session)
        except Exception as exc:
            return self._failed(track, session, stored, blocked, exc)
        track.attempts.pop((session.generation, stored.position), None)
        return True

    def _failed(self, track: Track, session: ProjectionSession, stored: StoredEvent, blocked: set[str],
                exc: Exception) -> bool:
        """Count a failed attempt: back off and stop the batch (``False``), or park the event at the last.

        A failure of the storage itself (a dropped connection, a deadlock) is not the event's fault: it is
        raised as :class:`StorageError`, the batch rolls back, and the runner tries again without counting it.
        """
        if self.engine.storage.transient(exc):
            raise StorageError(f"Projection {track.name!r} lost its storage at position {stored.position}: "
                               f"{qualname(type(exc))}: {exc}") from exc
        attempt_key = (session.generation, stored.position)
        attempts = track.attempts.get(attempt_key, 0) + 1
        if attempts < self.engine.max_attempts:
            track.attempts[attempt_key] = attempts
            track.not_before = time.monotonic() + min(self.engine.backoff * 2 ** (attempts - 1), 30.0)
            log.warning("projection failed, will retry", projection=track.name, position=stored.position,
                        attempt=attempts, error_type=qualname(type(exc)), error=str(exc))
            return False
        track.attempts.pop(attempt_key, None)
        self._park(session, stored, PARKED, f"{qualname(type(exc))}: {exc}", attempts)
        if stored.key is not None:
            blocked.add(stored.key)
        return True

    def _park(self, session: ProjectionSession, stored: StoredEvent, status: str, reason: str, attempts: int) -> None:
        session.park(DeadLetter(session.name, session.generation, stored.position, stored.event_id,
                                stored.type_name, stored.key, reason, attempts, status))
        log.error("event parked", projection=session.name, position=stored.position, status=status, reason=reason)

    def release(self, name: str, position: int, *, apply_first: bool) -> int:
        """Retry (``apply_first``) or skip the parked event at ``position``, then apply those waiting behind it."""
        track = self.engine._tracks[name]
        generation = self.engine.storage.current_generation(name)
        self.engine.versions.check(name, generation)  # never another version's handlers on this generation
        applied = 0
        with self.engine.storage.session(name, generation) as session:
            letters = {letter.position: letter for letter in session.dead_letters()}
            if position not in letters:
                raise DeadLetterNotFoundError(name, position)
            first = letters[position]
            earlier = [p for p, letter in letters.items() if p < position and first.key is not None
                       and letter.key == first.key]
            if earlier:
                raise DeadLetterOrderError(name, position, min(earlier))
            queue = [first] + [
                letter for p, letter in sorted(letters.items())
                if p > position and first.key is not None and letter.key == first.key
            ]
            for index, letter in enumerate(queue):
                if index == 0 and not apply_first:
                    session.release(letter.position)
                    continue
                (stored,) = self.engine.storage.read(letter.position - 1, 1)
                try:
                    event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
                    apply = track.projection.handlers.get(type(event))
                    if apply is not None:  # a type registered since, that this projection does not handle: done
                        with session.savepoint():
                            apply(event, session)
                except Exception as exc:
                    session.park(attrs.evolve(letter, status=PARKED, attempts=letter.attempts + 1,
                                              reason=f"{qualname(type(exc))}: {exc}"))
                    for later in queue[index + 1:]:
                        session.park(attrs.evolve(later, status=BLOCKED))
                    break
                session.release(letter.position)
                applied += 1
        return applied
