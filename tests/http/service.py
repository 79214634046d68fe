"""A small service on both HTTP embeddings, for the tests of the embeddings themselves (no shop).

Routes, the same on both: ``POST /register`` (a command whose handler fails unexpectedly, with the customer's email
in a local variable and on the second line of its message), ``GET /missing`` (the service's own error, mapped to
404), ``POST /echo`` (the length of the body), ``GET /whoami`` (the
principal and correlation id of the request's scope), ``GET /fail/<kind>`` (a real database driver error, see
:data:`FAILURES`). The principal resolver takes ``Authorization: Bearer good`` for ``"user"``, nothing for
``"anonymous"``, and refuses anything else with :class:`~mediator.AuthenticationError`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mediator import (
    AsyncMediator,
    AuthenticationError,
    Command,
    Logging,
    Mediator,
    Registry,
    current_context,
    sensitive,
)
from mediator.fastapi import MediatorMiddleware, install_error_handlers
from mediator.http import MAX_BODY, StatusMap
from mediator.wsgi import MediatorWSGI, StartResponse

SECRET_EMAIL = "ada.lovelace.secret@example.com"
"""The sensitive value a failing request carries: it must never reach the log."""


class NotRegistered(LookupError):
    """The service's own error, mapped to 404."""


STATUS_OF: StatusMap = {NotRegistered: (404, "not_found")}


@attrs.frozen(kw_only=True)
class Register(Command[str]):
    name: str
    email: str = sensitive()


def register(command: Register) -> str:
    customer_email_secret = command.email  # a local variable holding the sensitive value, as real code has
    raise RuntimeError(f"the directory refused {command.name!r}\n"
                       f"DETAIL:  Key (email)=({customer_email_secret}) is not in the directory.")


def principal(headers: Mapping[str, str]) -> str:
    value = headers.get("authorization")
    if value is None:
        return "anonymous"
    if value != "Bearer good":
        raise AuthenticationError("The token is not valid")
    return "user"


def _sqlite(sql: str, *parameters: object) -> None:
    with sqlite3.connect(":memory:") as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
        connection.execute("INSERT INTO t (name) VALUES ('taken')")
        connection.execute(sql, parameters)


def _closed() -> None:
    connection = sqlite3.connect(":memory:")
    connection.close()
    connection.execute("SELECT 1")


FAILURES: dict[str, tuple[Callable[[], None], int]] = {
    "overflow": (lambda: _sqlite("SELECT * FROM t WHERE id = ?", 2**70), 422),  # OverflowError
    "surrogate": (lambda: _sqlite("SELECT * FROM t WHERE name = ?", "\ud800"), 422),  # UnicodeEncodeError
    "unbindable": (lambda: _sqlite("SELECT * FROM t WHERE name = ?", ["a list"]), 422),  # ProgrammingError
    "integrity": (lambda: _sqlite("INSERT INTO t (name) VALUES (?)", "taken"), 409),  # IntegrityError
    "closed": (_closed, 503),  # ProgrammingError: cannot operate on a closed database
    "syntax": (lambda: _sqlite("SELEC nonsense"), 503),  # OperationalError
}
"""Real sqlite3 failures, by name, and the status each answers with."""


def registry() -> Registry:
    built = Registry()
    built.behaviour(Logging())
    built.handle(Register).by(register)
    return built


def fastapi_service(*, max_body: int | None = MAX_BODY, with_handlers: bool = True) -> Any:
    """The service on FastAPI, inside :class:`~mediator.fastapi.MediatorMiddleware`."""
    mediator: AsyncMediator = registry().build_async()
    app = FastAPI()
    if with_handlers:
        install_error_handlers(app, STATUS_OF)

    @app.post("/register")
    async def register_route(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": await mediator.send(Register(name=body["name"], email=body["email"]))})

    @app.get("/missing")
    async def missing() -> None:
        raise NotRegistered("nobody here")

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"length": len(await request.body())})

    @app.get("/whoami")
    async def whoami() -> JSONResponse:
        context = current_context()
        return JSONResponse({"principal": context.principal, "correlation_id": context.correlation_id})

    @app.get("/fail/{kind}")
    async def fail(kind: str) -> None:
        FAILURES[kind][0]()

    return MediatorMiddleware(app, mediator, principal, max_body=max_body, status_of=STATUS_OF)


def wsgi_service(*, max_body: int | None = MAX_BODY) -> MediatorWSGI:
    """The service as a bare WSGI app, inside :class:`~mediator.wsgi.MediatorWSGI`."""
    mediator: Mediator = registry().build()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        answer: object
        if (method, path) == ("POST", "/register"):
            body = json.loads(environ["wsgi.input"].read())
            answer = {"id": mediator.send(Register(name=body["name"], email=body["email"]))}
        elif (method, path) == ("GET", "/missing"):
            raise NotRegistered("nobody here")
        elif (method, path) == ("POST", "/echo"):
            answer = {"length": len(environ["wsgi.input"].read())}
        elif (method, path) == ("GET", "/whoami"):
            context = current_context()
            answer = {"principal": context.principal, "correlation_id": context.correlation_id}
        elif method == "GET" and path.startswith("/fail/"):
            FAILURES[path.removeprefix("/fail/")][0]()
            answer = None
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "not_found", "detail": "No such route."}']
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    return MediatorWSGI(app, mediator, principal, status_of=STATUS_OF, max_body=max_body)
