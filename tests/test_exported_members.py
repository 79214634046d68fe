"""Pin the public surface: what ``mediator`` exports is a decision, not an accident."""

import mediator
import mediator.testing


def test_all_is_sorted_and_complete() -> None:
    assert mediator.__all__ == sorted(mediator.__all__)
    public = {name for name in dir(mediator) if not name.startswith("_")}
    assert set(mediator.__all__) <= public


def test_exported_members() -> None:
    assert mediator.__all__ == [
        "Answer", "AsyncBehaviour", "AsyncMediator", "AsyncSubscription", "AuthenticationError", "Behaviour",
        "Build", "ChangeFeed", "Command", "ConsumeError", "DependsOnKeys", "DispatchContext", "Event",
        "ExceptionHooks", "Explanation", "Handled", "HandlerBinder", "HandlerMark", "HandlerNotFoundError",
        "Handles", "HookError", "IdempotencyKeyError", "IdempotencyKeyInUseError", "IdempotencyKeyMismatchError",
        "IdempotentCommand", "Kind", "Lifetime", "Logging", "Mediator", "MediatorError", "Message",
        "MissingExtraError", "NotAMessageError", "PublishError", "PublishStrategy", "Query", "Registry",
        "RegistryFrozenError", "Scope", "ScopeError", "StreamQuery", "Subscription", "SubscriptionError",
        "Validates", "Validation", "ValidationError", "ValidatorError", "Watch", "WiringError", "current_context",
        "handles", "sensitive",
    ]


def test_every_error_has_one_root_and_a_builtin_parent() -> None:
    errors = [getattr(mediator, n) for n in mediator.__all__ if n.endswith("Error")]
    for error in errors:
        assert issubclass(error, mediator.MediatorError), error
        if error is not mediator.MediatorError:
            builtin_parents = [b for b in error.__mro__[1:] if b.__module__ == "builtins" and b is not Exception]
            assert builtin_parents, f"{error.__name__} should also subclass a matching built-in"


def test_testing_all_is_sorted() -> None:
    assert mediator.testing.__all__ == sorted(mediator.testing.__all__)


def test_public_classes_are_named_by_the_package_not_their_private_module() -> None:
    for name in mediator.__all__:
        member = getattr(mediator, name)
        if isinstance(member, type):
            assert member.__module__ == "mediator", name
    assert repr(mediator.Lifetime.SCOPED) == "Lifetime.SCOPED"
