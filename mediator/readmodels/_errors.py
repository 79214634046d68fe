"""Every error the read-model engine and its storage backends raise, under the framework's one root.

Each leaf also subclasses the matching built-in and keeps what it is about as attributes.
"""

from __future__ import annotations

from .._errors import MediatorError
from .._messages import qualname


class StorageError(MediatorError, RuntimeError):
    """The storage backend failed; the driver's error is the ``__cause__``."""


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
    """A query asked to be consistent with a token, and its read models did not catch up in time."""

    def __init__(self, token: int, behind: dict[str, int], timeout: float) -> None:
        self.token = token
        self.behind = behind
        self.timeout = timeout
        lagging = ", ".join(f"{name} at {position}" for name, position in behind.items())
        super().__init__(
            f"Read models did not reach position {token} within {timeout:g} s ({lagging}); retry, raise the "
            "timeout, or accept a stale answer with consistent(..., stale_ok=True)."
        )


class UnregisteredEventError(MediatorError, LookupError):
    """An event class is not registered with the engine's ``EventTypes``, so it cannot be stored or projected."""

    def __init__(self, event_type: type) -> None:
        self.event_type = event_type
        super().__init__(
            f"{qualname(event_type)} is not a registered event type; register it with event_types.register(...) "
            "so it can be stored."
        )


class UndecodableEventError(MediatorError, ValueError):
    """Stored event data could not be turned back into an event; ``reason`` says why."""

    def __init__(self, type_name: str, version: int, reason: str) -> None:
        self.type_name = type_name
        self.version = version
        self.reason = reason
        super().__init__(f"Cannot decode event {type_name!r} v{version}: {reason}")
