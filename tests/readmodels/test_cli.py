"""The read-model command line as an operator meets it: databases it must not create, ``--app`` names that are
wrong, retries that fail again, ``describe``, progress and colour on a terminal, plain text in a pipe.

Most tests run ``python -m mediator.readmodels`` in a process of its own, on real SQLite files (and PostgreSQL
where it differs), as test_processes.py does; a terminal is a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.shop_app import build_shop
from mediator import Kind
from mediator.readmodels import PARKED
from mediator.readmodels.__main__ import main, retry_all
from mediator.readmodels._console import Progress, StatusLine, table
from mediator.readmodels._errors import DatabaseNotFoundError
from mediator.readmodels._opening import existing_only
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import settle
from tests import postgres

from .bank import Balances, Deposit, make_bank
from .test_processes import ROOT

BANK = "tests.readmodels.cli_apps:bank"


def base_env(environ: dict[str, str] | None) -> dict[str, str]:
    """This environment without the bank's variables and ``NO_COLOR``, with ``environ`` over it."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("BANK_") and k != "NO_COLOR"}
    return {**kept, "PYTHONPATH": str(ROOT), **(environ or {})}


def run(*args: str, app: str = BANK, environ: dict[str, str] | None = None,
        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the command line with stdout and stderr piped (no terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "mediator.readmodels", "--app", app, *args], env=base_env(environ), cwd=cwd,
        capture_output=True, text=True, timeout=120, check=False,
    )


def run_on_terminal(*args: str, terminal: str, environ: dict[str, str],
                    app: str = BANK) -> tuple[int, str, str]:
    """Run the command line with ``terminal`` (``"stdout"`` or ``"stderr"``) on a pseudo-terminal 160 columns wide
    and the other stream piped; return the exit status, stdout and stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "mediator.readmodels", "--app", app, *args],
        env=base_env({"TERM": "xterm", **environ}), cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=slave if terminal == "stdout" else subprocess.PIPE,
        stderr=slave if terminal == "stderr" else subprocess.PIPE,
    )
    os.close(slave)
    seen = bytearray()

    def read() -> None:  # concurrently: a full pseudo-terminal would block the process
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer has closed it
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    piped_out, piped_err = process.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(master)
    on_terminal = seen.decode()
    out = on_terminal if terminal == "stdout" else piped_out.decode()
    err = on_terminal if terminal == "stderr" else piped_err.decode()
    return process.returncode, out, err


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line an error leaves on stderr (asserting it is one, and no traceback)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "bank.db"


def deposits(db: Path, *accounts: str, poison: str = "") -> None:
    """Deposit 1 to each of ``accounts`` and project them, with ``poison``'s deposits failing (parked)."""
    storage = SqliteStorage(db)
    bank = make_bank(storage, max_attempts=1)
    if poison:
        bank.projection.poison.add(poison)
    for account in accounts:
        bank.mediator.send(Deposit(account=account, amount=1))
    settle(bank.engine)
    storage.close()


# -- databases the command line must not create --------------------------------------------------------------------

@pytest.mark.parametrize("command", [("status",), ("dead-letters", "list"), ("dead-letters", "retry", "--all"),
                                     ("dead-letters", "skip", "balances", "1"), ("rebuild", "balances"),
                                     ("describe",)])
def test_a_command_never_creates_a_missing_sqlite_database(tmp_path: Path, command: tuple[str, ...]) -> None:
    done = run(*command, environ={"BANK_DB": "typo/bank.db"}, cwd=tmp_path)  # a relative path, mistyped
    assert done.returncode == 1
    assert one_line(done) == (
        f"error: SQLite database {str(tmp_path / 'typo' / 'bank.db')!r} does not exist, and this command creates "
        "none: check the path, or start the application (or `python -m mediator.readmodels ... worker`) once to "
        "create it.")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_an_engine_database_is_refused_and_left_untouched(db: Path) -> None:
    db.touch()
    done = run("status", environ={"BANK_DB": str(db)})
    assert done.returncode == 1
    assert "has no table events: no read-model engine has set it up" in one_line(done)
    assert db.stat().st_size == 0


def test_a_separate_read_database_must_exist_too(tmp_path: Path) -> None:
    write, read = tmp_path / "write.db", tmp_path / "read.db"
    SqliteStorage(write, read).close()
    read.unlink()
    with pytest.raises(DatabaseNotFoundError, match=r"^SQLite read database .*read\.db' does not exist"), \
            existing_only():
        SqliteStorage(write, read)
    assert not read.exists()
    SqliteStorage(write, read).close()  # outside existing_only(): created, as a service's first start does
    with existing_only():
        SqliteStorage(write, read).close()


def test_a_worker_creates_the_database_a_deployment_starts_with(db: Path) -> None:
    done = run("worker", "--once", environ={"BANK_DB": str(db), "BANK_DELIVERY": "worker"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "applied 0 events\n"
    assert db.exists()
    assert run("status", environ={"BANK_DB": str(db)}).returncode == 0


def test_status_never_creates_a_missing_postgres_schema_or_its_tables(pg_schema: str) -> None:
    import psycopg
    from psycopg import sql

    environ = {"BANK_POSTGRES": postgres.DSN, "BANK_SCHEMA": pg_schema}
    done = run("status", environ=environ)
    assert done.returncode == 1
    assert one_line(done).startswith(f"error: PostgreSQL schema {pg_schema!r} in database 'test' does not exist, "
                                     "and this command creates none: check the DSN and the schema name")
    with psycopg.connect(postgres.DSN, autocommit=True) as admin:
        assert admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (pg_schema,)).fetchone() is None
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
    done = run("dead-letters", "list", environ=environ)
    assert done.returncode == 1
    assert f"schema {pg_schema!r} in database 'test' has no tables events, log_head, projection_tracking" \
        in one_line(done)
    with psycopg.connect(postgres.DSN, autocommit=True) as admin:
        tables = admin.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (pg_schema,)).fetchone()
    assert tables == (0,)


# -- --app that names nothing usable ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("app", "says"), [
    ("tests.readmodels.no_such_module:engine",
     "error: No module named 'tests.readmodels.no_such_module' (from --app tests.readmodels.no_such_module:...); "
     "run from the directory that holds it or add that to PYTHONPATH"),
    ("no_such_package.wiring:engine", "error: No module named 'no_such_package' (from --app"),
    ("tests.readmodels.cli_apps:engin",
     "error: tests.readmodels.cli_apps has no attribute 'engin' (from --app tests.readmodels.cli_apps:engin); "
     "did you mean 'engine'?"),
    ("tests.readmodels.cli_apps", "error: --app 'tests.readmodels.cli_apps' must look like package.module:attribute."),
    ("tests.readmodels.cli_apps:os",
     "error: --app tests.readmodels.cli_apps:os is a module; name a ReadModels engine, a Mediator"),
    ("tests.readmodels.bank:make_bank",
     "error: --app tests.readmodels.bank:make_bank needs arguments (storage, delivery, types, projection_class, "
     "engine_options); name a function that takes none, or an object."),
    ("tests.readmodels.cli_apps:mediator", "error: `status` needs a read-model engine, and --app "
     "tests.readmodels.cli_apps:mediator gave a mediator alone"),
])
def test_an_app_that_cannot_be_used_is_a_usage_error_in_one_line(db: Path, app: str, says: str) -> None:
    deposits(db)
    done = run("status", app=app, environ={"BANK_DB": str(db)})
    assert done.returncode == 2
    assert one_line(done).startswith(says)
    assert done.stdout == ""


def test_an_app_whose_import_raises_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cli_broken_app.py").write_text("raise RuntimeError('no config file at /etc/bank.toml\\nmore')\n")
    done = run("status", app="cli_broken_app:engine", environ={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert done.returncode == 1
    assert one_line(done) == "error: importing cli_broken_app raised RuntimeError: no config file at /etc/bank.toml"


def test_an_app_that_imports_a_missing_module_is_not_mistaken_for_a_missing_app(tmp_path: Path) -> None:
    (tmp_path / "cli_needs_driver.py").write_text("import no_such_driver\n")
    done = run("status", app="cli_needs_driver:engine", environ={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert done.returncode == 1
    assert one_line(done) == ("error: importing cli_needs_driver raised ModuleNotFoundError: No module named "
                              "'no_such_driver'")


def test_a_factory_that_raises_fails_in_one_line() -> None:
    done = run("status", app="tests.readmodels.cli_apps:engine")  # no BANK_DB: the factory cannot find its database
    assert done.returncode == 1
    assert one_line(done) == "error: calling tests.readmodels.cli_apps:engine raised KeyError: 'BANK_DB'"


def test_traceback_shows_the_whole_trace_instead(tmp_path: Path) -> None:
    (tmp_path / "cli_broken_app.py").write_text("raise RuntimeError('boom')\n")
    done = subprocess.run(
        [sys.executable, "-m", "mediator.readmodels", "--app", "cli_broken_app:engine", "--traceback", "status"],
        env=base_env({"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}), cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in done.stderr


# -- dead letters ----------------------------------------------------------------------------------------------------

def test_a_retry_that_fails_again_says_the_event_is_still_parked_and_fails(db: Path) -> None:
    deposits(db, "a", "a", "b", poison="a")  # 1 parked, 2 blocked behind it, 3 applied
    done = run("dead-letters", "retry", "balances", "1", environ={"BANK_DB": str(db), "BANK_POISON": "a"})
    assert done.returncode == 1
    assert done.stdout == ("retry: balances position 1 failed again and is still parked (attempt 2): ValueError: "
                           "cannot project account a; 1 event(s) of its key wait behind it\n")
    assert "parked event failed again" in done.stderr  # the engine's warning, on stderr, never in the report
    storage = SqliteStorage(db)
    letters = {letter.position: letter for letter in make_bank(storage).engine.dead_letters()}
    storage.close()
    assert (letters[1].status, letters[1].attempts) == (PARKED, 2)


def test_a_skip_whose_next_event_fails_says_that_one_is_parked_now(db: Path) -> None:
    deposits(db, "a", "a", "b", poison="a")
    done = run("dead-letters", "skip", "balances", "1", environ={"BANK_DB": str(db), "BANK_POISON": "a"})
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "skip: balances position 1; 0 event(s) applied",
        "skip: balances position 2 behind it failed and is parked: ValueError: cannot project account a",
    ]


def test_a_retry_that_applies_reports_what_it_applied(db: Path) -> None:
    deposits(db, "a", "a", "b", poison="a")
    done = run("dead-letters", "retry", "balances", "1", environ={"BANK_DB": str(db)})
    assert (done.returncode, done.stdout) == (0, "retry: balances position 1; 2 event(s) applied\n")


@pytest.mark.parametrize(("args", "status", "says"), [
    (("dead-letters", "retry", "balances", "99"), 1,
     "error: No dead letter of 'balances' at position 99; list them with `dead-letters list`."),
    (("dead-letters", "skip", "balances", "99"), 1,
     "error: No dead letter of 'balances' at position 99; list them with `dead-letters list`."),
    (("dead-letters", "retry", "balances", "2"), 1,
     "error: The dead letter of 'balances' at position 2 waits behind position 1 with the same key; retry or skip "
     "position 1 first, so the key's order holds."),
    (("dead-letters", "skip", "ledger", "1"), 2, "error: No projection named 'ledger'; known: balances."),
    (("rebuild", "ledger"), 2, "error: No projection named 'ledger'; known: balances."),
    (("worker", "--once", "--only", "ledger"), 2, "error: No projection named 'ledger'; known: balances."),
])
def test_an_unknown_projection_or_position_is_one_line(db: Path, args: tuple[str, ...], status: int,
                                                       says: str) -> None:
    deposits(db, "a", "a", "b", poison="a")
    done = run(*args, environ={"BANK_DB": str(db)})
    assert done.returncode == status
    assert one_line(done) == says


def test_retry_all_reports_each_projection_and_fails_while_one_stays_parked(db: Path) -> None:
    deposits(db, "a", "c", "b", poison="c")
    still = run("dead-letters", "retry", "--all", environ={"BANK_DB": str(db), "BANK_POISON": "c"})
    assert still.returncode == 1
    assert still.stdout.splitlines() == ["retry: balances: 0 event(s) applied, 1 still parked",
                                         "  position 2 (key 'c'): ValueError: cannot project account c"]
    healed = run("dead-letters", "retry", "--all", environ={"BANK_DB": str(db)})
    assert (healed.returncode, healed.stdout) == (0, "retry: balances: 1 event(s) applied, 0 still parked\n")


class Ledger(Balances):
    name = "ledger"


def test_retry_all_of_several_projections_says_which_stays_parked() -> None:
    storage = MemoryStorage()
    bank = make_bank(storage, max_attempts=1)
    ledger = Ledger()
    bank.engine.add(ledger)
    bank.projection.poison.add("a")
    ledger.poison.add("a")
    bank.mediator.send(Deposit(account="a", amount=1))
    bank.mediator.send(Deposit(account="b", amount=1))
    settle(bank.engine)
    ledger.poison.clear()  # the ledger's fault is fixed; the balances' is not
    outcome = retry_all(bank.engine, None)
    assert not outcome.complete
    assert outcome.text.splitlines() == ["retry: balances: 0 event(s) applied, 1 still parked",
                                         "  position 1 (key 'a'): ValueError: cannot project account a",
                                         "retry: ledger: 1 event(s) applied, 0 still parked"]


# -- describe --------------------------------------------------------------------------------------------------------

def test_describe_prints_every_message_type_of_the_shop_with_its_behaviours_in_order(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--app", "adapters.shop_app:build_shop", "describe"]) == 0
    out = capsys.readouterr().out
    shop = build_shop()
    try:
        explanations = [shop.mediator.explain(t) for t in shop.mediator.message_types]
        projections = list(shop.engine.projections)
    finally:
        shop.close()
    commands = sum(1 for e in explanations if e.kind is Kind.COMMAND)
    assert out.startswith(f"{len(explanations)} message types ({commands} commands, ")
    for explanation in explanations:
        message_type = explanation.message_type
        block = out[out.index(f"\n{message_type.__module__}.{message_type.__qualname__} ("):].split("\n\n")[0]
        assert block.strip() == str(explanation)
        assert re.findall(r"^  \d+\. (.+)$", block, re.MULTILINE) == list(explanation.behaviours)
    place_order = next(e for e in explanations if e.message_type.__name__ == "PlaceOrder")
    assert place_order.behaviours[:2] == ("mediator.Logging (singleton)", "mediator.Validation (singleton)")
    assert projections
    for name in projections:
        assert re.search(rf"^{name} +\d+ +background +shop\.", out, re.MULTILINE), name


def test_describe_of_an_engine_lists_its_projections_and_of_a_mediator_its_messages(db: Path) -> None:
    deposits(db)
    engine = run("describe", app="tests.readmodels.cli_apps:engine", environ={"BANK_DB": str(db)})
    assert (engine.returncode, engine.stdout.splitlines()) == (0, [
        "1 projection", "projection  version  delivery    events", "----------  -------  ----------  --------------",
        "balances    1        background  bank.deposited"])
    mediator = run("describe", app="tests.readmodels.cli_apps:mediator", environ={"BANK_DB": str(db)})
    assert mediator.returncode == 0
    assert mediator.stdout.startswith("2 message types (1 command, 1 query)\n\ntests.readmodels.bank.Deposit (command)")
    assert "projection" not in mediator.stdout


def test_describe_of_an_async_mediator(tmp_path: Path) -> None:
    (tmp_path / "cli_async_app.py").write_text(
        "import attrs\n"
        "from mediator import Query, Registry\n"
        "@attrs.frozen(kw_only=True)\n"
        "class Ping(Query[str]):\n"
        "    pass\n"
        "async def ping(query: Ping) -> str:\n"
        "    return 'pong'\n"
        "registry = Registry()\n"
        "registry.handle(Ping).by(ping)\n"
        "mediator = registry.build_async()\n")
    done = run("describe", app="cli_async_app:mediator", environ={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:4] == ["1 message type (1 query)", "", "cli_async_app.Ping (query) -> str",
                                            "  handler: cli_async_app.ping"]
    status = run("status", app="cli_async_app:mediator", environ={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})
    assert status.returncode == 2
    assert "`status` needs a read-model engine" in one_line(status)


# -- what a terminal shows, and what a pipe gets ---------------------------------------------------------------------

def test_piped_status_is_plain_text_in_whitespace_columns(db: Path) -> None:
    deposits(db, "a", "b", poison="a")
    done = run("status", environ={"BANK_DB": str(db)})
    assert done.returncode == 0
    assert "\x1b" not in done.stdout
    assert done.stdout.splitlines()[-1].split()[:5] == ["balances", "1", "1", "current", "parked"]


def test_status_on_a_terminal_is_coloured_unless_no_color(db: Path) -> None:
    deposits(db, "a", "b", poison="a")
    status, out, _ = run_on_terminal("status", terminal="stdout", environ={"BANK_DB": str(db)})
    assert status == 0
    assert "\x1b[31mparked\x1b[0m" in out  # health, red
    assert "\x1b[1mprojection\x1b[0m" in out  # headers, bold
    status, plain, _ = run_on_terminal("status", terminal="stdout", environ={"BANK_DB": str(db), "NO_COLOR": "1"})
    assert status == 0
    assert "\x1b" not in plain
    assert plain.splitlines()[-1].split()[:5] == ["balances", "1", "1", "current", "parked"]


def test_a_coloured_table_lines_up_as_the_plain_one() -> None:
    rows = [("balances", "ok", 0), ("search", "parked", 12)]
    plain = table(("projection", "health", "parked"), rows)
    coloured = table(("projection", "health", "parked"), rows, colour=True,
                     style=lambda header, cell: "31" if cell == "parked" else None)
    assert "\x1b[31mparked\x1b[0m" in coloured
    assert [line.replace("\x1b[31m", "").replace("\x1b[1m", "").replace("\x1b[2m", "").replace("\x1b[0m", "")
            for line in coloured.splitlines()] == plain.splitlines()


def test_a_rebuild_shows_its_progress_on_a_terminal_and_keeps_stdout_to_its_answer(db: Path) -> None:
    deposits(db, *[f"acct-{i % 5}" for i in range(300)])
    environ = {"BANK_DB": str(db), "BANK_BATCH": "20", "BANK_SLOW": "0.001"}
    status, out, err = run_on_terminal("rebuild", "balances", terminal="stderr", environ={**environ, "NO_COLOR": "1"})
    assert status == 0, err
    assert out == "balances: rebuilt as generation 2, now current\n"
    assert "\rrebuild balances  [" in err
    assert "0 done, 300 to go" in err  # the first drawing, before any batch
    assert re.search(r"\rrebuild balances: 300 events in [^,]+, [\d,]+ events/s", err)  # the summary it leaves
    piped = run("rebuild", "balances", environ=environ)
    assert (piped.returncode, piped.stdout, piped.stderr) == (
        0, "balances: rebuilt as generation 3, now current\n", "")


def test_a_catch_up_shows_its_progress_on_a_terminal(db: Path) -> None:
    deposits(db)
    writer = make_bank(SqliteStorage(db), max_attempts=1)
    for i in range(200):
        writer.mediator.send(Deposit(account=f"acct-{i % 5}", amount=1))
    writer.storage.close()
    environ = {"BANK_DB": str(db), "BANK_DELIVERY": "worker", "BANK_BATCH": "20"}
    status, out, err = run_on_terminal("worker", "--once", terminal="stderr", environ=environ)
    assert (status, out) == (0, "applied 200 events\n"), err
    assert "catch up: 200 events in " in err


def test_progress_measures_rate_and_time_left_and_redraws_at_most_every_interval() -> None:
    now = [100.0]
    measured = [(0, 1000)]
    shown = io.StringIO()
    progress = Progress("rebuild balances", lambda: measured[-1], status=StatusLine(shown), clock=lambda: now[0],
                        interval=0.5, then="swapping in")
    progress.draw()
    assert progress.text() == "rebuild balances  [....................]  0%  0 done, 1,000 to go"
    now[0], measured[:] = 104.0, [(400, 600)]
    progress.tick()
    assert progress.text() == ("rebuild balances  [########............]  40%  400 done, 600 to go  100 events/s  "
                               "about 6 s left")
    now[0], measured[:] = 104.2, [(500, 500)]
    progress.tick()  # within the interval: not measured, not drawn
    assert progress.done == 400
    assert shown.getvalue().count("\r") == 2
    now[0], measured[:] = 105.0, [(1000, 0)]
    progress.finish("rebuild balances")
    assert progress.text() == ("rebuild balances  [####################]  100%  1,000 done, 0 to go  200 events/s  "
                               "swapping in")
    assert shown.getvalue().endswith("\rrebuild balances: 1,000 events in 5 s, 200 events/s\x1b[K\n")


def test_a_log_line_goes_above_the_status_line_never_into_it() -> None:
    shown = io.StringIO()
    status = StatusLine(shown)
    status.show("rebuild balances  50%")
    status.write("2026-12-05 [warning  ] parked event failed again")
    assert shown.getvalue() == "\rrebuild balances  50%\x1b[K"  # a partial line waits for its end
    status.write("\n")
    assert shown.getvalue() == ("\rrebuild balances  50%\x1b[K\r\x1b[K2026-12-05 [warning  ] parked event failed "
                                "again\nrebuild balances  50%")


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """structlog as an application that never configures it has it; as it was, afterwards."""
    import structlog

    was = structlog.get_config() if structlog.is_configured() else None
    structlog.reset_defaults()
    yield
    if was is None:
        structlog.reset_defaults()
    else:
        structlog.configure(**was)


def test_the_engine_logs_to_stderr_while_a_command_runs_and_logging_is_left_as_it_was(
        db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        unconfigured_structlog: None) -> None:
    import structlog

    deposits(db, "a", "b", poison="a")
    monkeypatch.setenv("BANK_DB", str(db))
    monkeypatch.setenv("BANK_POISON", "a")
    capsys.readouterr()  # what the set-up logged
    assert main(["--app", BANK, "dead-letters", "retry", "balances", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("retry: balances position 1 failed again")
    assert "parked event failed again" in captured.err
    assert "parked event failed again" not in captured.out
    assert not structlog.is_configured()


# -- process managers and scheduled commands -------------------------------------------------------------------------

CHECKOUT = "tests.readmodels.cli_apps:checkout"


def test_status_lists_process_managers_and_schedules_and_an_operator_cancels_one(db: Path) -> None:
    from mediator.readmodels.sqlite import SqliteStorage

    from .checkout_process import OpenOrder, wire

    storage = SqliteStorage(db)
    engine, mediator, _shop, _checkout = wire(storage)
    for order_id in ("o-1", "o-2"):
        mediator.send(OpenOrder(order_id=order_id, amount=5))
    settle(engine)  # the process manager's steps schedule the payment timeouts
    storage.close()
    environ = {"BANK_DB": str(db)}
    done = run("status", app=CHECKOUT, environ=environ)
    assert done.returncode == 0, done.stderr
    (row,) = [line.split() for line in done.stdout.splitlines() if line.startswith("checkout ")]
    assert row[:6] == ["checkout", "4", "0", "2", "0", "0"]  # checkpoint, behind, instances, parked, blocked
    assert "scheduled commands: 2 pending, the next due " in done.stdout
    listed = run("schedules", "list", app=CHECKOUT, environ=environ)
    assert [line.split()[0] for line in listed.stdout.splitlines()[2:]] == ["payment-timeout:o-1",
                                                                            "payment-timeout:o-2"]
    cancelled = run("schedules", "cancel", "payment-timeout:o-1", app=CHECKOUT, environ=environ)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, "cancelled payment-timeout:o-1")
    again = run("schedules", "cancel", "payment-timeout:o-1", app=CHECKOUT, environ=environ)
    assert again.returncode == 1
    assert "No scheduled command 'payment-timeout:o-1'" in one_line(again)
    left = run("schedules", "list", app=CHECKOUT, environ=environ)
    assert [line.split()[0] for line in left.stdout.splitlines()[2:]] == ["payment-timeout:o-2"]
    steps = run("processes", "list", app=CHECKOUT, environ=environ)
    assert steps.returncode == 0
    assert steps.stdout.splitlines()[2].split()[:4] == ["checkout", "4", "0", "2"]


# -- checked rebuilds, cancelled rebuilds, a rebuild's progress in status ------------------------------------------


def test_a_verified_upgrade_that_differs_unexpectedly_is_refused_then_accepted(db: Path) -> None:
    deposits(db, "a", "b", "b")
    broken = {"BANK_DB": str(db), "BANK_PROJECTION": "broken-cents"}
    refused = run("rebuild", "balances", environ=broken)
    assert refused.returncode == 1, refused.stderr
    assert "'b': only in the live generation" in refused.stdout
    assert "balances: not swapped in; the live generation stays." in refused.stdout
    assert "2 rows live, 1 rebuilt, 2 differing" in refused.stdout
    assert SqliteStorage(db).current_generation("balances") == 1
    held = run("status", "--sample", "0", environ=broken)
    assert re.search(r"rebuild balances: generation 2 at 3 of 3 \(100%\)", held.stdout), held.stdout
    accepted = run("rebuild", "balances", "--accept-differences", environ=broken)
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.endswith("balances: rebuilt as generation 2, now current\n")
    assert SqliteStorage(db).current_generation("balances") == 2


def test_a_verified_repair_prints_what_it_found_wrong(db: Path) -> None:
    deposits(db, "a", "b")
    storage = SqliteStorage(db)
    from .bank import Balance

    with storage.session("balances", storage.current_generation("balances")) as session:
        session.put(Balances.balance, Balance("a", 40))  # drift
    done = run("rebuild", "balances", environ={"BANK_DB": str(db), "BANK_PROJECTION": "checked"})
    assert done.returncode == 0, done.stderr
    assert "'a': amount: 40 -> 1" in done.stdout
    assert done.stdout.endswith("balances: rebuilt as generation 2, now current\n")


def test_a_rebuild_under_way_shows_in_status_and_can_be_cancelled(db: Path) -> None:
    deposits(db, "a", "b", "c")
    storage = SqliteStorage(db)
    bank = make_bank(storage)
    generation = bank.engine.rebuild("balances")  # claimed; no runner runs it
    environ = {"BANK_DB": str(db)}
    shown = run("status", "--sample", "0.2", environ=environ)
    assert shown.returncode == 0, shown.stderr
    assert (f"rebuild balances: generation {generation} at 0 of 3 (0%), no progress in 0.2 s (is a runner "
            "running it?)") in shown.stdout
    cancelled = run("rebuild", "balances", "--cancel", environ=environ)
    assert (cancelled.returncode, cancelled.stdout) == (
        0, f"balances: the rebuild into generation {generation} is cancelled and dropped; the live one stays\n")
    assert (storage.current_generation("balances"), storage.rebuilding("balances")) == (1, None)
    assert "rebuild balances" not in run("status", environ=environ).stdout
    again = run("rebuild", "balances", "--cancel", environ=environ)
    assert (again.returncode, again.stderr.strip()) == (1, "error: No rebuild of 'balances' is under way.")
