"""The WSGI embedding (``mediator.wsgi``): the body limit, correlation ids, first values of duplicated headers, 401
from the principal resolver, driver errors by what they mean, and one log line per failure, called directly and
through wsgiref."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from structlog.testing import capture_logs

from mediator import Mediator, Registry
from mediator.http import MAX_BODY, RequestTooLargeError
from mediator.wsgi import MediatorWSGI, StartResponse

from .servers import port_of, wsgi_serving
from .service import FAILURES, STATUS_OF, principal, wsgi_service
from .test_fastapi import raw_request


class Answer:
    """What a WSGI app answered: its status, headers and body."""

    def __init__(self, app: Any, environ: dict[str, Any]) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            self.status, self.headers = status, {k.lower(): v for k, v in headers}

        self.body = b"".join(app(environ, start_response))

    @property
    def code(self) -> int:
        return int(self.status.split()[0])

    def json(self) -> Any:
        return json.loads(self.body)


def request(method: str = "GET", path: str = "/", body: bytes | None = None, *, stream: Any = None,
            terminated: bool = False, **headers: str) -> dict[str, Any]:
    """A WSGI environ: ``body`` with its ``CONTENT_LENGTH``, or ``stream`` as ``wsgi.input`` (``terminated``: a
    chunked body, as a server marks it), and ``headers`` (``HTTP_...``, ``CONTENT_LENGTH``)."""
    made: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, **headers}
    if body is not None:
        made["wsgi.input"] = io.BytesIO(body)
        made.setdefault("CONTENT_LENGTH", str(len(body)))
    if stream is not None:
        made["wsgi.input"] = stream
    if terminated:
        made["wsgi.input_terminated"] = True
    setup_testing_defaults(made)
    return made


class Untouchable(io.RawIOBase):
    """A ``wsgi.input`` that must not be read."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")

    readline = read  # type: ignore[assignment]


class Reader:
    """A WSGI app that reads the whole body and counts it."""

    def __init__(self) -> None:
        self.calls = 0
        self.received = 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.calls += 1
        self.received = len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read"]


def wrapped(app: Any, **options: Any) -> MediatorWSGI:
    mediator: Mediator = Registry().build()
    return MediatorWSGI(app, mediator, principal, **options)


def test_a_declared_body_over_the_limit_is_a_413_before_any_of_it_is_read() -> None:
    reader = Reader()
    answer = Answer(wrapped(reader, max_body=1000), request("POST", CONTENT_LENGTH="1001",
                                                            stream=Untouchable()))
    assert (answer.code, answer.json()["error"]) == (413, "too_large")
    assert reader.calls == 0
    with wsgi_serving(wrapped(reader)) as client:
        raw = raw_request(port_of(client), b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 157286400\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 413 ")
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"
    assert reader.calls == 0


def test_a_content_length_that_is_not_one_is_a_400() -> None:
    answer = Answer(wrapped(Reader()), request("POST", CONTENT_LENGTH="12abc", stream=Untouchable()))
    assert (answer.code, answer.json()["error"]) == (400, "bad_request")


def test_a_chunked_body_is_read_to_one_byte_past_the_limit_then_refused() -> None:
    stream = io.BytesIO(b"x" * 10_000)
    reader = Reader()
    environ = request("POST", stream=stream, terminated=True)
    answer = Answer(wrapped(reader, max_body=1000), environ)
    assert (answer.code, answer.json()["error"]) == (413, "too_large")
    assert stream.tell() == 1001  # at most the limit and one byte came off the wire
    within = Answer(wrapped(Reader(), max_body=1000),
                    request("POST", "/echo", stream=io.BytesIO(b"x" * 1000), terminated=True))
    assert within.code == 200


def test_a_body_without_a_length_on_a_server_that_does_not_terminate_it_is_empty() -> None:
    reader = Reader()
    assert Answer(wrapped(reader), request("POST", stream=Untouchable())).code == 200
    assert (reader.calls, reader.received) == (1, 0)


def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    for body in (b"x" * 1000, b""):
        assert Answer(wsgi_service(max_body=1000), request("POST", "/echo", body)).json() == {"length": len(body)}
    lines = b"line\n" * 100
    environ = request("POST", body=lines)

    def by_line(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [str(len(list(environ["wsgi.input"]))).encode()]

    assert Answer(wrapped(by_line), environ).body == b"100"
    unlimited = Answer(wsgi_service(max_body=None), request("POST", "/echo", b"x" * (2 * MAX_BODY)))
    assert unlimited.json() == {"length": 2 * MAX_BODY}


def test_an_app_that_catches_the_error_and_answers_still_answers_413() -> None:
    def forgiving(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            environ["wsgi.input"].read()
        except RequestTooLargeError:
            start_response("400 Bad Request", [])
            return [b"never mind"]
        start_response("200 OK", [])
        return [b"fine"]

    environ = request("POST", stream=io.BytesIO(b"x" * 200), terminated=True)
    assert Answer(wrapped(forgiving, max_body=100), environ).code == 413


def test_a_valid_correlation_id_is_used_and_echoed_and_any_other_replaced() -> None:
    service = wsgi_service()
    sent = Answer(service, request(path="/whoami", HTTP_X_CORRELATION_ID="req-42"))
    assert sent.headers["x-correlation-id"] == sent.json()["correlation_id"] == "req-42"
    for bad in ("cafÃ©", "café", "a b", "x" * 129, "<script>"):  # WSGI servers hand headers over as Latin-1
        answer = Answer(service, request(path="/whoami", HTTP_X_CORRELATION_ID=bad))
        used = answer.headers["x-correlation-id"]
        assert used == answer.json()["correlation_id"], bad
        assert used.isascii()
        assert len(used) == 32


def test_a_duplicated_header_counts_with_its_first_value_through_a_real_server() -> None:
    with wsgi_serving(wsgi_service()) as client:
        answer = client.get("/whoami", headers=[("X-Correlation-Id", "first"), ("X-Correlation-Id", "second"),
                                                ("Authorization", "Bearer good"), ("Authorization", "Bearer x")])
        assert answer.json() == {"principal": "user", "correlation_id": "first"}
        assert answer.headers["x-correlation-id"] == "first"
        refused = client.get("/whoami", headers=[("Authorization", "Bearer x"), ("Authorization", "Bearer good")])
        assert refused.status_code == 401


def test_a_credential_the_resolver_refuses_is_a_401_with_a_challenge_and_the_app_never_runs() -> None:
    reader = Reader()
    answer = Answer(wrapped(reader), request("POST", body=b"{}", HTTP_AUTHORIZATION="Bearer forged"))
    assert answer.code == 401
    assert answer.json() == {"error": "unauthenticated", "detail": "The token is not valid"}
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert reader.calls == 0


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_database_driver_error_answers_by_what_it_means(kind: str) -> None:
    _failure, status = FAILURES[kind]
    with capture_logs() as logs:
        answer = Answer(wsgi_service(), request(path=f"/fail/{kind}"))
    assert answer.code == status, answer.body
    assert "sqlite" not in answer.body.decode().lower()
    assert [e["log_level"] for e in logs] == ["warning" if status < 500 else "error"]


def test_the_applications_own_errors_answer_as_it_maps_them() -> None:
    assert Answer(wsgi_service(), request(path="/missing")).code == 404
    assert STATUS_OF


def test_an_app_that_fails_after_starting_its_answer_is_answered_as_the_failure() -> None:
    def late(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-Partial", "yes")])
        yield b"half"
        raise RuntimeError("the rest is lost")

    with capture_logs() as logs:
        answer = Answer(wrapped(late), request())
    assert answer.code == 500
    assert "x-partial" not in answer.headers
    assert [e["event"] for e in logs] == ["request failed"]


def test_a_500_is_logged_once_without_a_traceback() -> None:
    with capture_logs() as logs:
        answer = Answer(wsgi_service(), request("POST", "/register", b'{"name": "Ada", "email": "ada@example.com"}',
                                                HTTP_X_CORRELATION_ID="req-7"))
    assert answer.code == 500
    assert answer.json() == {"error": "internal", "detail": "Something went wrong; it has been logged.",
                             "correlation_id": "req-7"}
    failed = [e for e in logs if e["event"] == "request failed"]
    assert len(failed) == 1
    assert (failed[0]["correlation_id"], failed[0]["error"]) == ("req-7", "the directory refused 'Ada'")
    assert "exc_info" not in failed[0]
