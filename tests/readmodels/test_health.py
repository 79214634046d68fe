"""Readiness: a projection too far behind, or holding a parked event too long, makes the service not ready, and it
is ready again once that is dealt with; by rules set per projection; on every backend, over HTTP and in the CLI."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from mediator.fastapi import MediatorMiddleware, health_routes
from mediator.readmodels import (
    ProjectionConfigError,
    Readiness,
    Storage,
    UnknownProjectionError,
)
from mediator.readmodels.sqlite import SqliteStorage
from tests.http.servers import serving

from .bank import BalancesInCents, Bank, Deposit, make_bank
from .test_cli import run

QUICK = Readiness(max_lag=0.2, max_parked=0.2)


def wait_past(seconds: float) -> None:
    time.sleep(seconds + 0.1)


def test_a_projection_behind_too_long_is_not_ready_until_it_catches_up(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.engine.health.ready_when(QUICK)
    assert bank.engine.health.check().ready
    bank.mediator.send(Deposit(account="a", amount=1))  # no runner: the projection stays behind
    assert bank.engine.health.check().ready  # behind, but not for long yet
    wait_past(0.2)
    report = bank.engine.health.check()
    assert not report.ready
    (problem,) = report.problems
    assert problem.startswith("balances: ")
    assert "behind the log, over 0.2 s" in problem
    bank.engine.catch_up()
    assert bank.engine.health.check().ready


def test_a_parked_event_waiting_too_long_is_not_ready_until_it_is_dealt_with(storage: Storage) -> None:
    bank = make_bank(storage, max_attempts=1)
    bank.engine.health.ready_when(Readiness(max_lag=None, max_parked=0.2))
    bank.projection.poison.add("x")
    bank.mediator.send(Deposit(account="x", amount=1))
    bank.mediator.send(Deposit(account="a", amount=1))  # applied: so x's failure is x's, and x is parked
    bank.engine.catch_up()
    (letter,) = bank.engine.dead_letters("balances")
    wait_past(0.2)
    report = bank.engine.health.check()
    assert not report.ready
    assert "an event parked" in report.problems[0]
    assert report.projections[0].oldest_parked_seconds > 0.2
    bank.projection.poison.clear()
    bank.engine.retry("balances", letter.position)
    assert bank.engine.health.check().ready


def test_rules_are_set_per_projection_and_checked(storage: Storage) -> None:
    bank = make_bank(storage)
    bank.engine.health.ready_when(QUICK).ready_when(Readiness(max_lag=None), projection="balances")
    bank.mediator.send(Deposit(account="a", amount=1))
    wait_past(0.2)
    assert bank.engine.health.check().ready  # balances may lag as long as it likes
    assert bank.engine.health.rule("balances").max_lag is None
    with pytest.raises(UnknownProjectionError):
        bank.engine.health.ready_when(QUICK, projection="ledger")
    with pytest.raises(ProjectionConfigError, match="a number of seconds"):
        Readiness(max_lag=-1)


def test_a_read_model_of_an_older_version_is_not_ready(storage: Storage) -> None:
    old = make_bank(storage)
    old.mediator.send(Deposit(account="a", amount=1))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    assert "built by version 1, not this code's 2" in new.engine.health.check().problems[0]
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert new.engine.health.check().ready


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[httpx.Client, Bank]]:
    bank = make_bank(SqliteStorage(tmp_path / "bank.db"))
    bank.engine.health.ready_when(QUICK)
    app = FastAPI()
    health_routes(app, bank.engine)
    try:
        with serving(MediatorMiddleware(app, bank.registry.build_async(), lambda headers: "probe",
                                        engine=bank.engine)) as client:
            yield client, bank
    finally:
        bank.engine.storage.close()


def test_the_readiness_endpoint_flips_when_lag_passes_its_rule_and_recovers(
        served: tuple[httpx.Client, Bank]) -> None:
    client, bank = served
    assert client.get("/health/live").json() == {"status": "live"}
    assert client.get("/health/ready").status_code == 200
    bank.mediator.send(Deposit(account="a", amount=1))
    wait_past(0.2)
    refused = client.get("/health/ready")
    assert refused.status_code == 503
    body = refused.json()
    assert body["status"] == "not ready"
    assert body["projections"]["balances"]["ready"] is False
    assert body["projections"]["balances"]["max_lag"] == 0.2
    assert client.get("/health/live").status_code == 200  # alive all the same: only not ready
    bank.engine.catch_up()
    recovered = client.get("/health/ready")
    assert recovered.status_code == 200
    assert recovered.json()["projections"]["balances"]["lag_seconds"] == 0.0


def test_status_check_exits_non_zero_when_not_ready(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    bank = make_bank(SqliteStorage(db))
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.engine.catch_up()
    environ = {"BANK_DB": str(db)}
    fine = run("status", "--check", "--sample", "0", environ=environ)
    assert (fine.returncode, fine.stdout.splitlines()[-1]) == (0, "ready")
    bank.mediator.send(Deposit(account="a", amount=1))  # not applied: the default rule allows 30 s
    bank.engine.storage.close()
    still = run("status", "--check", "--sample", "0", environ=environ)
    assert still.returncode == 0
    # The unapplied event's time set back an hour: the projection is an hour behind.
    with contextlib.closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("UPDATE events SET recorded_at = recorded_at - 3600 WHERE position = 2")
    late = run("status", "--check", "--sample", "0", environ=environ)
    assert late.returncode == 1
    assert "not ready:" in late.stdout
    assert "balances: " in late.stdout
    assert "behind the log, over 30 s" in late.stdout
