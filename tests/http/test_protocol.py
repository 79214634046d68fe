"""What both embeddings share (``mediator.http``): correlation ids, headers, the body limit, identity errors, the
answers to real database driver errors, and what of a failure is safe to log."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mediator import AuthenticationError
from mediator.http import (
    MAX_BODY,
    RequestTooLargeError,
    StatusMap,
    asgi_headers,
    challenge,
    check_length,
    correlation_id_of,
    failure_fields,
    problem_for,
    wsgi_headers,
)
from mediator.readmodels import ConsistencyTimeoutError, StorageError
from tests import postgres

from .service import FAILURES


@pytest.mark.parametrize("sent", ["req-42", "a.b:c_d-1", "X" * 128, "0"])
def test_a_valid_correlation_id_is_kept(sent: str) -> None:
    assert correlation_id_of(sent) == sent


@pytest.mark.parametrize("sent", [None, "", "X" * 129, "café", "caf\xc3\xa9", "a b", "a\nb", "a,b", "<script>",
                                  "id\x00", "\u2028"])
def test_anything_else_is_replaced_by_a_new_id(sent: str | None) -> None:
    made = correlation_id_of(sent)
    assert made != sent
    assert len(made) == 32
    assert made.isascii()
    assert made.isalnum()


def test_asgi_headers_are_lower_case_and_take_the_first_value() -> None:
    raw = [(b"X-Customer-Id", b"first"), (b"x-customer-id", b"second"), (b"X-Other", "é".encode("latin-1"))]
    assert asgi_headers(raw) == {"x-customer-id": "first", "x-other": "é"}


def test_wsgi_headers_take_the_text_before_the_first_comma_of_a_joined_header() -> None:
    environ = {"HTTP_X_CUSTOMER_ID": "first,second", "HTTP_AUTHORIZATION": "Bearer a.b.c, Bearer d.e.f",
               "HTTP_X_CORRELATION_ID": "  req-1 ", "CONTENT_TYPE": "text/plain", "wsgi.input": object()}
    assert wsgi_headers(environ) == {"x-customer-id": "first", "authorization": "Bearer a.b.c",
                                     "x-correlation-id": "req-1"}


def test_a_declared_length_over_the_limit_is_a_413_and_one_that_is_not_a_length_a_400() -> None:
    assert check_length(None, MAX_BODY) is None
    assert check_length("", MAX_BODY) is None
    assert check_length(str(MAX_BODY), MAX_BODY) is None
    assert check_length("150000000", None) is None  # no limit
    over = check_length(str(MAX_BODY + 1), MAX_BODY)
    assert over is not None
    assert (over.status, over.error) == (413, "too_large")
    for bad in ("abc", "-1", "1e6", "9" * 40):
        refused = check_length(bad, MAX_BODY)
        assert refused is not None
        assert (refused.status, refused.error) == (400, "bad_request"), bad
    found = problem_for(RequestTooLargeError(10))
    assert found is not None
    assert (found.status, found.error) == (413, "too_large")


def test_an_authentication_error_is_a_401_with_a_challenge() -> None:
    missing = problem_for(AuthenticationError("No token was sent", missing=True))
    invalid = problem_for(AuthenticationError('The "token" has expired\\'))
    assert missing is not None
    assert invalid is not None
    assert (missing.status, missing.error, missing.detail) == (401, "unauthenticated", "No token was sent")
    assert dict(missing.headers) == {"WWW-Authenticate": "Bearer"}
    assert dict(invalid.headers) == {
        "WWW-Authenticate": 'Bearer error="invalid_token", error_description="The ?token? has expired?"'}
    assert challenge(AuthenticationError("bad", scheme="DPoP")).startswith("DPoP error=")
    assert isinstance(AuthenticationError("x"), PermissionError)


def test_an_application_error_mapped_to_401_carries_a_challenge_and_403_stays_403() -> None:
    class SignIn(PermissionError):
        pass

    status_of: StatusMap = {SignIn: (401, "unauthenticated"), PermissionError: (403, "forbidden")}
    signed_out, forbidden = problem_for(SignIn("sign in"), status_of), problem_for(PermissionError("no"), status_of)
    assert signed_out is not None
    assert forbidden is not None
    assert (signed_out.status, dict(signed_out.headers)) == (401, {"WWW-Authenticate": "Bearer"})
    assert (forbidden.status, forbidden.headers) == (403, ())


def raised(failure: Callable[[], None]) -> BaseException:
    try:
        failure()
    except Exception as exc:
        return exc
    raise AssertionError("it did not fail")


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_sqlite_error_answers_by_what_it_means_bare_or_wrapped_in_a_storage_error(kind: str) -> None:
    failure, status = FAILURES[kind]
    error = raised(failure)
    wrapped = StorageError(f"SQLite failed to run a query: {error}")
    wrapped.__cause__ = error
    for exc in (error, wrapped):
        found = problem_for(exc)
        assert found is not None, exc
        assert found.status == status, (kind, exc)
        assert found.log is not None  # a value past validation, a conflict or an outage: each is worth a line
        if status == 503:
            assert ("Retry-After", "1") in found.headers


def test_an_error_raised_while_handling_a_driver_error_answers_as_that_error() -> None:
    def translate() -> None:
        try:
            FAILURES["overflow"][0]()
        except OverflowError:
            raise RuntimeError("lookup failed")  # noqa: B904  # chained implicitly, as careless code does

    found = problem_for(raised(translate))
    assert found is not None
    assert found.status == 422


def test_a_storage_error_that_is_a_value_error_is_the_requests_fault() -> None:
    class RefusedValue(StorageError, ValueError):  # as the storage says a value was refused
        pass

    refused, down = problem_for(RefusedValue("no NUL here")), problem_for(StorageError("connection refused"))
    assert refused is not None
    assert down is not None
    assert (refused.status, refused.error) == (422, "unprocessable_value")
    assert (down.status, down.error, down.log) == (503, "storage_unavailable", "storage unavailable")


def test_a_read_model_held_back_by_a_parked_event_is_a_503_without_the_events_reason() -> None:
    waited = ConsistencyTimeoutError(7, {"dashboard": 5}, 1.0)
    behind = problem_for(waited)
    assert behind is not None
    assert (behind.status, behind.error, behind.headers) == (503, "not_yet_consistent", (("Retry-After", "1"),))
    vars(waited)["parked"] = {"dashboard": "the event at 6 failed: Key (email)=(ada@example.com)"}  # its dead letter
    held = problem_for(waited)
    assert held is not None
    assert (held.status, held.error, dict(held.headers)) == (503, "read_model_held_back", {"Retry-After": "30"})
    assert "ada" not in repr(held.body())


def test_an_unknown_error_is_left_to_the_embedding() -> None:
    assert problem_for(RuntimeError("boom")) is None
    assert problem_for(KeyError("x")) is None


def test_postgres_errors_answer_by_what_they_mean() -> None:
    postgres.require()
    import psycopg

    def run(sql: str, *parameters: object, dsn: str = postgres.DSN) -> None:
        with psycopg.connect(dsn) as connection:
            connection.execute("CREATE TEMPORARY TABLE t (email TEXT UNIQUE, n INTEGER)")
            connection.execute("INSERT INTO t VALUES ('taken@example.com', 1)")
            connection.execute(sql, parameters)

    expected = {
        "NUL in text": (lambda: run("SELECT %s::text", "a\x00b"), 422),
        "out of range": (lambda: run("INSERT INTO t VALUES ('x', %s)", 2**40), 422),
        "not a number": (lambda: run("SELECT %s::int", "forty"), 422),
        "unique violation": (lambda: run("INSERT INTO t VALUES ('taken@example.com', 2)"), 409),
        "undefined table": (lambda: run("SELECT * FROM no_such_table"), 503),
        "server down": (lambda: run("SELECT 1", dsn="host=127.0.0.1 port=1 dbname=x connect_timeout=1"), 503),
    }
    for name, (failure, status) in expected.items():
        error = raised(failure)
        assert isinstance(error, psycopg.Error), (name, error)
        found = problem_for(error)
        assert found is not None, name
        assert found.status == status, (name, type(error), error)


def test_a_postgres_errors_detail_line_with_the_values_is_never_logged() -> None:
    postgres.require()
    import psycopg

    def duplicate() -> None:
        with psycopg.connect(postgres.DSN) as connection:
            connection.execute("CREATE TEMPORARY TABLE t (email TEXT UNIQUE)")
            connection.execute("INSERT INTO t VALUES (%s)", ("ada.secret@example.com",))
            connection.execute("INSERT INTO t VALUES (%s)", ("ada.secret@example.com",))

    error = raised(duplicate)
    assert "ada.secret@example.com" in str(error)  # on its DETAIL line
    fields = failure_fields(error)
    assert "ada.secret" not in repr(fields)
    assert fields["error"].startswith("duplicate key value violates unique constraint")
    assert fields["error_type"] == "psycopg.errors.UniqueViolation"


def test_failure_fields_hold_the_type_the_first_line_and_where_it_was_raised() -> None:
    def innermost(secret: str) -> None:
        raise ValueError(f"first line\x1b[31m\nsecond line with {secret}")

    def outer() -> None:
        try:
            innermost("the-secret-value")
        except ValueError as exc:
            raise StorageError("x" * 300) from exc

    error = raised(lambda: innermost("the-secret-value"))
    fields = failure_fields(error)
    assert fields["error_type"] == "ValueError"
    assert fields["error"] == "first line\\x1b[31m"  # control characters escaped: no terminal tricks in the log
    assert fields["raised_at"].startswith("tests/http/test_protocol.py:")
    assert fields["raised_at"].endswith(" in innermost")
    assert "the-secret-value" not in repr(fields)
    wrapped = failure_fields(raised(outer))
    assert wrapped["error"] == "x" * 200 + "..."
    assert wrapped["cause_type"] == "ValueError"
    assert wrapped["raised_at"].endswith(" in outer")
