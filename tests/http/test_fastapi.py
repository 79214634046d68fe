"""The ASGI embedding (``mediator.fastapi``): the body limit, correlation ids, first values of duplicated headers,
401 from the principal resolver, driver errors by what they mean, and one log line per failure, in process and
through uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from mediator import AsyncMediator, Registry
from mediator.fastapi import MediatorMiddleware
from mediator.http import MAX_BODY, RequestTooLargeError

from .servers import port_of, serving
from .service import FAILURES, STATUS_OF, NotRegistered, fastapi_service, principal


def call(app: Any, method: str, url: str, **options: Any) -> httpx.Response:
    """One request to ``app`` in process (errors the app lets out are answered, not raised)."""
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return await client.request(method, url, **options)
    return asyncio.run(send())


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield b"x" * size


class Reader:
    """A bare ASGI app that reads the whole body, counting what it was given, then answers 200."""

    def __init__(self) -> None:
        self.calls = 0
        self.received = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        more = True
        while more:
            message = await receive()
            self.received += len(message.get("body", b""))
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})


def wrapped(app: Any, **options: Any) -> MediatorMiddleware:
    mediator: AsyncMediator = Registry().build_async()
    return MediatorMiddleware(app, mediator, principal, **options)


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``) over a socket and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head + body)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(65536):
                answer += chunk
    return answer


def test_a_declared_body_over_the_limit_is_a_413_before_any_of_it_is_read() -> None:
    reader = Reader()
    answer = call(wrapped(reader, max_body=1000), "POST", "/", content=b"x" * 1001)
    assert (answer.status_code, answer.json()["error"]) == (413, "too_large")
    assert answer.headers["connection"] == "close"  # HTTP/1.1: the rest of the body is not read, nor waited for
    assert reader.calls == 0
    with serving(wrapped(reader)) as client:  # 150 MB announced, none sent: the answer does not wait for it
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 157286400\r\n\r\n"
        raw = raw_request(port_of(client), head)
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert json.loads(raw.split(b"\r\n\r\n", 1)[1])["detail"].startswith(f"The request body is larger than {MAX_BODY}")
    assert reader.calls == 0


def test_a_streamed_body_is_cut_off_once_it_passes_the_limit() -> None:
    reader = Reader()
    answer = call(wrapped(reader, max_body=1000), "POST", "/", content=chunks(10, 300))  # chunked: no length
    assert (answer.status_code, answer.json()["error"]) == (413, "too_large")
    assert reader.received <= 1000  # the chunk that passed the limit never reached the app
    service = fastapi_service(max_body=1000)  # FastAPI answers a body it cannot read with 400: a 413 goes instead
    answer = call(service, "POST", "/echo", content=chunks(10, 300))
    assert (answer.status_code, answer.json()["error"]) == (413, "too_large")
    with serving(wrapped(Reader(), max_body=1000)) as client:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked = b"".join(b"258\r\n" + b"x" * 600 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"  # 3 x 600 bytes
        raw = raw_request(port_of(client), head, chunked)
    assert raw.startswith(b"HTTP/1.1 413 ")


def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    assert call(fastapi_service(max_body=1000), "POST", "/echo", content=b"x" * 1000).json() == {"length": 1000}
    assert call(fastapi_service(max_body=1000), "POST", "/echo", content=chunks(2, 500)).json() == {"length": 1000}
    unlimited = call(fastapi_service(max_body=None), "POST", "/echo", content=b"x" * (2 * MAX_BODY))
    assert unlimited.json() == {"length": 2 * MAX_BODY}


def test_an_app_that_catches_the_error_and_answers_still_answers_413() -> None:
    async def forgiving(scope: Any, receive: Any, send: Any) -> None:
        with contextlib.suppress(RequestTooLargeError):
            while (await receive()).get("more_body"):
                pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fine"})

    answer = call(wrapped(forgiving, max_body=100), "POST", "/", content=chunks(3, 60))
    assert answer.status_code == 413


def test_a_valid_correlation_id_is_used_and_echoed_and_any_other_replaced() -> None:
    service = fastapi_service()
    sent = call(service, "GET", "/whoami", headers={"X-Correlation-Id": "req-42"})
    assert sent.headers["x-correlation-id"] == sent.json()["correlation_id"] == "req-42"
    for bad in ("café".encode(), "caf\xe9".encode("latin-1"), b"a b", b"x" * 129, b"<script>"):
        answer = call(service, "GET", "/whoami", headers={b"X-Correlation-Id": bad})
        used = answer.headers["x-correlation-id"]
        assert used == answer.json()["correlation_id"], bad  # the response names the id the request ran with
        assert used.isascii()
        assert len(used) == 32


def test_a_duplicated_header_counts_with_its_first_value() -> None:
    service = fastapi_service()
    answer = call(service, "GET", "/whoami", headers=[("X-Correlation-Id", "first"), ("X-Correlation-Id", "second"),
                                                      ("Authorization", "Bearer good"), ("Authorization", "Bearer x")])
    assert answer.json() == {"principal": "user", "correlation_id": "first"}
    refused = call(service, "GET", "/whoami", headers=[("Authorization", "Bearer x"), ("Authorization", "Bearer good")])
    assert refused.status_code == 401


def test_a_credential_the_resolver_refuses_is_a_401_with_a_challenge_and_the_app_never_runs() -> None:
    reader = Reader()
    answer = call(wrapped(reader), "POST", "/", content=b"{}", headers={"Authorization": "Bearer forged"})
    assert answer.status_code == 401
    assert answer.json() == {"error": "unauthenticated", "detail": "The token is not valid"}
    assert answer.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="The token is not valid"')
    assert answer.headers["x-correlation-id"]
    assert reader.calls == 0
    assert call(wrapped(reader), "GET", "/").status_code == 200  # no credential: anonymous


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_database_driver_error_answers_by_what_it_means(kind: str) -> None:
    _failure, status = FAILURES[kind]

    async def bare(scope: Any, receive: Any, send: Any) -> None:  # no web framework: the middleware answers
        FAILURES[kind][0]()

    with capture_logs() as logs:
        for app in (fastapi_service(), wrapped(bare)):
            answer = call(app, "GET", f"/fail/{kind}")
            assert answer.status_code == status, (app, answer.text)
            assert answer.json()["error"]
            assert "sqlite" not in answer.text.lower()
    assert len(logs) == 2  # one line per failure, at warning (the request's data) or error (the database's)
    assert {e["log_level"] for e in logs} == {"warning" if status < 500 else "error"}


def test_the_applications_own_errors_answer_as_it_maps_them_even_without_a_web_framework() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise NotRegistered("nobody here")

    assert call(wrapped(bare, status_of=STATUS_OF), "GET", "/").status_code == 404
    assert call(fastapi_service(), "GET", "/missing").status_code == 404


def test_a_500_is_logged_once_by_the_middleware_and_never_reaches_the_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(fastapi_service()) as client, capture_logs() as logs:
        answer = client.post("/register", json={"name": "Ada", "email": "ada@example.com"},
                             headers={"X-Correlation-Id": "req-7"})
        after = client.get("/whoami")  # the same connection goes on serving
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal", "detail": "Something went wrong; it has been logged.",
                             "correlation_id": "req-7"}
    assert after.status_code == 200
    failed = [e for e in logs if e["event"] == "request failed"]
    assert len(failed) == 1
    assert failed[0]["correlation_id"] == "req-7"
    assert failed[0]["error"] == "the directory refused 'Ada'"  # the first line only
    assert "exc_info" not in failed[0]
    assert not [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.ERROR]
