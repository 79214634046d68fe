"""The Logging behaviour: one structured line per dispatch, sensitive fields masked."""

import asyncio
import logging

import attrs
import pytest
import structlog
from structlog.testing import capture_logs

from mediator import Command, Logging, Mediator, Registry

from .sample import Add, Fail, GetName, Pay, fail


class Outer:
    def __init__(self, mediator: Mediator) -> None:
        self.mediator = mediator

    def handle(self, query: GetName) -> str:
        return str(self.mediator.send(Add(value=query.id)))


def build(**options: object) -> Mediator:
    reg = Registry()
    reg.behaviour(Logging(**options))  # type: ignore[arg-type]
    reg.handle(Add).by(lambda command: command.value)
    reg.handle(Fail).by(fail)
    reg.handle(Pay).by(lambda command: "paid")
    reg.handle(GetName).by(Outer)
    return reg.build()


def test_success_is_logged_with_type_kind_ids_duration_and_outcome() -> None:
    mediator = build()
    with capture_logs() as logs:
        mediator.send(Add(value=3))
    (entry,) = logs
    assert entry["event"] == "message handled"
    assert entry["log_level"] == "info"
    assert entry["message_type"] == "tests.mediator.sample.Add"
    assert entry["kind"] == "command"
    assert entry["outcome"] == "ok"
    assert entry["duration_ms"] >= 0
    assert entry["duration_ms"] == round(entry["duration_ms"], 3)  # to the microsecond
    assert len(entry["correlation_id"]) == 32
    assert entry["causation_id"] is None
    assert entry["fields"] == {"value": 3}


def test_failure_is_logged_with_the_error_type() -> None:
    mediator = build()
    with capture_logs() as logs, pytest.raises(RuntimeError):
        mediator.send(Fail(reason="x"))
    (entry,) = logs
    assert entry["log_level"] == "error"
    assert entry["outcome"] == "error"
    assert entry["error_type"] == "RuntimeError"


def test_sensitive_fields_are_never_logged() -> None:
    mediator = build()
    with capture_logs() as logs:
        mediator.send(Pay(amount=5, card_number="4111 1111 1111 1111"))
    (entry,) = logs
    assert entry["fields"] == {"amount": 5, "card_number": "***"}
    assert "4111" not in repr(logs)


def test_nested_dispatch_shares_correlation_and_names_its_cause() -> None:
    mediator = build()
    with capture_logs() as logs:
        mediator.ask(GetName(id=4))
    inner, outer = logs
    assert inner["message_type"].endswith("Add")
    assert outer["message_type"].endswith("GetName")
    assert inner["correlation_id"] == outer["correlation_id"]
    assert inner["causation_id"] == outer["message_id"]
    assert inner["message_id"] != outer["message_id"]


def test_explicit_scope_correlation_id_is_logged() -> None:
    mediator = build()
    with capture_logs() as logs, mediator.scope(correlation_id="req-42"):
        mediator.send(Add(value=1))
    assert logs[0]["correlation_id"] == "req-42"


def test_disabled_level_formats_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: object) -> None:
        raise AssertionError("formatted a log line for a disabled level")

    monkeypatch.setattr("mediator._behaviours._BoundLogging._fields", must_not_run)
    monkeypatch.setattr("mediator._behaviours._BoundLogging._ok", must_not_run)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        reg = Registry()
        reg.behaviour(Logging(level="info", error_level="info"))
        reg.handle(Add).by(lambda command: command.value)
        mediator = reg.build()
        with capture_logs() as logs:
            assert mediator.send(Add(value=1)) == 1
        assert logs == []
    finally:
        structlog.reset_defaults()
    # the same mediator built with the level enabled does format (the patch above bites)
    reg = Registry()
    reg.behaviour(Logging(level="info"))
    reg.handle(Add).by(lambda command: command.value)
    with pytest.raises(AssertionError, match="formatted a log line"):
        reg.build().send(Add(value=1))


def test_fields_can_be_left_out() -> None:
    mediator = build(include_fields=False)
    with capture_logs() as logs:
        mediator.send(Add(value=1))
    assert "fields" not in logs[0]


def test_async_twin_logs_the_same_way() -> None:
    reg = Registry()
    reg.behaviour(Logging())
    reg.handle(Add).by(lambda command: command.value)
    mediator = reg.build_async()
    with capture_logs() as logs:
        asyncio.run(mediator.send(Add(value=2)))
    assert logs[0]["outcome"] == "ok"
    assert logs[0]["fields"] == {"value": 2}


def test_logging_disabled_at_build_leaves_the_chain() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    try:
        reg = Registry()
        reg.behaviour(Logging())
        reg.handle(Add).by(lambda command: command.value)
        explanation = reg.build().explain(Add)
    finally:
        structlog.reset_defaults()
    assert explanation.behaviours == ()
    assert not explanation.opens_scope


def test_the_generated_fields_reader_gives_every_field_with_sensitive_ones_masked() -> None:
    from mediator import sensitive
    from mediator._messages import field_names, fields_reader, sensitive_fields

    @attrs.frozen(kw_only=True)
    class Signup(Command[None]):
        name: str
        email: str = sensitive()
        tags: tuple[str, ...] = ()

    message = Signup(name="Ada", email="ada@example.com", tags=("x",))
    names, hidden = field_names(Signup), sensitive_fields(Signup)
    assert fields_reader(names, hidden)(message) == {"name": "Ada", "email": "***", "tags": ("x",)}
    assert fields_reader((), frozenset())(message) == {}
