"""Fail one request in a process of its own, logging with structlog's default configuration, as a service does.

``python -m tests.http.render_failure asgi|wsgi|control`` prints the log (structlog's default ``ConsoleRenderer``,
which renders a traceback with every frame's local variables when ``rich`` is installed, as the dev extra has it):

- ``asgi``: the request through uvicorn, to :func:`tests.http.service.fastapi_service`;
- ``wsgi``: the request to :func:`tests.http.service.wsgi_service`;
- ``control``: the same failure logged the careless way (``log.exception``), to show what the renderer would print.
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
import time

import httpx
import structlog
import uvicorn

from .service import SECRET_EMAIL, Register, register, wsgi_service

BODY = {"name": "Ada", "email": SECRET_EMAIL}


def through_uvicorn() -> None:
    from .service import fastapi_service

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fastapi_service(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    answer = httpx.post(f"http://127.0.0.1:{port}/register", json=BODY, timeout=10)
    server.should_exit = True
    thread.join(10)
    assert answer.status_code == 500, answer.text


def through_wsgi() -> None:
    from wsgiref.util import setup_testing_defaults

    payload = json.dumps(BODY).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/register", "CONTENT_LENGTH": str(len(payload)),
               "wsgi.input": io.BytesIO(payload)}
    setup_testing_defaults(environ)
    statuses: list[str] = []
    b"".join(wsgi_service()(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["500 Internal Server Error"], statuses


def carelessly() -> None:
    try:
        register(Register(name="Ada", email=SECRET_EMAIL))
    except RuntimeError:
        structlog.get_logger("careless").exception("request failed")


if __name__ == "__main__":
    {"asgi": through_uvicorn, "wsgi": through_wsgi, "control": carelessly}[sys.argv[1]]()
