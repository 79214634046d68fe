"""Message base classes: the result type travels with the message.

A command is declared as ``class PlaceOrder(Command[OrderId])``; the mediator's
``send`` is then typed ``OrderId`` for it, with no cast in user code.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from . import _codegen

R_co = TypeVar("R_co", covariant=True)
T_co = TypeVar("T_co", covariant=True)

SENSITIVE = "mediator.sensitive"


class Message:
    """Root of everything the mediator dispatches."""

    __slots__ = ()


class Command(Message, Generic[R_co]):
    """An intent to change state, handled by exactly one handler, answering ``R_co``."""

    __slots__ = ()


class Query(Message, Generic[R_co]):
    """A question about state, handled by exactly one handler, answering ``R_co``."""

    __slots__ = ()


MAX_IDEMPOTENCY_KEY = 255
"""The longest idempotency key accepted, in characters (the IETF draft's keys are UUIDs or similar)."""


@attrs.frozen(kw_only=True)
class IdempotentCommand(Command[R_co]):
    """A command a client may send again (a retry after a lost response) without it taking effect twice.

    Given an ``idempotency_key``, the read-model engine stores the key, a digest of the command and its result in
    the command's own transaction; a repeat with the same key and payload answers the stored result (and
    consistency token) without running the handler, and the same key with another payload is refused with
    :class:`~mediator.readmodels.IdempotencyKeyMismatchError`. Without a key it is an ordinary command.
    """

    idempotency_key: str | None = None
    """A non-empty printable string of at most :data:`MAX_IDEMPOTENCY_KEY` characters, or ``None``; checked when
    the command is sent (:class:`~mediator.IdempotencyKeyError`)."""


class StreamQuery(Message, Generic[T_co]):
    """A query whose handler yields ``T_co`` items one at a time."""

    __slots__ = ()


class Event(Message):
    """A notification that something happened; zero or more handlers each see it."""

    __slots__ = ()


class Kind(enum.Enum):
    """The four kinds of message, which behaviours can target as a group."""

    COMMAND = "command"
    QUERY = "query"
    STREAM = "stream"
    EVENT = "event"

    def __repr__(self) -> str:
        return f"Kind.{self.name}"


BASES: dict[Kind, type[Message]] = {
    Kind.COMMAND: Command,
    Kind.QUERY: Query,
    Kind.STREAM: StreamQuery,
    Kind.EVENT: Event,
}
"""The base class of each kind of message."""


def kind_of(message_type: object) -> Kind | None:
    """Return the kind of a message class, or ``None`` if it is not a message."""
    if not isinstance(message_type, type):
        return None
    for kind, base in BASES.items():
        if issubclass(message_type, base):
            return kind
    return None


def declared_result(message_type: type[Message]) -> Any:
    """Return the result type a message class declares through its base, or ``Any``.

    ``PlaceOrder(Command[OrderId])`` declares ``OrderId``; a message that
    inherits the parameter from a generic intermediate base declares ``Any``,
    which the wiring check treats as "cannot tell".
    """
    for klass in message_type.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) in (Command, IdempotentCommand, Query, StreamQuery):
                (arg,) = typing.get_args(base)
                return Any if isinstance(arg, TypeVar) else arg
    return Any


def qualname(obj: object) -> str:
    """Name a class or function as ``module.Qualified.Name`` for error messages."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{name}" if module and module != "builtins" else name


def name_by_package(namespace: dict[str, Any]) -> None:
    """Make the public members of a package (its ``__all__``) name the package, not the private module they
    live in, wherever a user sees them: reprs, ``explain()``, error messages, log lines (as httpx does)."""
    package = namespace["__name__"]
    for name in namespace["__all__"]:
        member = namespace[name]
        if getattr(member, "__module__", "").startswith(f"{package}._"):
            member.__module__ = package


def sensitive(**kwargs: Any) -> Any:
    """Declare an attrs field whose value is never logged nor shown in ``repr``.

    >>> import attrs
    >>> @attrs.frozen(kw_only=True)
    ... class Pay(Command[None]):
    ...     card_number: str = sensitive()
    >>> Pay(card_number="4111")
    Pay()
    """
    metadata = {**kwargs.pop("metadata", {}), SENSITIVE: True}
    return attrs.field(metadata=metadata, repr=False, **kwargs)


def sensitive_fields(message_type: type) -> frozenset[str]:
    """Return the names of the fields marked with :func:`sensitive`."""
    if not attrs.has(message_type):
        return frozenset()
    return frozenset(f.name for f in attrs.fields(message_type) if f.metadata.get(SENSITIVE))


def field_names(message_type: type) -> tuple[str, ...]:
    """The attrs field names of a message class (none for a class that is not attrs)."""
    cls: Any = message_type
    return tuple(f.name for f in attrs.fields(cls)) if attrs.has(cls) else ()


def fields_reader(names: tuple[str, ...], hidden: frozenset[str]) -> Callable[[Any], dict[str, Any]]:
    """A function giving a message's fields for a log line, sensitive ones masked: made once per message type.

    Written out as one dict display, so a dispatch's log line costs no loop over the names.
    """
    items = ", ".join(f"{name!r}: {'masked' if name in hidden else f'message.{name}'}" for name in names)
    namespace = _codegen.Namespace(masked="***")
    return _codegen.function("read_fields", ["message"], [f"return {{{items}}}"], namespace, about="log fields")
