"""A failed request leaves one log line, with nothing sensitive in it: checked on what structlog's default
configuration really prints (a process of its own, with ``rich`` installed) and on the events themselves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from .service import SECRET_EMAIL
from .test_fastapi import call
from .test_wsgi import Answer, request

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LEAKS = (SECRET_EMAIL, "ada.lovelace", "customer_email_secret", "DETAIL", "Traceback", "locals", "command =")


def rendered(mode: str) -> list[str]:
    """The lines a process that fails one request (``mode``: ``asgi``, ``wsgi`` or ``control``) writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-m", "tests.http.render_failure", mode], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return ANSI.sub("", done.stdout + done.stderr).splitlines()


def test_the_careless_way_would_print_the_local_variables() -> None:
    """The check below sees a leak when there is one: ``log.exception`` prints the locals and the secret."""
    output = "\n".join(rendered("control"))
    assert SECRET_EMAIL in output
    assert "customer_email_secret" in output


@pytest.mark.parametrize("mode", ["asgi", "wsgi"])
def test_a_failed_request_prints_one_line_without_locals_or_sensitive_values(mode: str) -> None:
    lines = rendered(mode)
    failed = [line for line in lines if "request failed" in line]
    assert len(failed) == 1, lines
    assert "error_type=RuntimeError" in failed[0]
    assert "error=\"the directory refused 'Ada'\"" in failed[0]  # the first line of the message, not its DETAIL
    assert "raised_at='tests/http/service.py:" in failed[0]
    assert "correlation_id=" in failed[0]
    # Besides it, only the Logging behaviour's line for the failed dispatch, its sensitive field masked.
    assert [line for line in lines if line not in failed] == [
        line for line in lines if "message failed" in line and "'email': '***'" in line]
    for leak in LEAKS:
        assert leak not in "\n".join(lines), leak


def test_the_events_hold_no_traceback_and_no_sensitive_value() -> None:
    from .service import fastapi_service, wsgi_service

    body = {"name": "Ada", "email": SECRET_EMAIL}
    with capture_logs() as logs:
        assert call(fastapi_service(), "POST", "/register", json=body).status_code == 500
        assert Answer(wsgi_service(), request("POST", "/register", str(body).replace("'", '"').encode())).code == 500
    failed = [e for e in logs if e["event"] == "request failed"]
    assert len(failed) == 2
    for event in failed:
        assert set(event) == {"event", "log_level", "error_type", "error", "raised_at", "correlation_id"}
    for leak in LEAKS:
        assert leak not in repr(logs), leak
