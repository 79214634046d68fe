"""Headless Chromium (Debian's ``chromium`` package) driven over the Chrome DevTools protocol, for browser tests.

Nothing is downloaded: the browser is the system's (``.ci/run`` installs it with ``apt-get`` where absent); a
developer machine without it skips the test with the reason (CI fails instead, as for the services).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.conftest import skip_or_fail

ARTEFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artefacts"
"""Where browser tests keep their screenshots (``build/`` is ignored by git; CI keeps the folder)."""


def chromium() -> str:
    """The browser's executable; skips (or in CI fails) the calling test without one."""
    found = os.environ.get("MEDIATOR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        skip_or_fail("Chromium is not installed (Debian: apt-get install chromium)")
    assert found is not None
    return found


class Page:
    """One tab, driven over its DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a DevTools command and wait for its result (events on the way are dropped)."""
        number = next(self._ids)
        self._socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            reply = json.loads(self._socket.recv(timeout=30))
            if reply.get("id") == number:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})  # type: ignore[no-any-return]

    def go(self, url: str) -> None:
        """Open ``url`` and wait until its document has loaded (``Page.navigate`` answers before that)."""
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        error: RuntimeError | None = None
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError as failed:  # what it reads is not there yet
                value, error = None, failed
            else:
                error = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression!r} in the page ({error})")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the page at ``path``."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path



@contextlib.contextmanager
def browser(folder: Path) -> Iterator[Page]:
    """Headless Chromium with a fresh profile in ``folder``: a page to drive; the browser is gone afterwards."""
    executable = chromium()
    profile = folder / "chromium-profile"
    process = subprocess.Popen(
        [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "--window-size=1100,800",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit code {process.poll()})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as listing:
            targets = json.load(listing)
        (tab,) = [target for target in targets if target["type"] == "page"][:1]
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as socket:
            yield Page(socket)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
