"""Property-based HTTP tests generated from the shop's own OpenAPI schema (schemathesis): whatever a client sends to
any operation, valid by the schema or not, the answer is never a 5xx, on SQLite and on PostgreSQL.

The shop's ASGI app (the FastAPI routes inside ``MediatorMiddleware``) is served by uvicorn on loopback from this
process; schemathesis runs against it as it runs in CI pipelines (``st run``): its coverage phase (boundary values,
wrong types, NUL characters, values out of range, for every parameter), its fuzzing phase (random requests, valid
by the schema and not) and its stateful phase (sequences that feed one answer into the next request), as a member
of staff, so that requests pass authentication and reach the handlers, checking only that no answer is a 5xx.

``MEDIATOR_OPENAPI_EXAMPLES`` sets the fuzzed examples per operation: 25 by default (about 15 s a backend); CI
should run 200 (about a minute a backend). The JSON report of a failing run is kept beside the test's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.shop_http import asgi
from tests.http.servers import serving

from .backends import shop_on
from .test_shop import stocked
from .tokens import ADMIN, KEY

EXAMPLES = int(os.environ.get("MEDIATOR_OPENAPI_EXAMPLES", "25"))


def schemathesis_run(base_url: str, folder: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``st run`` against the schema at ``base_url`` as staff: its outcome and its JSON report."""
    report = folder / "schemathesis.json"
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
               "--header", f"Authorization: {ADMIN['Authorization']}", "--checks", "not_a_server_error",
               "--max-examples", str(EXAMPLES), "--continue-on-failure", "--max-failures", "1000", "--workers", "1",
               "--no-color", "--generation-database", "none", "--report", "json", "--report-json-path", str(report)]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=1800, check=False)
    return done, json.loads(report.read_text()) if report.exists() else {}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_request_the_openapi_schema_describes_gets_a_5xx(backend: str, tmp_path: Path) -> None:
    with shop_on(backend, tmp_path, logging=False) as shop:
        stocked(shop)  # rows to find, so some generated requests get past "not found"
        shop.engine.start()
        with serving(asgi(shop, jwt_key=KEY), log_level="critical") as client:
            done, report = schemathesis_run(str(client.base_url).rstrip("/"), tmp_path)
    assert report, f"schemathesis did not run: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert report["operations"]["tested"] == report["operations"]["total"] == 18  # every operation, exercised
    failures = done.stdout[done.stdout.find("=== FAILURES"):] if "=== FAILURES" in done.stdout else done.stdout
    assert (report["test_cases"]["with_failures"], done.returncode) == (0, 0), (
        f"{report['test_cases']} (seed {report['seed']}):\n{failures[-8000:]}\n{done.stderr[-2000:]}")
