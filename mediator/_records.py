"""What a registry records: handlers, behaviours, validators, hooks and services, as plain values.

A :class:`~mediator.Registry` fills one :class:`Registrations`; building a mediator reads it and changes
nothing in it but the services it learns at build (handler classes the container makes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import punq

from ._di import Lifetime, Service
from ._messages import Kind, Message, kind_of
from ._notify import PublishStrategy

AppliesTo = Kind | type | tuple[Kind | type, ...] | None
"""Which messages a behaviour or hook applies to: all (``None``), a kind, classes, or a mix."""


@attrs.frozen
class HandlerRegistration:
    """One handler bound to one message type."""

    message_type: type[Message]
    kind: Kind
    handler: Any
    lifetime: Lifetime


@attrs.frozen
class BehaviourRegistration:
    """One behaviour, its position (registration order) and what it applies to."""

    behaviour: Any
    applies_to: AppliesTo
    lifetime: Lifetime
    innermost: bool = False
    """Kept inside every behaviour registered after it too (as the read-model engine's idempotency check)."""


@attrs.frozen
class ValidatorRegistration:
    message_type: type[Message]
    validator: Any
    lifetime: Lifetime


@attrs.frozen
class HookRegistration:
    exception_type: type[Exception]
    hook: Callable[[Any, Any], Any]
    applies_to: AppliesTo


def applies(applies_to: AppliesTo, message_type: type) -> bool:
    """Whether a behaviour or hook registered with ``applies_to`` covers ``message_type``."""
    if applies_to is None:
        return True
    targets = applies_to if isinstance(applies_to, tuple) else (applies_to,)
    kind = kind_of(message_type)
    return any(t is kind if isinstance(t, Kind) else issubclass(message_type, t) for t in targets)


@attrs.define
class Registrations:
    """Everything registered on one registry, in registration order."""

    container: punq.Container
    publish_strategy: PublishStrategy = PublishStrategy.STOP_ON_FIRST_ERROR
    include_base_event_handlers: bool = False
    handlers: list[HandlerRegistration] = attrs.field(factory=list)
    behaviours: list[BehaviourRegistration] = attrs.field(factory=list)
    validators: list[ValidatorRegistration] = attrs.field(factory=list)
    hooks: list[HookRegistration] = attrs.field(factory=list)
    services: dict[Any, Service] = attrs.field(factory=dict)
    """The services by key; the newest registration of a key wins, as in punq."""
    expected: list[type[Message]] = attrs.field(factory=list)
    """Message types that must have a handler (``expect``, ``scan``)."""
    live: Any = None
    """The change feed subscriptions wait on (a :class:`~mediator._live.ChangeFeed`), if one was given."""
