"""Real servers on loopback for the HTTP tests: uvicorn for an ASGI app, wsgiref for a WSGI app."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import uvicorn


@contextlib.contextmanager
def serving(app: Any, log_level: str = "warning") -> Iterator[httpx.Client]:
    """Serve the ASGI ``app`` with uvicorn on a free local port, and a client for it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        running.should_exit = True
        thread.join(10)


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def wsgi_serving(app: Any) -> Iterator[httpx.Client]:
    """Serve the WSGI ``app`` with wsgiref on a free local port, and a client for it."""
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=10) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()


def port_of(client: httpx.Client) -> int:
    """The port the server behind ``client`` listens on."""
    port = client.base_url.port
    assert port is not None
    return port
