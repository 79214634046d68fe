"""A typed, mediator-style, in-process CQRS framework.

Declare messages whose base class carries the result type, register handlers
and behaviours on a :class:`Registry`, and build a :class:`Mediator` (or an
:class:`AsyncMediator`) once; every check and every composition happens then.
"""

from ._behaviours import ExceptionHooks, Handled, HookError, Logging, Validation, ValidatorError
from ._build import Build, Explanation
from ._context import DispatchContext, Scope, current_context
from ._di import Lifetime
from ._errors import (
    HandlerNotFoundError,
    MediatorError,
    NotAMessageError,
    RegistryFrozenError,
    ScopeError,
    ValidationError,
    WiringError,
)
from ._mediator import AsyncMediator, Mediator
from ._messages import Command, Event, Kind, Message, Query, StreamQuery, sensitive
from ._notify import PublishStrategy
from ._pipeline import AsyncBehaviour, Behaviour
from ._registry import HandlerBinder, Handles, Registry, Validates, handles

__all__ = [
    "AsyncBehaviour",
    "AsyncMediator",
    "Behaviour",
    "Build",
    "Command",
    "DispatchContext",
    "Event",
    "ExceptionHooks",
    "Explanation",
    "Handled",
    "HandlerBinder",
    "HandlerNotFoundError",
    "Handles",
    "HookError",
    "Kind",
    "Lifetime",
    "Logging",
    "Mediator",
    "MediatorError",
    "Message",
    "NotAMessageError",
    "PublishStrategy",
    "Query",
    "Registry",
    "RegistryFrozenError",
    "Scope",
    "ScopeError",
    "StreamQuery",
    "Validates",
    "Validation",
    "ValidationError",
    "ValidatorError",
    "WiringError",
    "current_context",
    "handles",
    "sensitive",
]
