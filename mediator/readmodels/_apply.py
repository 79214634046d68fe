"""The apply loop: each batch of events applied to a projection generation with its checkpoint; failures told
apart, poison events parked at once and healed later, outages waited out.

A healthy batch is applied with no savepoints (the fast path). When an event fails there, the batch rolls back
and is redone event by event with a savepoint each (the failure counts once; it is not applied again). A failed
event is then judged by what the events after it do:

- the storage failing (a dropped connection, a deadlock) is no event's fault: the batch rolls back and the
  runner tries again, counting nothing;
- an event of another key applying after it shows the failure is the event's: it is *parked* with its reason,
  the later events of its key wait behind it (``BLOCKED``), and every other key goes on. A parked event is
  retried by the runner: quickly at first (``max_attempts`` tries, ``backoff`` doubling), then on a slow schedule
  (``heal_interval`` doubling, ``heal_attempts`` tries), then it waits for an operator (``retry``/``skip``);
- an event of another key failing alike (the same error type), with nothing applied between, shows the
  projection itself is failing (its store is down): the batch stops before the first failure, nothing is parked,
  the position is kept, and the projection is reported stalled and retried with a capped backoff until an event
  applies again;
- with nothing after it to tell, the event is *held*: the batch stops before it and tries again after a backoff,
  or as soon as another event arrives to compare it with. Nothing is parked for an outage with no traffic.
"""

from __future__ import annotations

import bisect
import operator
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from .._messages import qualname
from ._errors import DeadLetterNotFoundError, DeadLetterOrderError, StorageError
from ._ports import BLOCKED, PARKED, DeadLetter, ProjectionSession, StoredEvent
from ._projections import partition_of
from ._versions import Holding, Stall, Track

if TYPE_CHECKING:
    from ._engine import ReadModels

log = structlog.get_logger("mediator.readmodels")


class _Careful(Exception):
    """A projection failed on the fast path at ``position``; its batch is redone up to there."""

    def __init__(self, position: int) -> None:
        self.position = position


def _describe(exc: BaseException) -> str:
    return f"{qualname(type(exc))}: {exc}"


def _behind(key: str | None) -> str:
    return f"waits behind an earlier parked event with key {key!r}"


_STRETCHES_KEPT = 4
"""Stretches of the log an engine keeps for its other projections (each a batch, ``batch_size`` events at most)."""
_position = operator.attrgetter("position")
_DECODED_KEPT = 20_000
"""Decoded events an engine keeps for its other projections (forgotten all at once past this many)."""

APPLIED, SKIPPED, FAILED, WAITS = object(), object(), object(), object()
"""What :meth:`Applier.deal_with` did with an event."""


@attrs.define
class _Unjudged:
    """A careful batch's failures not judged yet, and the events of their keys waiting behind them; nothing is
    advanced past the first."""

    failures: list[tuple[StoredEvent, Exception]] = attrs.field(factory=list)
    waiting: list[StoredEvent] = attrs.field(factory=list)

    def keys(self) -> set[str]:
        return {stored.key for stored, _exc in self.failures if stored.key is not None}

    def take(self, count: int) -> tuple[list[tuple[StoredEvent, Exception]], list[StoredEvent]]:
        """Remove the first ``count`` failures, with the events waiting behind their keys."""
        taken, self.failures = self.failures[:count], self.failures[count:]
        keys = {stored.key for stored, _exc in taken if stored.key is not None}
        behind = [stored for stored in self.waiting if stored.key in keys]
        self.waiting = [stored for stored in self.waiting if stored.key not in keys]
        return taken, behind


class Applier:
    """Applies events to projection generations for one engine."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self._owned = 0
        """Of the last batch of a partition: the events of its own keys it dealt with."""
        self._last_failure: Exception = Exception()
        """The error of the last event :meth:`deal_with` answered ``FAILED`` for."""
        self._stretches: list[tuple[int, list[StoredEvent], set[tuple[str, int]]]] = []
        """The last stretches of the log read (the position each was read after, its events, and the projection
        generations it was handed to), for the other projections of the engine (see :meth:`_read`)."""
        self._decoded: dict[int, tuple[str, object]] = {}
        """Recently decoded events by position, with their ids: the projections of an engine read the same stretch
        of the log one after another, and each event is decoded once for all of them (events are immutable
        messages; a projection that changed one would change it for the others too)."""

    def set_up(self, track: Track, session: ProjectionSession) -> None:
        """Run the projection's ``setup`` in this session unless a committed session already has.

        The caller marks the generation ready only once its session commits: a
        rolled-back session takes its ``CREATE TABLE`` with it.
        """
        if session.generation not in track.ready:
            session.create_tables(track.projection.tables)
            track.projection.setup(session)

    # -- batches -----------------------------------------------------------------------------------

    def run_batch(self, track: Track, generation: int, replaying: bool, *, ignore_backoff: bool = False) -> int:
        """Apply the next batch of one projection generation (and its parked events that are due); return how
        many events it dealt with."""
        if not ignore_backoff and time.monotonic() < track.not_before and not self._news_for(track):
            return 0  # stalled, or holding an event with nothing new to compare it with: waiting out a backoff
        try:
            try:
                handled = self._batch(track, generation, replaying, careful=False, ignore_backoff=ignore_backoff)
            except _Careful as failed:
                # An event failed and the whole batch was rolled back: redo it event by event, with savepoints.
                # That failure was the event's attempt; the redo does not try the event again.
                cause = failed.__cause__ if isinstance(failed.__cause__, Exception) else failed
                if self.engine.storage.transient(cause):  # the storage failed, not the event: nothing to count
                    raise self._lost_storage(track, failed.position, cause) from cause
                handled = self._batch(track, generation, replaying, careful=True, failed=(failed.position, cause),
                                      ignore_backoff=ignore_backoff)
        except StorageError as lost:
            self._stall(track, lost, position=None)
            raise
        if handled:
            # A partition counts only its own keys' events, though its checkpoint passed the others'.
            counted = handled if track.partition is None else self._owned
            for listener in self.engine.on_applied:
                listener(track.base, counted)
            self.engine.progress.notify()
        return handled

    def _read(self, after: int, limit: int, reader: tuple[str, int]) -> list[StoredEvent]:
        """Up to ``limit`` events of the log after position ``after``, for projection generation ``reader``: from a
        stretch another projection of this engine read a moment ago when it covers ``after``, else from storage.

        A read answers every event from ``after`` to the last it returns (positions are handed out in commit
        order, and the log is only appended to), so a later read from inside that stretch is answered by it
        exactly, though there may be more events by now: the next batch reads them. A stretch is served once to
        each reader: one that asks again (its batch rolled back, an event held) reads storage, and sees what
        came since.
        """
        if not self.engine.sharing:
            return self.engine.storage.read(after, limit)
        for start, events, served in reversed(self._stretches):
            if start <= after < events[-1].position and reader not in served:
                served.add(reader)
                first = bisect.bisect_right(events, after, key=_position)
                return events[first:first + limit]
        events = self.engine.storage.read(after, limit)
        if events:
            self._stretches = [*self._stretches, (after, events, {reader})][-_STRETCHES_KEPT:]
        return events

    def _news_for(self, track: Track) -> bool:
        """Whether a held event now has later events to be compared with (a stall waits its backoff out)."""
        holding = track.holding
        return holding is not None and track.stall is None and self.engine.storage.head() > holding.position

    def _delivered(self, track: Track, old: int) -> int:
        """Up to where generation ``old`` (being replaced, not fed) delivered the events ``track`` applies: its
        own checkpoint there, or, where ``old`` was built with another split, the lowest of its checkpoints (events
        after it may have had their side effects already, and have them again: at least once, never lost)."""
        engine = self.engine
        # Read, never recorded, here: this runs inside the batch's session, which holds the writer's lock.
        if engine.versions.layout(track.base, old, record=False) == track.projection.partitions:
            return engine.storage.checkpoint(track.name, old)
        return engine.checkpoint(track.base, old)

    def _limit(self, track: Track, generation: int, session: ProjectionSession, replaying: bool) -> tuple[int, bool]:
        """How many events the batch may read, and whether they are replayed (their side effects skipped)."""
        engine = self.engine
        limit = engine.batch_size
        if track.partition is not None:  # a partition applies about a share of what it reads: read as many more
            limit *= track.projection.partitions
        if replaying and track.upgrading is not None:
            # Replacing an older version's generation, which nobody here feeds: the events past its
            # checkpoint get their side effects from this replay, so they are applied as live ones.
            live_from = self._delivered(track, track.upgrading)
            replaying = session.position < live_from
            if replaying:
                limit = min(limit, live_from - session.position)
            held = engine.rebuilds.holds_at(track, generation)
            if held is not None:  # a verified upgrade waits there to be compared with the live generation
                limit = max(0, min(limit, held - session.position))
        elif replaying and track.partition is not None:
            # A partition's replay never passes its live generation: the swap may then come whenever every
            # partition has caught up, from any process, and each replayed event has had its side effects.
            live = engine.storage.checkpoint(track.name, engine.storage.current_generation(track.base))
            limit = max(0, min(limit, live - session.position))
        return limit, replaying

    def _batch(self, track: Track, generation: int, replaying: bool, *, careful: bool, ignore_backoff: bool,
               failed: tuple[int, Exception] | None = None) -> int:
        engine = self.engine
        for starting in engine.on_batch_start:
            starting(track.base)
        with engine.storage.session(track.name, generation) as session:
            limit, replaying = self._limit(track, generation, session, replaying)
            session.replaying = replaying
            self.set_up(track, session)
            handled = 0
            letters = session.dead_letters()
            if letters:
                healed = self._heal(track, session, letters, ignore_backoff)
                if healed:
                    handled += healed
                    letters = session.dead_letters()
            track.next_retry = min((lt.retry_at for lt in letters if lt.retry_at is not None), default=None)
            blocked = {letter.key for letter in letters if letter.key is not None}
            events = self._read(session.position, limit, (track.name, generation)) if limit else []
            if careful:
                done = self._careful_batch(track, session, events, blocked, failed)
            else:
                done = self._healthy_batch(track, session, events, blocked)
            handled += done
        track.ready.add(generation)
        batch = events[:done]
        if track.partition is not None and (engine.on_batch or engine.on_applied):  # counted only when listened to
            batch = [stored for stored in batch if track.owns(stored.key)]
            self._owned = handled - done + len(batch)
        if batch and engine.on_batch:
            for listener in engine.on_batch:
                listener(track.base, batch)
        return handled

    def _healthy_batch(self, track: Track, session: ProjectionSession, events: list[StoredEvent],
                       blocked: set[str]) -> int:
        """The hot loop: decode and apply each event of a batch, no savepoints.

        Anything unusual (an unknown type, an old version to upcast, undecodable data, a key waiting behind a
        parked event) goes the general way, through :meth:`deal_with`; a failure rolls the batch back
        (:class:`_Careful`) for the careful redo.
        """
        handlers = track.projection.handlers
        mine, partitions = track.partition, track.projection.partitions
        # A partition applies its keys' events; its checkpoint passes the others' (each partition has its own).
        ours = events if mine is None else [e for e in events if partition_of(e.key, partitions) == mine]
        registered = self.engine.types.entries()
        decoders: dict[str, Callable[[str], Any]] = {}
        # Kept for the engine's other projections: none to keep it for when this is its only one.
        decoded: dict[int, tuple[str, object]] | None = self._decoded if self.engine.sharing else None
        if decoded is not None and len(decoded) > _DECODED_KEPT:
            decoded.clear()
        for stored in ours:
            position, event_id, type_name, version, data, key, _recorded_at, _meta = stored  # cheaper than 5 lookups
            entry = registered.get(type_name)
            if entry is None or entry.version != version or (blocked and key in blocked):
                if self.deal_with(track, session, stored, blocked) is FAILED:
                    raise _Careful(position) from self._last_failure
                continue
            apply = handlers.get(entry.cls)
            if apply is None:
                continue
            if decoded is not None and (known := decoded.get(position)) is not None and known[0] == event_id:
                event = known[1]
            else:
                decode = decoders.get(type_name)
                if decode is None:
                    decode = decoders[type_name] = self.engine.types.decoder(entry)
                try:
                    event = decode(data)
                except Exception:  # undecodable: parked by the general way, which says why
                    self.deal_with(track, session, stored, blocked)
                    continue
                if decoded is not None:
                    decoded[position] = (event_id, event)
            try:
                apply(event, session)
            except Exception as exc:
                raise _Careful(position) from exc
        if events:
            session.advance(events[-1].position)
            track.holding = None
            self._recovered(track)
        return len(events)

    def _careful_batch(self, track: Track, session: ProjectionSession, events: list[StoredEvent],
                       blocked: set[str], failed: tuple[int, Exception] | None) -> int:
        """Apply event by event with savepoints, judging each failure by the events after it (see the module);
        return how many events the checkpoint moved past."""
        unjudged = _Unjudged()
        for stored in events:
            if failed is not None and stored.position == failed[0]:
                outcome: object = FAILED
                self._last_failure = failed[1]
            else:
                outcome = self.deal_with(track, session, stored, blocked, unjudged.keys())
            if outcome is WAITS:
                unjudged.waiting.append(stored)
                continue
            if outcome is FAILED:
                if not self._judge(track, session, stored, self._last_failure, blocked, unjudged):
                    break  # stalled: nothing advanced past the first failure
                if unjudged.failures:
                    continue  # judged later: nothing advances past it meanwhile
            if outcome is APPLIED and unjudged.failures:  # another key applies: the failures are their events'
                self._park_pending(track, session, unjudged.take(len(unjudged.failures)), blocked)
            if not unjudged.failures:
                session.advance(stored.position)
        else:
            if unjudged.failures:
                self._hold(track, unjudged.failures[0])
            else:
                track.holding = None
        return sum(1 for stored in events if stored.position <= session.position)

    def _judge(self, track: Track, session: ProjectionSession, stored: StoredEvent, exc: Exception,
               blocked: set[str], unjudged: _Unjudged) -> bool:
        """Take a failed event into ``unjudged``; ``False`` if it shows the projection failing (it stalls)."""
        if self.engine.storage.transient(exc):
            raise self._lost_storage(track, stored.position, exc) from exc
        if self._alike(track, unjudged.failures, exc, stored.key):
            if not self._forced(track, unjudged.failures, stored):
                first = unjudged.failures[0][0] if unjudged.failures else stored
                self._stall(track, exc, position=first.position)
                return False
            # Stalled at this event for too long: take the first failure for poison, judge the next anew.
            if not unjudged.failures:
                self._park_pending(track, session, ([(stored, exc)], []), blocked)
                return True
            self._park_pending(track, session, unjudged.take(1), blocked)
        unjudged.failures.append((stored, exc))
        return True

    def deal_with(self, track: Track, session: ProjectionSession, stored: StoredEvent, blocked: set[str],
                  held: Collection[str] = ()) -> object:
        """Apply one event with a savepoint, or park it if it waits behind its key or cannot be decoded.

        Returns what happened: ``APPLIED``, ``SKIPPED`` (not this projection's type, or parked here: ``BLOCKED``
        behind a key in ``blocked``, or undecodable), ``FAILED`` (its error in ``self._last_failure``, for the
        caller to judge), or ``WAITS`` for an event of a key in ``held`` (a failure not judged yet: the caller
        parks it once its key's fate is known).
        """
        if not track.owns(stored.key):
            return SKIPPED  # another partition's key
        event_type = self.engine.types.named(stored.type_name)
        if event_type is not None and event_type not in track.projection.handlers:
            return SKIPPED
        if stored.key is not None:
            if stored.key in held:
                return WAITS
            if stored.key in blocked:
                self._park(session, stored, BLOCKED, _behind(stored.key), 0, None)
                return SKIPPED
        try:
            event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
        except Exception as exc:  # anything a malformed row can raise: it is parked, never fatal
            # Undecodable now; retried on the slow schedule, so it heals once the code that reads it is deployed.
            attempts = self.engine.max_attempts
            self._park(session, stored, PARKED, str(exc), attempts, self._schedule(attempts))
            if stored.key is not None:
                blocked.add(stored.key)
            return SKIPPED
        apply = track.projection.handlers[type(event)]
        try:
            with session.savepoint():
                apply(event, session)
        except Exception as exc:
            self._last_failure = exc
            return FAILED
        self._recovered(track)
        return APPLIED

    def _alike(self, track: Track, pending: list[tuple[StoredEvent, Exception]], exc: Exception,
               key: str | None) -> bool:
        """Whether ``exc`` shows the projection failing rather than its event: it continues a stall of the same
        error type, or another key's event just failed alike with nothing applied between."""
        kind = type(exc)
        if track.stall is not None and track.stall.error_type == qualname(kind):
            return True
        return any(type(error) is kind and (key is None or other.key != key) for other, error in pending)

    def _forced(self, track: Track, pending: list[tuple[StoredEvent, Exception]], stored: StoredEvent) -> bool:
        """Whether a stall has held at this event's position past ``stall_limit``: then the first pending event
        is taken for poison after all, so that poison events failing alike in a row cannot stop a projection for
        ever (each such round parks one of them)."""
        stall = track.stall
        first = (pending[0][0] if pending else stored).position
        return stall is not None and stall.position == first and time.time() - stall.since >= self.engine.stall_limit

    def _park_pending(self, track: Track, session: ProjectionSession,
                      judged: tuple[list[tuple[StoredEvent, Exception]], list[StoredEvent]], blocked: set[str]) -> None:
        """Park failures found to be their events' fault, and the events of their keys that waited behind."""
        pending, waiting = judged
        holding = track.holding
        for stored, exc in pending:
            attempts = holding.attempts + 1 if holding is not None and holding.position == stored.position else 1
            self._park(session, stored, PARKED, _describe(exc), attempts, self._schedule(attempts))
            if stored.key is not None:
                blocked.add(stored.key)
        for stored in waiting:
            self._park(session, stored, BLOCKED, _behind(stored.key), 0, None)
        track.holding = None

    def _hold(self, track: Track, first: tuple[StoredEvent, Exception]) -> None:
        stored, exc = first
        holding = track.holding
        attempts = holding.attempts + 1 if holding is not None and holding.position == stored.position else 1
        track.holding = Holding(stored.position, attempts, _describe(exc))
        track.not_before = time.monotonic() + min(self.engine.backoff * 2 ** (attempts - 1), self.engine.max_backoff)
        if attempts == 1:
            log.warning("projection failed; holding the event until another shows whether it or the projection is "
                        "at fault", projection=track.name, position=stored.position,
                        error_type=qualname(type(exc)), error=str(exc))

    def _stall(self, track: Track, error: Exception, *, position: int | None) -> None:
        previous = track.stall
        rounds = 1 if previous is None else previous.rounds + 1
        since = time.time() if previous is None else previous.since
        at = position if position is not None else (previous.position if previous is not None else -1)
        track.stall = Stall(qualname(type(error)), str(error), since, at, rounds)
        track.holding = None
        track.not_before = time.monotonic() + min(self.engine.backoff * 2 ** (rounds - 1), self.engine.max_backoff)
        if previous is None:
            log.warning("projection stalled: its events fail alike, so the projection, not an event, is failing; "
                        "nothing is parked, retrying", projection=track.name, position=at,
                        error_type=qualname(type(error)), error=str(error))

    def _recovered(self, track: Track) -> None:
        if track.stall is not None:
            log.info("projection recovered", projection=track.name, stalled_for=round(time.time() - track.stall.since,
                                                                                       3))
            track.stall = None
            track.not_before = 0.0

    def _lost_storage(self, track: Track, position: int, cause: BaseException) -> StorageError:
        return StorageError(f"Projection {track.name!r} lost its storage at position {position}: {_describe(cause)}")

    def _schedule(self, attempts: int) -> float | None:
        """When a parked event that failed ``attempts`` times is tried next (seconds since the epoch), or ``None``
        once it has had every try (see :meth:`delay`)."""
        delay = self.delay(attempts)
        return None if delay is None else time.time() + delay

    def delay(self, attempts: int) -> float | None:
        """Seconds before something that failed ``attempts`` times is tried again, or ``None`` once it has had
        every try: quick retries first, then the slow schedule, then an operator's. Parked events and scheduled
        commands follow it alike."""
        engine = self.engine
        if attempts < engine.max_attempts:
            return float(min(engine.backoff * 2.0 ** (attempts - 1), engine.max_backoff))
        if attempts < engine.max_attempts + engine.heal_attempts:
            return float(min(engine.heal_interval * 2.0 ** (attempts - engine.max_attempts), 3600.0))
        return None

    def _park(self, session: ProjectionSession, stored: StoredEvent, status: str, reason: str, attempts: int,
              retry_at: float | None) -> None:
        session.park(DeadLetter(session.name, session.generation, stored.position, stored.event_id,
                                stored.type_name, stored.key, reason, attempts, status, retry_at))
        log.error("event parked", projection=session.name, position=stored.position, status=status, reason=reason,
                  attempts=attempts)

    # -- parked events -------------------------------------------------------------------------------

    def _heal(self, track: Track, session: ProjectionSession, letters: list[DeadLetter],
              ignore_backoff: bool) -> int:
        """Retry the parked events that are due (each key's first; with ``ignore_backoff`` also those in their
        quick retries), then what waits behind each; return how many applied."""
        now = time.time()
        applied = 0
        for first, queue in self._queues(letters):
            due = first.retry_at is not None and (
                first.retry_at <= now or (ignore_backoff and first.attempts < self.engine.max_attempts))
            if first.status == PARKED and due:
                applied += self._apply_queue(track, session, queue, counted=True)
        return applied

    @staticmethod
    def _queues(letters: list[DeadLetter]) -> Iterable[tuple[DeadLetter, list[DeadLetter]]]:
        """Each parked event with the blocked events of its key behind it, in log order."""
        by_key: dict[str | None, list[DeadLetter]] = {}
        for letter in sorted(letters, key=lambda letter: letter.position):
            if letter.key is None:
                yield letter, [letter]
            else:
                by_key.setdefault(letter.key, []).append(letter)
        for queue in by_key.values():
            yield queue[0], queue

    def _apply_queue(self, track: Track, session: ProjectionSession, queue: list[DeadLetter], *,
                     counted: bool) -> int:
        """Apply a key's queue of dead letters in order, releasing each that applies; stop at one that fails,
        which stays parked (its failure counted if ``counted``) with those behind it blocked."""
        applied = 0
        for index, letter in enumerate(queue):
            (stored,) = self.engine.storage.read(letter.position - 1, 1)
            try:
                event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
                apply = track.projection.handlers.get(type(event))
                if apply is not None:  # a type registered since, that this projection does not handle: done
                    with session.savepoint():
                        apply(event, session)
            except Exception as exc:
                if self.engine.storage.transient(exc):
                    raise self._lost_storage(track, letter.position, exc) from exc
                kind = qualname(type(exc))
                systemic = track.stall is not None and track.stall.error_type == kind
                attempts = letter.attempts + (1 if counted and not systemic else 0)
                if systemic:  # the projection is failing, not this event: try again soon, count nothing
                    retry_at: float | None = time.time() + min(self.engine.backoff, self.engine.max_backoff)
                else:
                    retry_at = self._schedule(max(attempts, 1))
                session.park(attrs.evolve(letter, status=PARKED, attempts=max(attempts, 1), retry_at=retry_at,
                                          reason=_describe(exc)))
                for later in queue[index + 1:]:
                    session.park(attrs.evolve(later, status=BLOCKED, retry_at=None))
                if not systemic:
                    log.warning("parked event failed again", projection=track.name, position=letter.position,
                                attempts=attempts, retry_at=retry_at, error_type=kind, error=str(exc))
                break
            session.release(letter.position)
            applied += 1
            self._recovered(track)
        return applied

    def release(self, name: str, position: int, *, apply_first: bool) -> int:
        """Retry (``apply_first``) or skip the parked event at ``position``, then apply those waiting behind it."""
        engine = self.engine
        track = engine._runnable(name)
        if track.lanes:  # a partitioned projection's partition holds it (see ReadModels._partition_at); none does
            raise DeadLetterNotFoundError(name, position)
        generation = engine.storage.current_generation(track.base)
        engine.versions.check(track.base, generation)  # never another version's handlers on this generation
        with engine.storage.session(name, generation) as session:
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
            if not apply_first:
                session.release(first.position)
                queue = queue[1:]
            applied = self._apply_queue(track, session, queue, counted=True)
        if applied:
            engine.progress.notify()
        return applied

    def release_all(self, name: str) -> tuple[int, int]:
        """Retry every parked event of ``name`` now (each key's first, then what waits behind it); return how many
        applied and how many stay parked."""
        engine = self.engine
        track = engine._runnable(name)
        generation = engine.storage.current_generation(track.base)
        engine.versions.check(track.base, generation)
        with engine.storage.session(name, generation) as session:
            applied = sum(self._apply_queue(track, session, queue, counted=True)
                          for _first, queue in self._queues(session.dead_letters()))
            still = sum(1 for letter in session.dead_letters() if letter.status == PARKED)
        if applied:
            engine.progress.notify()
        return applied, still
