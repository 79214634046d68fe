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

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._context import _current
from .._errors import IdempotencyKeyError, IdempotencyKeyInUseError, IdempotencyKeyMismatchError
from .._messages import MAX_IDEMPOTENCY_KEY, IdempotentCommand, declared_result, qualname
from ._ports import IdempotencyRecord
from ._serialization import json_converter, to_data
from ._unit_of_work import UnitOfWork

if TYPE_CHECKING:
    from .._compile import Build
    from ._engine import ReadModels

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def digest_of(command: IdempotentCommand[Any]) -> str:
    """A digest of ``command``'s payload: SHA-256 (hex) of its fields but the key, converted as they would be
    stored (:func:`~mediator.readmodels._serialization.to_data`) and written out in field order.

    ``repr`` of the converted fields rather than JSON: it is canonical for what they hold (text, numbers, lists,
    dicts in field order) at half the cost. A mapping field digests in its own order, as a client that sends the
    same body again sends it.
    """
    data = to_data(command)
    data["idempotency_key"] = None  # (compared only under one key: kept out so that equal payloads digest alike)
    return hashlib.sha256(repr(data).encode("utf-8", "surrogatepass")).hexdigest()


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
    where the IETF draft asks for a conflict while the first is still running.
    """

    def __init__(self, running: dict[str, object]) -> None:
        self.running = running

    def for_message(self, message_type: type, build: Build) -> _BoundIdempotencyClaims | None:
        if not (isinstance(message_type, type) and issubclass(message_type, IdempotentCommand)):
            return None
        return _BoundIdempotencyClaims(self.running, message_type)


class _BoundIdempotencyClaims:
    __slots__ = ("command", "running")

    def __init__(self, running: dict[str, object], command: type) -> None:
        self.running = running
        self.command = command

    def _claim(self, key: object) -> object:
        if type(key) is not str or not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise IdempotencyKeyError(key, MAX_IDEMPOTENCY_KEY)
        marker = object()
        if self.running.setdefault(key, marker) is not marker:
            raise IdempotencyKeyInUseError(key, self.command)
        return marker

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        key = message.idempotency_key
        if key is None:
            return next(message)
        marker = self._claim(key)
        try:
            return next(message)
        finally:
            if self.running.get(key) is marker:
                del self.running[key]

    async def handle_async(self, message: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        key = message.idempotency_key
        if key is None:
            return await next(message)
        marker = self._claim(key)
        try:
            return await next(message)
        finally:
            if self.running.get(key) is marker:
                del self.running[key]


class _BoundIdempotency:
    __slots__ = ("command", "decode", "engine", "name", "owner")

    needs_scope = True

    def __init__(self, owner: Idempotency, command: type, decode: Callable[[str], Any]) -> None:
        self.owner = owner
        self.engine = owner.engine
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
        try:
            stored = _dumps(to_data(result))
        except TypeError as exc:
            raise TypeError(f"{self.name} answered {result!r}, which cannot be stored for its repeats ({exc}); "
                            "answer JSON-friendly types.") from exc
        uow._keys.append((key, self.name, digest, stored, now, now + self.engine.idempotency_ttl))

    def handle(self, message: Any, next: Callable[[Any], Any]) -> Any:
        key = message.idempotency_key
        if key is None:
            return next(message)
        uow, digest, now, record = self._recall(message, key)
        if record is not None:
            return self._replay(uow, record)
        result = next(message)
        self._keep(uow, key, digest, now, result)
        return result

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
