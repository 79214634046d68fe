"""Fault test: PostgreSQL restarted under load.

A writer process sends deposits and projects them in the background while the
server is stopped and started again. While it is down, commands fail with a
``StorageError`` that says PostgreSQL failed and why; once it is back they
succeed again without restarting the process, whose projection runner resumes
too; no acknowledged command is lost, none is stored twice, and the read model
equals the log.

It stops the machine's PostgreSQL server for a few seconds, so it runs only where
``pg_ctlcluster`` can do that (every machine of this project, and CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mediator.readmodels import Delivery
from mediator.testing import settle
from tests import postgres
from tests.conftest import skip_or_fail

from .bank import Deposited, event_types, make_bank

ROOT = Path(__file__).resolve().parents[2]


def _cluster(action: str) -> None:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        skip_or_fail("pg_ctlcluster is not available: cannot restart PostgreSQL")
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]
    done = subprocess.run([*command, "-m", "fast"] if action == "stop" else command,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _up_again(deadline: float) -> None:
    while postgres.available() is not None:
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.1)


def _lines(out: Path) -> list[list[str]]:
    return [line.split(" ", 2) for line in out.read_text().splitlines()] if out.exists() else []


def _wait_for(out: Path, kind: str, count: int, deadline: float, after: int = 0) -> None:
    while sum(1 for parts in _lines(out)[after:] if parts[0] == kind) < count:
        assert time.monotonic() < deadline, f"no {count} {kind!r} outcomes in time: {_lines(out)[-3:]}"
        time.sleep(0.02)


def test_a_restart_under_load_fails_commands_clearly_then_resumes_losing_nothing(
        pg_schema: str, tmp_path: Path) -> None:
    from mediator.readmodels.postgres import PostgresStorage

    PostgresStorage(postgres.DSN, schema=pg_schema).close()
    out = tmp_path / "outcomes.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BANK_POSTGRES": postgres.DSN, "BANK_SCHEMA": pg_schema,
           "BANK_POLL": "0.05"}
    writer = subprocess.Popen([sys.executable, "-m", "tests.readmodels.bank_app", "load", str(out)],
                              env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        _wait_for(out, "ok", 20, deadline)
        _cluster("stop")
        try:
            _wait_for(out, "err", 3, deadline)
        finally:
            _cluster("start")
        _up_again(deadline)
        resumed_from = len(_lines(out))
        _wait_for(out, "ok", 20, deadline, after=resumed_from)
        # The writer's own runner came back too: it applies what was committed after the restart.
        watcher = PostgresStorage(postgres.DSN, schema=pg_schema)
        try:
            head = watcher.head()
            while watcher.checkpoint("balances", 1) < head:
                assert time.monotonic() < deadline, "the writer's projection runner did not resume"
                time.sleep(0.05)
        finally:
            watcher.close()
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(timeout=30) == 0

    outcomes = _lines(out)
    errors = [parts for parts in outcomes if parts[0] == "err"]
    assert errors, "no command failed while the server was down"
    assert all(parts[2].startswith("StorageError: PostgreSQL failed to") for parts in errors), errors[:3]
    acknowledged = {int(parts[1]) for parts in outcomes if parts[0] == "ok"}
    unknown = {int(parts[1]) for parts in errors}

    storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    try:
        types = event_types()
        stored = list(storage.events())
        assert [e.position for e in stored] == list(range(1, len(stored) + 1)), "a gap in the log"
        amounts = [types.decode(e.type_name, e.version, e.data) for e in stored]
        in_log = [d.amount for d in amounts if isinstance(d, Deposited)]
        assert len(in_log) == len(set(in_log)), "a command's event was stored twice"
        assert acknowledged <= set(in_log), "an acknowledged command's event is missing"
        assert set(in_log) <= acknowledged | unknown  # an error at commit may or may not have committed
        bank = make_bank(storage, Delivery.BACKGROUND)
        settle(bank.engine)  # whatever the writer's runner had not applied yet
        assert sum(bank.balances().values()) == sum(in_log)
    finally:
        storage.close()
