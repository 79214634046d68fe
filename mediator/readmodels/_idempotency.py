"""Idempotent commands: a command sent again under the same key answers the first one's result, and runs once.

:class:`~mediator.IdempotentCommand` carries an ``idempotency_key``. The :class:`Idempotency` behaviour, inside
the command's transaction (it runs within :class:`~mediator.readmodels.SyncReadModels`), reads the record kept
under the key:

- none, or one that expired: the handler runs, and the key, the command's name, a digest of its payload and its
  result are kept in the same transaction as its writes and events, with the transaction's consistency token
  (the writer adds that after the append, when it is known);
- one for the same command and payload: the handler does not run; the stored result is decoded and answered, and
  the stored token becomes the caller's :func:`~mediator.readmodels.last_token`;
- one for another command or payload: :class:`~mediator.IdempotencyKeyMismatchError`.

Two repeats at once run the handler once. In one process, a key whose command is running is refused with
:class:`~mediator.IdempotencyKeyInUseError` (nothing ran; send it again later). Across processes, SQLite's
writers take turns, so the second waits for the first to commit and answers its result; PostgreSQL's overlap, so
the key is locked to commit, and the second is refused with the same error.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import json
import marshal
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from .. import _codegen
from .._context import _current
from .._errors import IdempotencyKeyError, IdempotencyKeyInUseError, IdempotencyKeyMismatchError
from .._messages import MAX_IDEMPOTENCY_KEY, IdempotentCommand, declared_result, qualname
from ._ports import IdempotencyRecord
from ._serialization import json_converter, to_data
from ._unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from .._compile import Build
    from ._engine import ReadModels

_text: Callable[[str], str] = json.encoder.encode_basestring
"""A string as JSON, as ``_dumps`` writes it (non-ASCII kept)."""
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def digest_of(command: IdempotentCommand[Any]) -> str:
    """A digest of ``command``'s payload: SHA-256 (hex) of its canonical form (:func:`canonical`) written out by
    :mod:`marshal` (format 2: no back-references, so equal values write alike however they are shared or
    interned), the key left out (so equal payloads digest alike under any key)."""
    form = _PAYLOADS.get(type(command))
    if form is None:
        form = _PAYLOADS[type(command)] = _attrs_form(type(command), skip="idempotency_key")
    try:
        written = marshal.dumps(form(command), 2)
    except ValueError:  # a field annotated as text or a number held a subclass (an enum member, say)
        written = marshal.dumps(_strict_form(type(command))(command), 2)
    return hashlib.sha256(written).hexdigest()


def canonical(value: Any) -> Any:
    """``value`` as nested tuples of values :mod:`marshal` writes the same in any process: an attrs instance as
    the tuple of its fields in order, a list or tuple as a tuple, a set as a tuple sorted by ``repr``, a mapping
    as the tuple of its items in its own order (a client that sends a body again sends it so); text, bytes,
    numbers, booleans and ``None`` of their exact types stay as they are; other plain values (dates, decimals,
    UUIDs, enum members, subclasses of text or numbers) become ``(..., repr(value))`` (their ``repr`` is
    canonical, and no payload holds ``...``, so the two cannot be mistaken for each other). Worked out once per
    class, as :func:`~mediator.readmodels._serialization.to_data` is, at a fraction of its cost: no dict per
    object.

    A field annotated as text or a number is taken as it is, with no call; where it holds a subclass,
    :mod:`marshal` refuses it and :func:`digest_of` writes the payload out again with every field converted."""
    form = _FORMS.get(type(value))
    if form is None:
        form = _FORMS[type(value)] = _form_of(type(value), strict=False)
    return form(value)


def _strict(value: Any) -> Any:
    """:func:`canonical` with no field taken as it is (for a payload :mod:`marshal` refused)."""
    form = _STRICT.get(type(value))
    if form is None:
        form = _STRICT[type(value)] = _form_of(type(value), strict=True)
    return form(value)


def _strict_form(cls: type) -> Callable[[Any], Any]:
    form = _STRICT_PAYLOADS.get(cls)
    if form is None:
        form = _STRICT_PAYLOADS[cls] = _attrs_form(cls, skip="idempotency_key", strict=True)
    return form


def _same(value: Any) -> Any:
    return value


def _repr(value: Any) -> tuple[Any, str]:
    return (..., repr(value))


def _sequence(each: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda value: tuple(map(each, value))


def _set(each: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda value: tuple(sorted(map(each, value), key=repr))


def _mapping(each: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    return lambda value: tuple((each(k), each(v)) for k, v in value.items())


def _form_of(cls: type, strict: bool) -> Callable[[Any], Any]:
    each = _strict if strict else canonical
    if attrs.has(cls):
        return _attrs_form(cls, strict=strict)
    if cls in _MARSHALLED:
        return _same
    if issubclass(cls, list | tuple):
        return _sequence(each)
    if issubclass(cls, set | frozenset):
        return _set(each)
    if issubclass(cls, Mapping):
        return _mapping(each)
    if issubclass(cls, _PLAIN):
        return _repr
    raise TypeError(f"Cannot digest a {qualname(cls)} in an idempotent command; use the types events may hold.")


def _attrs_form(cls: type, skip: str | None = None, strict: bool = False) -> Callable[[Any], Any]:
    namespace = _codegen.Namespace()
    each = namespace.add("canonical", _strict if strict else canonical)
    parts = []
    for field in attrs.fields(cls):
        if field.name == skip:
            continue
        # A field annotated as text or a number is taken as it is: no call per value (see canonical()).
        plain = not strict and (field.type in _MARSHALLED or field.type in {"str", "int", "float", "bool"})
        parts.append(f"value.{field.name}" if plain else f"{each}(value.{field.name})")
    body = f"return ({', '.join(parts)}{',' if len(parts) == 1 else ''})"
    return _codegen.function("form", ["value"], [body], namespace, about=f"canonical form of {qualname(cls)}")


_MARSHALLED = frozenset({str, int, float, bool, type(None), bytes})
"""The types :mod:`marshal` writes (exactly these, not their subclasses) that a payload holds as they are."""
_PLAIN = (str, int, float, bool, bytes, decimal.Decimal, uuid.UUID, dt.date, dt.time, dt.timedelta, enum.Enum)
_FORMS: dict[type, Callable[[Any], Any]] = {}
"""How each class's values turn into their canonical form: a cache of generated code, not a registry."""
_STRICT: dict[type, Callable[[Any], Any]] = {}
"""The same with no field taken as it is."""
_PAYLOADS: dict[type, Callable[[Any], Any]] = {}
"""The same for idempotent commands, their key left out."""
_STRICT_PAYLOADS: dict[type, Callable[[Any], Any]] = {}


class Idempotency:
    """The behaviour that runs an :class:`~mediator.IdempotentCommand` once per key (added by
    :meth:`ReadModels.install`, inside :class:`~mediator.readmodels.SyncReadModels`, with its :attr:`claims`
    outside it)."""

    needs_scope = True

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.running: dict[str, object] = {}
        """The keys whose commands run in this process now, each with its call's marker."""
        self.absorbed: dict[str, int] = {}
        """Repeats answered from a record without running their handler, in this process, by command (for
        metrics: :func:`mediator.otel.instrument` exports them)."""
        self.claims = IdempotencyClaims(self.running)

    def for_message(self, message_type: type, build: Build) -> _BoundIdempotency | None:
        if not (isinstance(message_type, type) and issubclass(message_type, IdempotentCommand)):
            return None
        return _BoundIdempotency(self, message_type, json_converter(declared_result(message_type)))


class IdempotencyClaims:
    """The behaviour that refuses a key whose command runs in this process now, outside the transaction.

    Outside, because async commands on one event loop take turns for the storage (see
    :class:`~mediator.readmodels.SyncReadModels`): a repeat waiting its turn would answer the first's result,
    where the IETF draft asks for a conflict while the first is still running. Async mediators only: a sync
    command's transaction begins lazily, so :class:`Idempotency`, inside the unit of work's behaviour, claims the
    key before it, at no pipeline step of its own (unless a behaviour between them began the transaction: on
    SQLite a repeat then waits for the first and answers its result, which is as safe).
    """

    def __init__(self, running: dict[str, object]) -> None:
        self.running = running

    def for_message(self, message_type: type, build: Build) -> _BoundIdempotencyClaims | None:
        if not (build.is_async and isinstance(message_type, type) and issubclass(message_type, IdempotentCommand)):
            return None  # (a sync command's claim is taken by Idempotency: see there)
        return _BoundIdempotencyClaims(self.running, message_type)


def _claim(running: dict[str, object], key: object, command: type) -> object:
    """Claim ``key`` for a call in this process (checked first); the marker to release it with (:func:`_release`).

    Raises:
        IdempotencyKeyError: if ``key`` cannot be one.
        IdempotencyKeyInUseError: if a command with ``key`` runs in this process now.
    """
    if type(key) is not str or not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise IdempotencyKeyError(key, MAX_IDEMPOTENCY_KEY)
    marker = object()
    if running.setdefault(key, marker) is not marker:
        raise IdempotencyKeyInUseError(key, command)
    return marker


def _release(running: dict[str, object], key: str, marker: object) -> None:
    if running.get(key) is marker:
        del running[key]


class _BoundIdempotencyClaims:
    __slots__ = ("command", "running")

    def __init__(self, running: dict[str, object], command: type) -> None:
        self.running = running
        self.command = command

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        key = message.idempotency_key
        if key is None:
            return await next(message)
        marker = _claim(self.running, key, self.command)
        try:
            return await next(message)
        finally:
            _release(self.running, key, marker)


class _BoundIdempotency:
    __slots__ = ("command", "decode", "engine", "name", "owner", "running")

    needs_scope = True

    def __init__(self, owner: Idempotency, command: type, decode: Callable[[str], Any]) -> None:
        self.owner = owner
        self.engine = owner.engine
        self.running = owner.running
        self.command = command
        self.name = qualname(command)
        self.decode = decode

    def _recall(self, message: Any, key: str) -> tuple[UnitOfWork, str, float, IdempotencyRecord | None]:
        """The record to answer from (``None`` if the handler is to run), with the unit of work, digest and time."""
        uow: UnitOfWork = _current.get().scope.get(UnitOfWork)  # type: ignore[union-attr]  # SyncReadModels made it
        digest = digest_of(message)
        try:
            record = uow.session.claim_key(key)
        except IdempotencyKeyInUseError:
            raise IdempotencyKeyInUseError(key, self.command) from None
        now = self.engine.clock()
        if record is None or record.expires_at <= now:
            return uow, digest, now, None
        if record.command != self.name or record.digest != digest:
            raise IdempotencyKeyMismatchError(key, self.command, record.command)
        return uow, digest, now, record

    def _replay(self, uow: UnitOfWork, record: IdempotencyRecord) -> Any:
        uow.replayed = record.position
        absorbed = self.owner.absorbed  # no line of its own: the Logging behaviour logs the dispatch
        absorbed[self.name] = absorbed.get(self.name, 0) + 1
        return self.decode(record.result)

    def _keep(self, uow: UnitOfWork, key: str, digest: str, now: float, result: Any) -> None:
        try:  # (the two commonest results written out directly: an id, nothing)
            stored = _text(result) if type(result) is str else "null" if result is None else _dumps(to_data(result))
        except TypeError as exc:
            raise TypeError(f"{self.name} answered {result!r}, which cannot be stored for its repeats ({exc}); "
                            "answer JSON-friendly types.") from exc
        uow._keys.append((key, self.name, digest, stored, now, now + self.engine.idempotency_ttl))

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        key = message.idempotency_key
        if key is None:
            return next(message)
        marker = _claim(self.running, key, self.command)  # (IdempotencyClaims' on async mediators)
        try:
            uow, digest, now, record = self._recall(message, key)
            if record is not None:
                return self._replay(uow, record)
            result = next(message)
            self._keep(uow, key, digest, now, result)
            return result
        finally:
            _release(self.running, key, marker)

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        key = message.idempotency_key
        if key is None:
            return await next(message)
        uow, digest, now, record = self._recall(message, key)
        if record is not None:
            return self._replay(uow, record)
        result = await next(message)
        self._keep(uow, key, digest, now, result)
        return result
