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
    """A digest of ``command``'s payload: SHA-256 (hex) of ``repr`` of its canonical form (:func:`canonical`), the
    key left out (so equal payloads digest alike under any key)."""
    form = _PAYLOADS.get(type(command))
    if form is None:
        form = _PAYLOADS[type(command)] = _attrs_form(type(command), skip="idempotency_key")
    return hashlib.sha256(repr(form(command)).encode("utf-8", "surrogatepass")).hexdigest()


def canonical(value: Any) -> Any:
    """``value`` as nested tuples of plain values, the same for equal values in any process: an attrs instance as
    the tuple of its fields in order, a list or tuple as a tuple, a set as a sorted tuple, a mapping as the tuple
    of its items in its own order (a client that sends a body again sends it so); text, numbers, ``None``, dates,
    decimals, UUIDs and enum members stay as they are (their ``repr`` is canonical). Worked out once per class,
    as :func:`~mediator.readmodels._serialization.to_data` is, at a fraction of its cost: no dict per object."""
    form = _FORMS.get(type(value))
    if form is None:
        form = _FORMS[type(value)] = _form_of(type(value))
    return form(value)


def _same(value: Any) -> Any:
    return value


def _sequence(value: Any) -> tuple[Any, ...]:
    return tuple(map(canonical, value))


def _set(value: Any) -> tuple[Any, ...]:
    return tuple(sorted((canonical(item) for item in value), key=repr))


def _mapping(value: Any) -> tuple[Any, ...]:
    return tuple((canonical(k), canonical(v)) for k, v in value.items())


def _form_of(cls: type) -> Callable[[Any], Any]:
    if attrs.has(cls):
        return _attrs_form(cls)
    if issubclass(cls, list | tuple):
        return _sequence
    if issubclass(cls, set | frozenset):
        return _set
    if issubclass(cls, Mapping):
        return _mapping
    if issubclass(cls, _PLAIN):
        return _same  # their repr is canonical
    raise TypeError(f"Cannot digest a {qualname(cls)} in an idempotent command; use the types events may hold.")


def _attrs_form(cls: type, skip: str | None = None) -> Callable[[Any], Any]:
    namespace = _codegen.Namespace()
    canon = namespace.add("canonical", canonical)
    plain = (str, int, float, bool, type(None))
    parts = []
    for field in attrs.fields(cls):
        if field.name == skip:
            continue
        # A field annotated as plain text or a number is taken as it is: no call per value.
        parts.append(f"value.{field.name}" if field.type in plain or field.type in {"str", "int", "float", "bool"}
                     else f"{canon}(value.{field.name})")
    body = f"return ({', '.join(parts)}{',' if len(parts) == 1 else ''})"
    return _codegen.function("form", ["value"], [body], namespace, about=f"canonical form of {qualname(cls)}")


_PLAIN = (str, int, float, bool, type(None), bytes, decimal.Decimal, uuid.UUID, dt.date, dt.time, dt.timedelta,
          enum.Enum)
_FORMS: dict[type, Callable[[Any], Any]] = {}
"""How each class's values turn into their canonical form: a cache of generated code, not a registry."""
_PAYLOADS: dict[type, Callable[[Any], Any]] = {}
"""The same for idempotent commands, their key left out."""


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
