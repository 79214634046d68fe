"""The engine across processes on one database (SQLite and PostgreSQL): writers, workers, the command line."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from mediator.readmodels import Delivery, Storage, consistent, last_token
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import assert_settled, settle
from tests import postgres

from .bank import Deposit, GetBalance, make_bank

ROOT = Path(__file__).resolve().parents[2]


@attrs.define
class Target:
    """Where the processes of a test meet: the environment that names the database, and a storage on it."""

    env: dict[str, str]
    storage: Callable[[], Storage]
    tmp: Path


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    base = {**os.environ, "PYTHONPATH": str(ROOT)}
    if request.param == "sqlite":
        db = tmp_path / "bank.db"
        yield Target({**base, "BANK_DB": str(db)}, lambda: SqliteStorage(db), tmp_path)
        return
    postgres.require()
    from mediator.readmodels.postgres import PostgresStorage

    schema = postgres.new_schema()
    made: list[PostgresStorage] = []

    def storage() -> Storage:
        made.append(PostgresStorage(postgres.DSN, schema=schema))
        return made[-1]

    yield Target({**base, "BANK_POSTGRES": postgres.DSN, "BANK_SCHEMA": schema}, storage, tmp_path)
    for each in made:
        each.close()
    PostgresStorage(postgres.DSN, schema=schema).drop_schema()


def env(target: Target, delivery: str = "background") -> dict[str, str]:
    return {**target.env, "BANK_DELIVERY": delivery}


def cli(target: Target, *args: str, delivery: str = "background") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mediator.readmodels", "--app", "tests.readmodels.bank_app:engine", *args],
        env=env(target, delivery), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_two_writer_processes_share_one_database_without_gaps(target: Target) -> None:
    target.storage().close()
    go = target.tmp / "go"
    writers = [
        subprocess.Popen([sys.executable, "-m", "tests.readmodels.bank_app", "writer", "300"],
                         env={**env(target), "BANK_GO": str(go)}, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for w in writers:  # both started up, then both released at once
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "ready"
    go.touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    spans = []
    for w in writers:
        assert w.stdout is not None
        _, start, end = w.stdout.read().split()
        spans.append((float(start), float(end)))
        w.stdout.close()
    # Both were writing at once (SQLite's busy handler may still let one take the lock for a long stretch).
    assert max(start for start, _ in spans) < min(end for _, end in spans), "the two writers did not overlap"
    storage = target.storage()
    assert [e.position for e in storage.events()] == list(range(1, 601))
    bank = make_bank(storage)
    settle(bank.engine)
    assert sorted(bank.balances().values()) == [300, 300]


def test_a_worker_process_projects_and_a_query_here_reads_its_own_write(target: Target) -> None:
    bank = make_bank(target.storage(), Delivery.WORKER)
    worker = subprocess.Popen(
        [sys.executable, "-m", "mediator.readmodels", "--app", "tests.readmodels.bank_app:engine", "worker"],
        env=env(target, "worker"), cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert worker.stdout is not None
        assert "worker running" in worker.stdout.readline()
        for amount in (1, 2, 3):
            bank.mediator.send(Deposit(account="a", amount=amount))
        with consistent(last_token(), timeout=20) as wanted:
            assert bank.mediator.ask(GetBalance(account="a")) == 6
        assert not wanted.stale
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert worker.stdout is not None
        worker.stdout.close()
    assert bank.engine.lag()[0].positions_behind == 0


def test_an_idle_worker_sees_another_process_commit_without_waiting_for_its_poll(target: Target) -> None:
    # The worker polls only once an hour: each round's answer proves it watched the head of the log instead.
    bank = make_bank(target.storage(), Delivery.WORKER)
    worker = subprocess.Popen(
        [sys.executable, "-m", "mediator.readmodels", "--app", "tests.readmodels.bank_app:engine", "worker"],
        env={**env(target, "worker"), "BANK_POLL": "3600"}, cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert worker.stdout is not None
        assert "worker running" in worker.stdout.readline()
        for amount in range(1, 6):
            bank.mediator.send(Deposit(account="a", amount=amount))
            token = last_token()
            assert token is not None
            assert bank.engine.wait(token, timeout=30), f"round {amount}: the worker did not wake"
        assert bank.mediator.ask(GetBalance(account="a")) == 15
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        assert worker.stdout is not None
        worker.stdout.close()


def test_the_command_line_shows_status_and_handles_dead_letters_and_rebuilds(target: Target) -> None:
    bank = make_bank(target.storage())
    bank.mediator.send(Deposit(account="a", amount=5))
    bank.mediator.send(Deposit(account="b", amount=1))
    status = cli(target, "status")
    assert "head of the log: 2" in status
    assert "balances" in status
    assert status.splitlines()[-1].split()[:9] == ["balances", "1", "1", "current", "ok", "background", "0", "0",
                                                   "2"]

    bank.projection.poison.add("a")
    settle(bank.engine)
    parked_status = cli(target, "status").splitlines()[-1].split()
    assert parked_status[4] == "parked"  # health
    assert parked_status[6:9] == ["2", "0", "2"]  # checkpoint 2, applied up to 0, so 2 behind
    assert parked_status[10:12] == ["1", "0"]  # parked 1, blocked 0
    listing = cli(target, "dead-letters", "list")
    assert "parked" in listing
    assert "cannot project account a" in listing
    assert "skip: balances position 1; 0 event(s) applied" in cli(target, "dead-letters", "skip", "balances", "1")
    assert cli(target, "dead-letters", "list").strip() == "no dead letters"
    bank.mediator.send(Deposit(account="a", amount=7))
    bank.mediator.send(Deposit(account="c", amount=1))  # another key applies: the failure is the event's
    settle(bank.engine)
    assert [letter.position for letter in bank.engine.dead_letters()] == [3]
    # The command line runs the fixed code (its projection has no poison): the retry applies the event.
    assert "retry: balances position 3; 1 event(s) applied" in cli(target, "dead-letters", "retry", "balances", "3")
    assert bank.engine.dead_letters() == []
    assert bank.balances() == {"a": 7, "b": 1, "c": 1}  # position 1 was skipped, position 3 retried

    assert "balances: rebuilt as generation 2, now current" in cli(target, "rebuild", "balances")
    bank.projection.poison.clear()
    assert bank.balances() == {"a": 12, "b": 1, "c": 1}  # the rebuild replayed everything, the skipped event too
    assert_settled(bank.engine)


def test_status_of_an_empty_log(target: Target) -> None:
    make_bank(target.storage())
    assert "head of the log: 0" in cli(target, "status")


def test_the_command_line_refuses_an_unknown_projection_or_position_in_one_line(target: Target) -> None:
    make_bank(target.storage())
    # An unknown name is the command line's mistake (status 2); an unknown position, the database's answer (1).
    for args, says, status in (
            (("dead-letters", "list", "nope"), "No projection named 'nope'; known: balances", 2),
            (("dead-letters", "retry", "balances", "7"), "No dead letter of 'balances' at position 7", 1)):
        done = subprocess.run(
            [sys.executable, "-m", "mediator.readmodels", "--app", "tests.readmodels.bank_app:engine", *args],
            env=env(target), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == status, done.stderr
        assert done.stderr.strip().splitlines() == [f"error: {says}; list them with `dead-letters list`."
                                                    if "dead letter" in says else f"error: {says}."]
