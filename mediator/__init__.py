"""A typed, mediator-style, in-process CQRS framework.

Declare messages whose base class carries the result type, register handlers
and behaviours on a :class:`Registry`, and build a :class:`Mediator` (or an
:class:`AsyncMediator`) once; every check and every composition happens then.

The read-model engine is :mod:`mediator.readmodels`; the embeddings and integrations are modules of their own,
each behind its extra: :mod:`mediator.fastapi`, :mod:`mediator.wsgi`, :mod:`mediator.otel`,
:mod:`mediator.relay`, :mod:`mediator.nats`.
"""

from ._behaviours import ExceptionHooks, Handled, Logging, Validation
from ._build import Explanation
from ._compile import Build
from ._context import DispatchContext, Scope, current_context
from ._di import Lifetime
from ._errors import (
    AuthenticationError,
    ConsumeError,
    HandlerNotFoundError,
    HookError,
    IdempotencyKeyError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    MediatorError,
    MissingExtraError,
    NotAMessageError,
    PublishError,
    RegistryFrozenError,
    ScopeError,
    SubscriptionError,
    ValidationError,
    ValidatorError,
    WiringError,
)
from ._live import Answer, AsyncSubscription, ChangeFeed, DependsOnKeys, Subscription, Watch
from ._mediator import AsyncMediator, Mediator
from ._messages import Command, Event, IdempotentCommand, Kind, Message, Query, StreamQuery, sensitive
from ._messages import name_by_package as _name_by_package
from ._notify import PublishStrategy
from ._pipeline import AsyncBehaviour, Behaviour
from ._registry import HandlerBinder, HandlerMark, Handles, Registry, Validates, handles

__all__ = [
    "Answer",
    "AsyncBehaviour",
    "AsyncMediator",
    "AsyncSubscription",
    "AuthenticationError",
    "Behaviour",
    "Build",
    "ChangeFeed",
    "Command",
    "ConsumeError",
    "DependsOnKeys",
    "DispatchContext",
    "Event",
    "ExceptionHooks",
    "Explanation",
    "Handled",
    "HandlerBinder",
    "HandlerMark",
    "HandlerNotFoundError",
    "Handles",
    "HookError",
    "IdempotencyKeyError",
    "IdempotencyKeyInUseError",
    "IdempotencyKeyMismatchError",
    "IdempotentCommand",
    "Kind",
    "Lifetime",
    "Logging",
    "Mediator",
    "MediatorError",
    "Message",
    "MissingExtraError",
    "NotAMessageError",
    "PublishError",
    "PublishStrategy",
    "Query",
    "Registry",
    "RegistryFrozenError",
    "Scope",
    "ScopeError",
    "StreamQuery",
    "Subscription",
    "SubscriptionError",
    "Validates",
    "Validation",
    "ValidationError",
    "ValidatorError",
    "Watch",
    "WiringError",
    "current_context",
    "handles",
    "sensitive",
]

_name_by_package(globals())
