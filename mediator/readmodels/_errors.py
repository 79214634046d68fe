"""Every error the read-model engine and its storage backends raise, under the framework's one root.

Each leaf also subclasses the matching built-in and keeps what it is about as attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import MediatorError
from .._messages import qualname

if TYPE_CHECKING:
    from ._ports import DeadLetter


class StorageError(MediatorError, RuntimeError):
    """The storage backend failed; the driver's error is the ``__cause__``."""


class StorageDataError(StorageError, ValueError):
    """The storage refused a value (a NUL character, a number out of its range, text it cannot encode): the
    input's fault, not an outage. HTTP embeddings answer it 422; a projection parks the event that wrote it."""


class DatabaseNotFoundError(StorageError, LookupError):
    """A storage opened inside ``existing_only()`` (as the command line opens one) found no database, or not its
    tables, where it would have created them. ``database`` names what it looked for: a file, or a schema."""

    def __init__(self, database: str, problem: str, check: str) -> None:
        self.database = database
        self.problem = problem
        super().__init__(f"{database} {problem}, and this command creates none: check {check}, or start the "
                         "application (or `python -m mediator.readmodels ... worker`) once to create it.")


class ReadModelUnavailableError(StorageError):
    """A read model this code cannot read now: being rebuilt for its projection's version, or built by a newer one.

    It is a :class:`StorageError` because it passes the same way: the HTTP embeddings answer 503 with
    ``Retry-After``, and the same request succeeds once the rebuild is swapped in.
    """

    def __init__(self, projection: str, built_by: int, version: int) -> None:
        self.projection = projection
        self.built_by = built_by
        self.version = version
        why = ("a rebuild for this code's version replaces it (started by the first catch-up or runner)"
               if built_by < version
               else "that version is newer than this code's: this process leaves it to the processes running it")
        super().__init__(
            f"Read model {projection!r} was built by version {built_by} of its projection and this code has "
            f"version {version}; {why}."
        )


class ConsistencyTimeoutError(MediatorError, TimeoutError):
    """A query asked to be consistent with a token, and its read models did not reach it in time.

    ``behind`` has the position each lagging read model has applied up to; ``parked`` the dead letter that holds
    back each read model that cannot reach the token until that event is applied (then it answered at once,
    rather than wait for a timeout it could not beat).
    """

    def __init__(self, token: int, behind: dict[str, int], timeout: float,
                 parked: Mapping[str, DeadLetter] | None = None) -> None:
        self.token = token
        self.behind = behind
        self.timeout = timeout
        self.parked = dict(parked or {})
        lagging = ", ".join(f"{name} at {position}" for name, position in behind.items())
        held = "; ".join(
            f"{name} has a parked event at position {letter.position}"
            + (f" (key {letter.key!r})" if letter.key is not None else "") + f": {letter.reason}"
            for name, letter in self.parked.items())
        if held:
            super().__init__(f"Read models cannot reach position {token} ({lagging}): {held}. The runner retries "
                             "parked events on a schedule; `dead-letters list` shows them, `retry` applies them.")
        else:
            super().__init__(
                f"Read models did not reach position {token} within {timeout:g} s ({lagging}); retry, raise the "
                "timeout, or accept a stale answer with consistent(..., stale_ok=True)."
            )


class TokenBeyondHeadError(MediatorError, ValueError):
    """A consistency token names a position past the last write: no command committed it, so waiting for it would
    only time out. Over HTTP, a 400."""

    def __init__(self, token: int, head: int) -> None:
        self.token = token
        self.head = head
        super().__init__(f"Consistency token {token} is beyond the last write ({head}); pass a token from "
                         "last_token() (over HTTP, from X-Consistency-Token).")


class UnregisteredEventError(MediatorError, LookupError):
    """An event class is not registered with the engine's ``EventTypes``, so it cannot be stored or projected."""

    def __init__(self, event_type: type) -> None:
        self.event_type = event_type
        super().__init__(
            f"{qualname(event_type)} is not a registered event type; register it with event_types.register(...) "
            "so it can be stored."
        )


class EventFieldError(MediatorError, ValueError):
    """An event's fields do not hold what their annotations declare, so it is not stored: it would not read back.

    ``errors`` maps each field (a dotted path, ``lines[0].quantity``) to its problems. The command that recorded
    the event fails with this error, and nothing of it is written.
    """

    def __init__(self, event: object, errors: Mapping[str, Sequence[str]]) -> None:
        self.event = event
        self.errors: dict[str, tuple[str, ...]] = {field: tuple(problems) for field, problems in errors.items()}
        detail = "; ".join(f"{field or '<event>'}: {', '.join(problems)}" for field, problems in self.errors.items())
        super().__init__(
            f"Event {qualname(type(event))} cannot be stored: {detail}; build it from values of its fields' declared "
            "types (Validation(check_types=True) refuses such values in the commands that make events)."
        )


class RowFieldError(MediatorError, ValueError):
    """A read-model row's fields do not hold what their annotations declare, so it is not stored: it would not read
    back. ``errors`` maps each field to its problems, as :class:`EventFieldError` does."""

    def __init__(self, row: object, errors: Mapping[str, Sequence[str]]) -> None:
        self.row = row
        """The row; its class when fields were given alone (``patch``)."""
        self.errors: dict[str, tuple[str, ...]] = {field: tuple(problems) for field, problems in errors.items()}
        detail = "; ".join(f"{field or '<row>'}: {', '.join(problems)}" for field, problems in self.errors.items())
        what = row if isinstance(row, type) else type(row)
        super().__init__(f"Row {qualname(what)} cannot be stored: {detail}.")


class TableQueryError(MediatorError, ValueError):
    """A read-model table was asked for something it cannot answer: a field that is not a key or a lookup, a
    malformed key, a bad limit."""


class UndecodableEventError(MediatorError, ValueError):
    """Stored event data could not be turned back into an event; ``reason`` says why."""

    def __init__(self, type_name: str, version: int, reason: str) -> None:
        self.type_name = type_name
        self.version = version
        self.reason = reason
        super().__init__(f"Cannot decode event {type_name!r} v{version}: {reason}")


class UnknownProjectionError(MediatorError, LookupError):
    """A projection was named that the engine does not run."""

    def __init__(self, names: Sequence[str], known: Iterable[str]) -> None:
        self.names = tuple(names)
        self.known = tuple(known)
        listed = ", ".join(map(repr, self.names))
        super().__init__(f"No projection named {listed}; known: {', '.join(self.known) or 'none'}.")


class ProjectionConfigError(MediatorError, ValueError, TypeError):
    """A projection is defined or added wrongly (no name, an event applied twice, a name taken twice, inline on
    a storage that keeps read models apart). A ``ValueError`` and a ``TypeError``, the built-ins these
    mistakes raised before they joined the tree."""


class EventRegistrationError(MediatorError, ValueError, TypeError):
    """An event class cannot be registered as asked (not an attrs ``Event``, an upcaster missing, a name taken).
    A ``ValueError`` and a ``TypeError``, the built-ins these mistakes raised before they joined the tree."""


class DeadLetterNotFoundError(MediatorError, LookupError):
    """No dead letter of the projection's current generation is at that position."""

    def __init__(self, projection: str, position: int) -> None:
        self.projection = projection
        self.position = position
        super().__init__(f"No dead letter of {projection!r} at position {position}; list them with "
                         "`dead-letters list`.")


class DeadLetterOrderError(MediatorError, ValueError):
    """A dead letter waits behind an earlier one of the same key, which must be retried or skipped first."""

    def __init__(self, projection: str, position: int, first: int) -> None:
        self.projection = projection
        self.position = position
        self.first = first
        super().__init__(
            f"The dead letter of {projection!r} at position {position} waits behind position {first} with the "
            f"same key; retry or skip position {first} first, so the key's order holds."
        )


class UnschedulableCommandError(MediatorError, LookupError):
    """A command was scheduled (or a stored one read back) whose class the engine was not told it may schedule."""

    def __init__(self, command: type | str) -> None:
        self.command = command
        name = command if isinstance(command, str) else qualname(command)
        super().__init__(f"{name} cannot be scheduled: it is not registered for it; call "
                         f"engine.schedulable({name.rsplit('.', 1)[-1]}) when wiring the engine.")


class ScheduleTimeError(MediatorError, ValueError):
    """A command was scheduled without one clear due time (both or neither of ``at``/``after``, a naive datetime,
    a negative delay)."""


class ScheduleNotFoundError(MediatorError, LookupError):
    """An operator named a scheduled command that is not there (it fired, or was cancelled)."""

    def __init__(self, schedule_id: str) -> None:
        self.schedule_id = schedule_id
        super().__init__(f"No scheduled command {schedule_id!r}: it has fired or was cancelled; list them with "
                         "`python -m mediator.readmodels schedules`.")


class RebuildNotFoundError(MediatorError, LookupError):
    """No rebuild of the projection is under way to cancel, accept or check."""

    def __init__(self, projection: str) -> None:
        self.projection = projection
        super().__init__(f"No rebuild of {projection!r} is under way.")


class RebuildCancelError(MediatorError, ValueError):
    """A rebuild by a newer version of a projection cannot be cancelled: this code needs it, and would start it
    again; deploy the version that built the live generation instead."""

    def __init__(self, projection: str, live_version: int, version: int) -> None:
        self.projection = projection
        super().__init__(
            f"The rebuild of {projection!r} replaces version {live_version} with this code's version {version}: "
            "this code cannot serve the old one, and would start the rebuild again. Run the old version to keep "
            "its generation, or let the rebuild finish.")


class RebuildRefusedError(MediatorError, ValueError):
    """A verified rebuild differs from the live generation where its version does not say it changes: it is held,
    not swapped in (accept it with ``engine.rebuilds.accept(name)``, or cancel it)."""

    def __init__(self, check: Any) -> None:
        self.check = check
        super().__init__(f"The rebuild of {check.projection!r} was not swapped in:\n{check.summary()}\nAccept it "
                         "(`rebuild NAME --accept-differences`, engine.rebuilds.accept(name)) or declare the change "
                         "in the projection's expected_changes.")
