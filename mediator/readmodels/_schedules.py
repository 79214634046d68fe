"""Scheduled commands: a command kept in the write database with a due time, dispatched once when it comes.

``uow.schedule(command, after=...)`` keeps the command in the scheduling transaction, so it exists exactly when
the caller's writes do; ``uow.cancel(schedule_id)`` deletes it the same way. The runner (or the testing kit's
``settle``) takes the command due first in a write transaction, deletes it, and dispatches it through the
mediator in that same transaction: its writes and events, and the deletion, commit together, so it takes effect
once however often the runner dies. PostgreSQL's ``FOR UPDATE SKIP LOCKED`` lets runners in many processes take
different commands at once, never the same one; SQLite's writers take turns.

**Time.** A due time is absolute: seconds since the epoch by the engine's clock when it was scheduled
(``after=`` is added to that clock's now). Whatever was due while no runner ran fires at the next start, in due
order. The clock is the system's wall clock: set back, due commands wait the longer; set forward, they fire the
earlier; none is lost or fired twice either way.

**Failure.** A command that raises rolls back with everything it did and stays scheduled; it is tried again as a
parked event is (quick retries, then the slow schedule), and after every try it is parked (``status`` ``parked``)
until an operator retries or cancels it. A command that cannot be decoded any more (its class renamed) is parked
at once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import structlog

from .. import Command
from .._context import new_event_id
from .._messages import qualname
from ._errors import ProjectionConfigError, ScheduleNotFoundError, ScheduleTimeError, UnschedulableCommandError
from ._ports import PARKED, PENDING, ScheduledCommand, committed
from ._serialization import json_converter, to_data

if TYPE_CHECKING:
    from .. import Mediator
    from ._engine import ReadModels
    from ._ports import WriteSession

log = structlog.get_logger("mediator.readmodels")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

When = dt.datetime | float | int
"""An absolute due time: an aware ``datetime`` or seconds since the epoch."""
Delay = dt.timedelta | float | int
"""A due time from now: a ``timedelta`` or seconds."""


@attrs.frozen
class _Kind:
    cls: type
    name: str
    decode: Callable[[str], Any]


class Schedules:
    """The engine's scheduled commands: which command classes may be scheduled, and firing them when due."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self._by_class: dict[type, _Kind] = {}
        self._by_name: dict[str, _Kind] = {}
        self.mediator: Mediator | None = None
        """What dispatches the commands when due (:meth:`ReadModels.dispatch_with`)."""
        self.fired: dict[str, int] = {}
        """Scheduled commands dispatched when due, in this process, by command name (for metrics)."""
        self.next_due: float | None = None
        """When the command due first is due, as last read (``None``: none, or not read yet)."""
        self._unread = True

    @property
    def registered(self) -> bool:
        """Whether any command class may be scheduled."""
        return bool(self._by_class)

    def register(self, cls: type, name: str | None = None) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Command) and attrs.has(cls)):
            raise ProjectionConfigError(f"{qualname(cls)} is not an attrs Command class; only those can be scheduled.")
        kind = _Kind(cls, name or qualname(cls), json_converter(cls))
        known = self._by_name.get(kind.name)
        if known is not None and known.cls is not cls:
            raise ProjectionConfigError(f"The command name {kind.name!r} is already used by {qualname(known.cls)}.")
        self._by_class[cls] = kind
        self._by_name[kind.name] = kind

    # -- scheduling, in a caller's transaction --------------------------------------------------------

    def make(self, command: Any, at: When | None, after: Delay | None, schedule_id: str | None) -> ScheduledCommand:
        """The row that schedules ``command`` (checked: registered, encodable, one due time)."""
        kind = self._by_class.get(type(command))
        if kind is None:
            raise UnschedulableCommandError(type(command))
        now = self.engine.clock()
        due = _due(now, at, after)
        data = _dumps(to_data(command))
        return ScheduledCommand(schedule_id or new_event_id(), kind.name, data, due, now)

    def scheduled(self, session: WriteSession, row: ScheduledCommand) -> None:
        session.schedule(row)
        if self.next_due is None or row.due_at < self.next_due:
            self.next_due = row.due_at  # known once committed; a runner here looks again at its next round

    # -- firing ---------------------------------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a scheduled command may be due now (reads the storage at most once a poll, unless told)."""
        if self._unread:
            self._unread = False
            self.next_due = self.engine.storage.next_due()
        return self.next_due is not None and self.next_due <= self.engine.clock()

    def look_again(self) -> None:
        """Read when the next command is due at the next :meth:`due` (another process may have scheduled one)."""
        self._unread = True

    def fire_due(self, limit: int | None = None) -> int:
        """Dispatch the scheduled commands that are due, each in a transaction of its own; return how many ran
        (successfully or not). Without a mediator to dispatch them (:meth:`ReadModels.dispatch_with`), none."""
        mediator = self.mediator
        if mediator is None:
            return 0
        done = 0
        while limit is None or done < limit:
            session = self.engine.storage.begin()
            try:
                row = session.take_due(self.engine.clock())
            except BaseException:
                session.rollback()
                raise
            if row is None:
                session.rollback()
                self.look_again()
                self.due()
                return done
            done += 1
            self._fire(mediator, session, row)
        return done

    def _fire(self, mediator: Mediator, session: WriteSession, row: ScheduledCommand) -> None:
        from ._unit_of_work import joined

        kind = self._by_name.get(row.command)
        try:
            if kind is None:
                raise UnschedulableCommandError(row.command)
            command = kind.decode(row.data)
        except Exception as exc:
            session.schedule(row._replace(status=PARKED, reason=f"cannot be decoded: {exc}"))
            session.commit()
            log.error("scheduled command parked", schedule_id=row.schedule_id, command=row.command,
                      reason=f"cannot be decoded: {exc}")
            return
        try:
            with joined(self.engine, mediator, session, row, row.schedule_id):
                session.unschedule(row.schedule_id)
                mediator.send(command)
        except Exception as exc:
            self._failed(row, exc)
            return
        # No line of its own: routine, and the Logging behaviour logs the dispatch (its causation id the schedule's).
        self.fired[row.command] = self.fired.get(row.command, 0) + 1

    def _failed(self, row: ScheduledCommand, exc: Exception) -> None:
        attempts = row.attempts + 1
        delay = self.engine.applier.delay(attempts)
        reason = f"{qualname(type(exc))}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        if delay is None:
            updated = row._replace(attempts=attempts, status=PARKED, reason=reason)
        else:
            updated = row._replace(attempts=attempts, reason=reason, due_at=self.engine.clock() + delay)
        with committed(self.engine.storage) as session:
            session.schedule(updated)
        log.error("scheduled command failed", schedule_id=row.schedule_id, command=row.command, reason=reason,
                  attempts=attempts, parked=delay is None)

    # -- operations -------------------------------------------------------------------------------------

    def cancel(self, schedule_id: str) -> None:
        """Delete a scheduled command (pending or parked), for an operator."""
        with committed(self.engine.storage) as session:
            if not session.unschedule(schedule_id):
                raise ScheduleNotFoundError(schedule_id)

    def retry(self, schedule_id: str) -> None:
        """Make a parked (or waiting) scheduled command due now, its tries counted afresh."""
        found = {row.schedule_id: row for row in self.engine.storage.scheduled()}.get(schedule_id)
        if found is None:
            raise ScheduleNotFoundError(schedule_id)
        with committed(self.engine.storage) as session:
            session.schedule(found._replace(status=PENDING, attempts=0, reason=None, due_at=self.engine.clock()))
        self.look_again()


def _due(now: float, at: When | None, after: Delay | None) -> float:
    if (at is None) == (after is None):
        raise ScheduleTimeError("Give a scheduled command one due time: at= (when) or after= (how long from now).")
    if at is not None:
        if isinstance(at, dt.datetime):
            if at.tzinfo is None:
                raise ScheduleTimeError(f"at={at!r} has no time zone; give an aware datetime (e.g. in UTC).")
            due = at.timestamp()
        else:
            due = float(at)
    else:
        seconds = after.total_seconds() if isinstance(after, dt.timedelta) else float(after)  # type: ignore[arg-type]
        if seconds < 0:
            raise ScheduleTimeError(f"after={after!r} is in the past; give a delay of zero or more.")
        due = now + seconds
    if not math.isfinite(due):
        raise ScheduleTimeError(f"The due time {due!r} is not a time; give a finite one.")
    return due
