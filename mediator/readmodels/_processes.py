"""Process managers: typed state per correlation key, moved on by events, sending commands; each step exactly once.

A :class:`ProcessManager` reacts to events of the log (``@on(...)`` methods, as a projection's) with the state
of the instance the event's ordering key names (``uow.record(event, key=order_id)``), and answers the state after
the event (``None`` ends the instance, or never starts one). Through its :class:`Step` it sends commands,
schedules and cancels commands (a timeout) and records events.

**Exactly once.** One step is one write transaction: the instance's state, the commands it sent (their writes,
their events, their idempotency records), what it scheduled or cancelled, and the process manager's checkpoint
past the event commit together, on SQLite (one file or two: a process manager's records live beside the log)
and PostgreSQL alike, so a step takes effect once however often the event is delivered or the process dies.
Read models in a separate store are applied from the log afterwards, as always.

**Failure.** A step that raises rolls back with everything it did. The event is parked for its key and retried
on the engine's schedule (quick retries, then the slow schedule), the key's later events waiting behind it, so
an instance sees its events in order; other keys go on. Once a step has failed every try, the process manager's
:meth:`ProcessManager.compensate` runs for it in a transaction of its own (undo what the instance did: cancel the
order, release the stock) and its answer becomes the state; without one the event stays parked for an operator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import attrs
import structlog

from .. import Command, Event
from .._messages import qualname
from ._errors import DeadLetterNotFoundError, ProjectionConfigError, UndecodableEventError, UnknownProjectionError
from ._ports import BLOCKED, PARKED, DeadLetter, ProjectionSession, StoredEvent, committed, looked_at
from ._projections import _APPLIES, on
from ._serialization import json_converter, to_data
from ._tables import Table

if TYPE_CHECKING:
    from .. import Mediator
    from ._engine import ReadModels
    from ._ports import WriteSession
    from ._schedules import Delay, When
    from ._unit_of_work import UnitOfWork

S = TypeVar("S")
R = TypeVar("R")

log = structlog.get_logger("mediator.readmodels")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

__all__ = ["ProcessManager", "Step", "on"]


@attrs.frozen
class Instance:
    """A process manager's instance as stored: its key, its state (JSON), when it started and last moved, and how
    many steps it took."""

    key: str
    state: str
    started_at: float
    updated_at: float
    steps: int


class Step:
    """What a process manager's step can do, all inside the step's transaction."""

    def __init__(self, mediator: Mediator, uow: UnitOfWork, key: str, stored: StoredEvent) -> None:
        self._mediator = mediator
        self._uow = uow
        self.key = key
        """The instance's key (the event's ordering key)."""
        self.position = stored.position
        """The event's position in the log."""
        self.recorded_at = stored.recorded_at
        """When the event was recorded (seconds since the epoch)."""

    def send(self, command: Command[R]) -> R:
        """Dispatch ``command``; it joins the step's transaction (its writes and events commit with the step)."""
        return self._mediator.send(command)

    def schedule(self, command: Command[Any], *, at: When | None = None, after: Delay | None = None,
                 schedule_id: str | None = None) -> str:
        """Schedule ``command`` with the step (see :meth:`UnitOfWork.schedule`); name it, to cancel it later."""
        return self._uow.schedule(command, at=at, after=after, schedule_id=schedule_id)

    def cancel(self, schedule_id: str) -> bool:
        """Cancel a scheduled command with the step (a timeout whose awaited event came); whether it was there."""
        return self._uow.cancel(schedule_id)

    def record(self, event: Event, *, key: str | None = None) -> None:
        """Record ``event`` with the step."""
        self._uow.record(event, key=key)


class ProcessManager(Generic[S]):
    """Base class of a process manager: a ``name``, the ``state`` class of its instances (attrs), ``@on(...)``
    methods ``(self, event, state: S | None, step: Step) -> S | None``, and optionally :meth:`compensate`.

    An instance is keyed by its events' ordering key; events recorded without one are not its concern.
    """

    name: ClassVar[str]
    """The stable storage name (an identifier)."""
    state: ClassVar[type[Any]]
    """The attrs class of an instance's state, stored as JSON as events are."""
    handlers: dict[type, Callable[[Any, Any, Step], Any]]

    def __init__(self) -> None:
        name = getattr(type(self), "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ProjectionConfigError(
                f"{qualname(type(self))} needs a class attribute `name`, an identifier (its stable storage name).")
        state = getattr(type(self), "state", None)
        if not (isinstance(state, type) and attrs.has(state)):
            raise ProjectionConfigError(f"{qualname(type(self))} needs a class attribute `state`: the attrs class "
                                        "of its instances' state.")
        self.handlers = {}
        for attribute in dir(type(self)):
            method = getattr(self, attribute, None)
            for event_type in getattr(method, _APPLIES, ()):
                if event_type in self.handlers:
                    raise ProjectionConfigError(f"{qualname(type(self))} reacts to {qualname(event_type)} twice.")
                self.handlers[event_type] = method  # type: ignore[assignment]

    def compensate(self, event: Any, state: S | None, error: Exception, step: Step) -> S | None:
        """Called, in a transaction of its own, once a step has failed every try: undo what the instance did
        (send compensating commands through ``step``) and answer its state (``None`` ends it). The default
        leaves the event parked for an operator (``python -m mediator.readmodels processes``)."""
        raise error


class _Track:
    """One process manager as an engine runs it."""

    def __init__(self, manager: ProcessManager[Any], engine: ReadModels) -> None:
        self.manager = manager
        self.name = manager.name
        self.session_name = f"process_{manager.name}"
        self.instances: Table[Instance] = Table(Instance, key="key", name="instances")._copy_for(self.session_name)
        self.decode_state = json_converter(manager.state)
        self.type_names = frozenset(engine.types.entry(t).name for t in manager.handlers)
        self.ready = False
        self.position: int | None = None
        """The checkpoint as last read or moved here (``None``: not read yet)."""
        self.next_retry: float | None = None
        """When its parked step due first is due, as last read."""
        self.steps = 0
        """Steps this process took (for metrics)."""
        self.compensated = 0


class Processes:
    """The engine's process managers: runs their steps, retries and parks them, compensates."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.tracks: dict[str, _Track] = {}

    def add(self, manager: ProcessManager[Any]) -> None:
        if manager.name in self.tracks:
            raise ProjectionConfigError(f"A process manager named {manager.name!r} is already added.")
        for event_type in manager.handlers:
            self.engine.types.entry(event_type)  # raises with the fix if it is not registered
        self.tracks[manager.name] = _Track(manager, self.engine)

    def run(self, *, leased: bool = False, limit: int | None = None) -> int:
        """Take every process manager's due steps (retries first, then new events); return how many ran."""
        mediator = self.engine.schedules.mediator
        if mediator is None or not self.tracks:
            return 0
        done = 0
        storage = self.engine.storage
        head, now = storage.head(), self.engine.clock()
        for track in self.tracks.values():
            if leased and storage.leases and not storage.acquire(track.session_name):
                continue
            if track.position is not None and head <= track.position and (
                    track.next_retry is None or track.next_retry > now):
                continue  # nothing new, nothing due: no transaction at all
            position, letters = self._look(track)
            healed, tried = self._heal(track, mediator, letters)
            if tried:  # released, parked again or compensated: which keys wait has changed
                position, letters = self._look(track)
            done += healed + self._advance(track, mediator, limit or self.engine.batch_size, position, letters)
        return done

    # -- new events -----------------------------------------------------------------------------------

    def _advance(self, track: _Track, mediator: Mediator, limit: int, position: int,
                 letters: list[DeadLetter]) -> int:
        storage = self.engine.storage
        head = storage.head()
        blocked = {letter.key for letter in letters if letter.key is not None}
        events = storage.read(position, limit, track.type_names)
        for stored in events:
            if self._step(track, mediator, stored, blocked):
                blocked.add(stored.key)  # type: ignore[arg-type]  # parked steps have keys
        track.position = events[-1].position if events else position
        if len(events) < limit:
            last = max(head, track.position)
            if last > position:
                self._skip_to(track, last)
                track.position = last
        return len(events)

    def _look(self, track: _Track) -> tuple[int, list[DeadLetter]]:
        """The checkpoint and the parked steps (read in a transaction of their own)."""
        with looked_at(self.engine.storage) as session:
            process = session.process(track.session_name)
            position, letters = process.position, process.dead_letters()
        track.position = position
        track.next_retry = min((lt.retry_at for lt in letters if lt.retry_at is not None), default=None)
        return position, letters

    def _skip_to(self, track: _Track, position: int) -> None:
        with committed(self.engine.storage) as session:
            process = session.process(track.session_name)
            if process.position < position:
                process.advance(position)

    def _begin(self, track: _Track) -> tuple[WriteSession, ProjectionSession]:
        session = self.engine.storage.begin()
        try:
            process = session.process(track.session_name)
            if not track.ready:
                process.create_tables([track.instances])
        except BaseException:
            session.rollback()
            raise
        return session, process

    def _step(self, track: _Track, mediator: Mediator, stored: StoredEvent, blocked: set[str]) -> bool:
        """Take the step for ``stored``, past the checkpoint, in one transaction; park it if it fails or its key
        waits behind a parked step. Whether it is parked now."""
        session, process = self._begin(track)
        if process.position >= stored.position:  # another runner took it (PostgreSQL: the row lock made us wait)
            session.rollback()
            return False
        key = stored.key
        if key is None:  # not any instance's
            process.advance(stored.position)
            self._commit_plain(session, track)
            return False
        if key in blocked:  # a step of this key is parked: this one waits behind it, in order
            process.park(self._letter(track, stored, BLOCKED, "waits for the parked step of its key", 0, None))
            process.advance(stored.position)
            self._commit_plain(session, track)
            return True
        try:
            event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
        except UndecodableEventError as exc:
            process.park(self._letter(track, stored, PARKED, str(exc), 1, None))
            process.advance(stored.position)
            self._commit_plain(session, track)
            log.error("process step parked", process=track.name, position=stored.position, reason=str(exc))
            return True
        try:
            self._run(track, mediator, session, process, stored, event, _reacting(track, event))
        except Exception as exc:
            self._failed(track, stored, exc, attempts=1, first=True)
            return True
        return False

    def _run(self, track: _Track, mediator: Mediator, session: WriteSession, process: ProjectionSession,
             stored: StoredEvent, event: Any, react: Callable[[Any, Step], Any], *,
             release: int | None = None) -> None:
        """Run ``react`` (the handler, or compensation) as the step for ``stored`` in ``session``, save the state
        it answers, move the checkpoint (or release the parked ``release``), commit: all or nothing."""
        from ._unit_of_work import joined

        key = stored.key
        assert key is not None
        try:
            row = process.get(track.instances, key)
            state = None if row is None else track.decode_state(row.state)
        except BaseException:
            session.rollback()
            raise
        with joined(self.engine, mediator, session, stored, stored.event_id) as uow:
            answer = react(state, Step(mediator, uow, key, stored))
            if answer is not None and not isinstance(answer, track.manager.state):
                raise TypeError(f"{qualname(type(track.manager))} answered {answer!r}; a step answers a "
                                f"{qualname(track.manager.state)} or None.")
            now = self.engine.clock()
            if answer is None:
                if row is not None:
                    process.delete(track.instances, key)
            else:
                process.put(track.instances, Instance(key, _dumps(to_data(answer)), row.started_at if row else now,
                                                      now, (row.steps if row else 0) + 1))
            if release is None:
                process.advance(stored.position)
            else:
                process.release(release)
        track.ready = True
        track.steps += 1

    def _commit_plain(self, session: WriteSession, track: _Track) -> None:
        try:
            session.commit()
        except BaseException:
            session.rollback()
            raise
        track.ready = True

    def _letter(self, track: _Track, stored: StoredEvent, status: str, reason: str, attempts: int,
                retry_at: float | None) -> DeadLetter:
        return DeadLetter(track.session_name, 1, stored.position, stored.event_id, stored.type_name, stored.key,
                          reason[:500], attempts, status, retry_at)

    def _failed(self, track: _Track, stored: StoredEvent, exc: Exception, *, attempts: int, first: bool) -> None:
        """Park (or keep parked) the failed step, with its next try; past every try, compensate."""
        delay = self.engine.applier.delay(attempts)
        reason = f"{qualname(type(exc))}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if delay is None and self._compensate(track, stored, exc):
            return
        retry_at = None if delay is None else self.engine.clock() + delay
        session, process = self._begin(track)
        try:
            process.park(self._letter(track, stored, PARKED, reason, attempts, retry_at))
            if first:
                process.advance(stored.position)
        except BaseException:
            session.rollback()
            raise
        self._commit_plain(session, track)
        if retry_at is not None and (track.next_retry is None or retry_at < track.next_retry):
            track.next_retry = retry_at
        log.error("process step failed", process=track.name, position=stored.position, key=stored.key,
                  reason=reason, attempts=attempts, parked_for_an_operator=retry_at is None)

    def _compensate(self, track: _Track, stored: StoredEvent, error: Exception) -> bool:
        """Run the process manager's compensation for a step that failed every try; whether it did."""
        if type(track.manager).compensate is ProcessManager.compensate:
            return False
        mediator = self.engine.schedules.mediator
        assert mediator is not None
        event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
        session, process = self._begin(track)
        parked = {letter.position for letter in process.dead_letters()}
        try:
            self._run(track, mediator, session, process, stored, event,
                      lambda state, step: track.manager.compensate(event, state, error, step),
                      release=stored.position if stored.position in parked else None)
        except Exception as exc:
            log.error("process compensation failed", process=track.name, position=stored.position,
                      key=stored.key, reason=f"{qualname(type(exc))}: {exc}")
            return False
        track.compensated += 1
        log.warning("process step compensated", process=track.name, position=stored.position, key=stored.key,
                    error=f"{qualname(type(error))}: {error}")
        return True

    # -- parked steps ---------------------------------------------------------------------------------

    def _heal(self, track: _Track, mediator: Mediator, letters: list[DeadLetter]) -> tuple[int, bool]:
        """Retry each key's first parked step that is due, then what waits behind it; return how many ran, and
        whether any was tried."""
        now, done, tried = self.engine.clock(), 0, False
        firsts: dict[str, DeadLetter] = {}
        for letter in sorted(letters, key=lambda lt: lt.position):
            if letter.key is not None:
                firsts.setdefault(letter.key, letter)
        for letter in firsts.values():
            if letter.status == PARKED and letter.retry_at is not None and letter.retry_at <= now:
                tried = True
                done += self._retry(track, mediator, letter, [lt for lt in letters if lt.key == letter.key])
        return done, tried

    def retry(self, name: str, position: int) -> int:
        """Retry a parked step now (an operator's), then the steps of its key waiting behind it."""
        track = self._track(name)
        mediator = self.engine.schedules.mediator
        if mediator is None:
            raise ProjectionConfigError("Process managers need a mediator to send their commands: call "
                                        "engine.dispatch_with(mediator) first.")
        _position, letters = self._look(track)
        found = [lt for lt in letters if lt.position == position]
        if not found:
            raise DeadLetterNotFoundError(track.session_name, position)
        return self._retry(track, mediator, found[0], [lt for lt in letters if lt.key == found[0].key],
                           operator=True)

    def _retry(self, track: _Track, mediator: Mediator, letter: DeadLetter, queue: list[DeadLetter], *,
               operator: bool = False) -> int:
        """Run ``letter``'s step again, then the steps of its key waiting behind it, each releasing its letter;
        stop at the first that fails (parked again, heading its key's queue)."""
        done = 0
        for waiting in sorted(queue, key=lambda lt: lt.position):
            (stored,) = self.engine.storage.read(waiting.position - 1, 1)
            try:
                event = self.engine.types.decode(stored.type_name, stored.version, stored.data)
                session, process = self._begin(track)
                self._run(track, mediator, session, process, stored, event, _reacting(track, event),
                          release=waiting.position)
            except Exception as exc:
                # The retried step counts its tries (afresh when an operator asks); one that waited behind it
                # fails in its own right, at its first.
                attempts = (1 if operator else waiting.attempts + 1) if waiting is letter else 1
                self._failed(track, stored, exc, attempts=attempts, first=False)
                return done
            done += 1
        return done

    def _track(self, name: str) -> _Track:
        track = self.tracks.get(name)
        if track is None:
            raise UnknownProjectionError([name], self.tracks)
        return track

    # -- operations -------------------------------------------------------------------------------------

    def status(self) -> list[ProcessStatus]:
        """Per process manager: how far behind the log, live instances, parked and waiting steps."""
        head, now = self.engine.storage.head(), self.engine.clock()
        found = []
        for track in self.tracks.values():
            session, process = self._begin(track)  # (the table made in it if need be: rolled back with it)
            try:
                letters = process.dead_letters()
                rows = process.find(track.instances)
                position = process.position
            finally:
                session.rollback()
            instances = len(rows)
            oldest = min((row.updated_at for row in rows), default=None)
            found.append(ProcessStatus(
                track.name, position, head - position, instances,
                sum(1 for lt in letters if lt.status == PARKED), sum(1 for lt in letters if lt.status == BLOCKED),
                None if oldest is None else now - oldest, letters))
        return found

    def instance(self, name: str, key: str) -> Any:
        """The state of process manager ``name``'s instance ``key`` (``None`` if it never started or ended)."""
        track = self._track(name)
        session, process = self._begin(track)
        try:
            row = process.get(track.instances, key)
        finally:
            session.rollback()
        return None if row is None else track.decode_state(row.state)


def _reacting(track: _Track, event: Any) -> Callable[[Any, Step], Any]:
    """The process manager's handler for ``event``, as a step runs it."""
    handler = track.manager.handlers[type(event)]
    return lambda state, step: handler(event, state, step)


@attrs.frozen
class ProcessStatus:
    """A process manager's state for operators (``status``, the CLI)."""

    name: str
    position: int
    behind: int
    instances: int
    parked: int
    blocked: int
    oldest_instance_seconds: float | None
    """How long the instance that moved least recently has waited (a stuck one shows here)."""
    letters: list[DeadLetter]

