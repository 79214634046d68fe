"""The PostgreSQL suite: several processes on one database, against ``eventsourcing``'s PostgreSQL persistence.

Run by ``python -m benchmarks postgres`` (not part of the default run). The
database is ``MEDIATOR_BENCH_POSTGRES`` (else ``MEDIATOR_TEST_POSTGRES``; a libpq
DSN, by default the machine's own); every phase works in a schema of its own,
named for the run, dropped at the end. Each figure comes with its reference from
the same run:

- ``append`` (families ``1 writer``, ``2 writers``): commands per second, each
  command one transaction appending one event (the bank's ``Deposit`` through the
  mediator, its projection delivered by workers, so none runs in the writer),
  from one writer process and from two started together, sending back to back in
  the same wall-clock window. Reference: the same work on ``eventsourcing``
  (:mod:`benchmarks._pges`), 1 and 2 processes; the configurations take turns
  within each round and the median round counts. ``median_ns`` is the time per
  command of all writers together; ``ratio`` is this / eventsourcing.
- ``append_scaling`` (``2 writers / 1 writer``): ``ratio`` is the throughput of two
  writers over one's, for each implementation (above 1: the second writer helped).
- ``projection_lag_p50`` / ``_p99`` (``2 writers, worker process``): two writer
  processes at a steady rate, the projection applied by another process
  (``python -m mediator.readmodels ... worker``; eventsourcing: a
  ``ProjectionRunner`` following the notification log); each event's lag is the
  time the batch that applied it committed (eventsourcing: the event's transaction)
  minus its ``recorded_at`` (eventsourcing: the domain event's ``timestamp``).
  ``ratio`` is this / eventsourcing.
- ``failover_p50`` / ``failover_max`` (``SIGKILL lease holder``): two worker
  processes on the projection under a steady append load; the one holding the
  advisory-lock lease (found through ``pg_locks``) is killed with SIGKILL, and
  the time until the other commits its first batch is measured; a fresh standby
  is started for the next repetition. Reference: the engine's ``poll_interval``
  (``ratio`` is failover / poll interval). After the last one, every deposit must
  be in the balances exactly once.

With ``with_peers`` false, or without ``eventsourcing`` installed, only our side
runs and its ratios are to itself (1.0).
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._harness import FULL, QUICK, TINY, Result, Settings, percentile
from ._pgchild import Child, ChildFailed, run_window

DSN = (os.environ.get("MEDIATOR_BENCH_POSTGRES") or os.environ.get("MEDIATOR_TEST_POSTGRES")
       or "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3")
PROJECTION = "balances"
WORKER = ("-m", "mediator.readmodels", "--app", "benchmarks._pgapp:worker_engine", "worker")
LAG_FAMILY = "2 writers, worker process"
FAILOVER_FAMILY = "SIGKILL lease holder"


@attrs.frozen
class Size:
    rounds: int
    """Rounds of the four append configurations, taking turns."""
    append_seconds: float
    """Each append window."""
    lag_rate: float
    """Commands per second per writer (two writers) while the lag is measured."""
    lag_seconds: float
    failovers: int
    """Lease holders killed, one after the other."""
    failover_rate: float
    """Commands per second of the one writer during the failovers."""


SIZES = {QUICK: Size(3, 4.0, 100.0, 8.0, 7, 200.0), FULL: Size(5, 10.0, 150.0, 20.0, 15, 200.0),
         TINY: Size(1, 0.3, 50.0, 0.5, 2, 100.0)}
QUICK_SIZE = SIZES[QUICK]


class Mismatch(AssertionError):
    """A measured process did not do the work it was given (lost or doubled events): its timing means nothing."""


# -- the database ------------------------------------------------------------------------------------------


class Database:
    """A connection for the suite's own looks at the database, and the run's schemas, dropped at the end."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.connection = psycopg.connect(dsn, autocommit=True)
        self.prefix = f"bench_pg_{uuid.uuid4().hex[:8]}"
        self.schemas: list[str] = []

    def schema(self, part: str) -> str:
        """A new schema for one phase."""
        from psycopg import sql

        name = f"{self.prefix}_{part}"
        self.connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        self.schemas.append(name)
        return name

    def one(self, query: str, params: Sequence[Any] = ()) -> Any:
        row = self.connection.execute(query, params).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        from psycopg import sql

        try:
            for name in self.schemas:
                self.connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        finally:
            self.connection.close()


def head_and_checkpoint(db: Database, schema: str, kind: str) -> tuple[int, int]:
    """(last event, last event the projection has committed) in ``schema``."""
    if kind == "this":
        head = db.one(f'SELECT position FROM "{schema}".log_head')
        done = db.one(f'SELECT position FROM "{schema}".projection_tracking WHERE projection = %s AND generation = 1',
                      (PROJECTION,))
    else:
        head = db.one(f'SELECT MAX(notification_id) FROM "{schema}".accounts_events')
        done = db.one(f'SELECT notification_id FROM "{schema}".balancesprojection_tracking '
                      "WHERE application_name = 'Accounts'")
    return int(head or 0), int(done or 0)


def caught_up(db: Database, schema: str, kind: str, timeout: float = 120.0) -> int:
    """Wait until the projection has applied the whole log; return its length."""
    deadline = time.monotonic() + timeout
    while True:
        head, done = head_and_checkpoint(db, schema, kind)
        if done >= head > 0:
            return head
        if time.monotonic() > deadline:
            raise ChildFailed(f"The {kind} projection in {schema} is at {done} of {head} after {timeout:g} s.")
        time.sleep(0.01)


def environment(dsn: str, schema: str, log: Path | None = None) -> dict[str, str]:
    env = {"BENCH_PG_DSN": dsn, "BENCH_PG_SCHEMA": schema}
    if log is not None:
        env["BENCH_PG_LAG_LOG"] = str(log)
    return env


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put processes in; whatever is still running at the end is stopped (killed on an error)."""
    started: list[Child] = []
    try:
        yield started
    except BaseException:
        for child in started:
            child.kill()
        raise
    for child in started:
        child.stop()


def writers(kind: str, db: Database, schema: str, count: int, into: list[Child]) -> list[Child]:
    """``count`` writer processes of ``kind``, started together, once all are ready."""
    made = [Child(f"{kind} writer {i + 1}", ("-m", "benchmarks._pgchild", "writer", kind),
                  environment(db.dsn, schema))
            for i in range(count)]
    into += made
    for child in made:
        child.expect("ready")
    return made


def read_lags(path: Path, since: float) -> dict[int, float]:
    """Lag by position from a lag log: commit time minus recorded time, for events recorded from ``since``."""
    lags: dict[int, float] = {}
    for line in path.read_text().splitlines():
        position, recorded, committed = line.split()
        if float(recorded) >= since:
            if int(position) in lags:
                raise Mismatch(f"position {position} was applied twice ({path.name})")
            lags[int(position)] = float(committed) - float(recorded)
    return lags


# -- the phases --------------------------------------------------------------------------------------------


def prepare(db: Database, kind: str, part: str) -> str:
    """A schema with ``kind``'s tables made, so processes starting together do not race to make them."""
    schema = db.schema(part)
    if kind == "this":
        from mediator.readmodels.postgres import PostgresStorage

        PostgresStorage(db.dsn, schema=schema).close()
    else:
        from . import _pges

        _pges.create_tables(db.dsn, schema)
    return schema


def append(db: Database, size: Size, kinds: Sequence[str],
           progress: Callable[[str], None]) -> dict[tuple[str, int], float]:
    """Median commands per second by (kind, writers), the configurations taking turns in each round."""
    rates: dict[tuple[str, int], list[float]] = {(k, n): [] for k in kinds for n in (1, 2)}
    progress(f"postgres: starting {2 * len(kinds)} writer processes ({', '.join(kinds)})")
    with children() as started:
        pool = {kind: writers(kind, db, prepare(db, kind, f"append_{kind[:2]}"), 2, started) for kind in kinds}
        order = [(kind, n) for n in (1, 2) for kind in kinds]
        for round_ in range(size.rounds):
            progress(f"postgres: append, round {round_ + 1} of {size.rounds}: "
                     f"{len(order)} windows of {size.append_seconds:g} s")
            for kind, n in order if round_ % 2 == 0 else order[::-1]:
                start, finished, count = run_window(pool[kind][:n], size.append_seconds)
                rates[kind, n].append(count / (finished - start))
    return {key: statistics.median(values) for key, values in rates.items()}


def lag(db: Database, size: Size, kind: str, folder: Path) -> list[float]:
    """Lags of the events two writers append at a steady rate while a worker process projects them."""
    schema = prepare(db, kind, f"lag_{kind[:2]}")
    log = folder / f"lag-{kind}.log"
    with children() as started:
        args = WORKER if kind == "this" else ("-m", "benchmarks._pgchild", "projector")
        worker = Child(f"{kind} projection worker", args, environment(db.dsn, schema, log))
        started.append(worker)
        worker.expect("worker running" if kind == "this" else "ready")
        pair = writers(kind, db, schema, 2, started)
        caught_up(db, schema, kind)  # the warm-up commands: applied before the window opens
        start, _finished, count = run_window(pair, size.lag_seconds, size.lag_rate)
        caught_up(db, schema, kind)
        worker.stop()
    lags = read_lags(log, start)
    if len(lags) != count:
        raise Mismatch(f"the {kind} projection applied {len(lags)} of the {count} events appended in the window")
    return list(lags.values())


def holder(db: Database, key: int) -> str | None:
    """The ``application_name`` of the session holding advisory lock ``key``, if any."""
    name = db.one(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::bigint = %s "
        "AND l.objid::bigint = %s AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (key >> 32, key & 0xFFFFFFFF))
    return None if name is None else str(name)


def standing_by(db: Database, names: Sequence[str]) -> bool:
    """Whether a session named one of ``names`` has tried for a lease and waits (its runner is up, the lease taken)."""
    return bool(db.one("SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) "
                       "AND query LIKE 'SELECT pg_try_advisory_lock%%'", (list(names),)))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, pause: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise ChildFailed(f"Timed out after {timeout:g} s waiting for {what}.")
        time.sleep(pause)
    return found


def first_commit_after(path: Path, after: float) -> float | None:
    """The first commit time after ``after`` in a worker's lag log, if it has committed since."""
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        committed = float(line.split()[2])
        if committed >= after:
            return committed
    return None


@attrs.define
class Workers:
    """The projection worker processes of the failover phase, by ``application_name``."""

    db: Database
    schema: str
    folder: Path
    started: list[Child]
    logs: dict[str, Path] = attrs.Factory(dict)
    running: dict[str, Child] = attrs.Factory(dict)

    def spawn(self) -> None:
        """Start one more worker, named for its connections, and wait until it runs."""
        name = f"bench-failover-{len(self.logs) + 1}"
        self.logs[name] = self.folder / f"{name}.log"
        env = environment(f"{self.db.dsn} application_name={name}", self.schema, self.logs[name])
        child = self.running[name] = Child(name, WORKER, env)
        self.started.append(child)
        child.expect("worker running")

    def names(self, name: str) -> list[str]:
        """The application names worker ``name``'s sessions may carry: the one its DSN gives, or the storage's
        default ``mediator:<pid>`` where a connection was opened without it."""
        return [name, f"mediator:{self.running[name].process.pid}"]

    def owner(self, key: int) -> str | None:
        """The running worker holding lock ``key``, if one does."""
        found = holder(self.db, key)
        return next((name for name in self.running if found in self.names(name)), None)

    def first_commit(self, names: Sequence[str], after: float) -> float | None:
        """The earliest batch commit after ``after`` by any of ``names``, if one has committed since."""
        return min((t for name in names if (t := first_commit_after(self.logs[name], after)) is not None),
                   default=None)

    def fail_over(self, key: int) -> float:
        """Kill the lease holder once every other worker stands by; seconds until one of them commits a batch."""
        owner = wait_for("a worker to hold the lease", functools.partial(self.owner, key))
        others = [name for name in self.running if name != owner]
        for name in others:
            wait_for(f"{name} to stand by", functools.partial(standing_by, self.db, self.names(name)))
        seen = head_and_checkpoint(self.db, self.schema, "this")[1]
        wait_for("the lease holder to advance", lambda: head_and_checkpoint(self.db, self.schema, "this")[1] > seen)
        killed = time.time()
        self.running.pop(owner).kill()
        committed: float = wait_for("a standby to commit a batch", functools.partial(self.first_commit, others, killed))
        taken = wait_for("a standby to hold the lease", functools.partial(self.owner, key))
        if taken not in others:
            raise Mismatch(f"after {owner} was killed the lease is held by {taken}, not by a standby")
        return committed - killed


def failover(db: Database, size: Size, folder: Path, progress: Callable[[str], None]) -> tuple[list[float], float]:
    """Seconds from SIGKILL of the lease holder to a standby's first committed batch, per repetition;
    and the workers' poll interval."""
    from mediator.readmodels.postgres import lock_key

    from . import _pgapp

    schema = prepare(db, "this", "failover")
    probe = _pgapp.bank(db.dsn, schema)
    poll = probe.engine.poll_interval
    probe.storage.close()
    times: list[float] = []
    with children() as started:
        workers = Workers(db, schema, folder, started)
        workers.spawn()
        workers.spawn()
        (load,) = writers("this", db, schema, 1, started)
        load.send(f"go {time.time()!r} {time.time() + 3600!r} {size.failover_rate!r}")
        for repetition in range(size.failovers):
            progress(f"postgres: worker failover {repetition + 1} of {size.failovers}")
            times.append(workers.fail_over(lock_key(schema, PROJECTION)))
            workers.spawn()  # the next standby
        load.kill()
        head = caught_up(db, schema, "this")
        total = db.one(f'SELECT SUM(amount) FROM "{schema}".balances__balance__g1')
        if total != head:
            raise Mismatch(f"after the failovers the balances add up to {total}, not the {head} deposits")
    return times, poll


# -- the run -----------------------------------------------------------------------------------------------


def has_eventsourcing() -> bool:
    try:
        import eventsourcing.postgres  # noqa: F401
    except ImportError:
        return False
    return True


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    """Measure every scenario at the size that matches ``settings``, eventsourcing beside each where it can run."""
    size = SIZES.get(settings, QUICK_SIZE)
    kinds = ["this", "eventsourcing"] if with_peers and has_eventsourcing() else ["this"]
    results: list[Result] = []

    def add(scenario: str, family: str, implementation: str, seconds: float, ratio: float) -> None:
        results.append(Result("postgres", scenario, family, implementation, seconds * 1e9, ratio))

    db = Database(DSN)
    try:
        with tempfile.TemporaryDirectory(prefix="mediator-postgres-") as tmp:
            folder = Path(tmp)
            rates = append(db, size, kinds, progress)
            reference = kinds[-1]
            for n, family in ((1, "1 writer"), (2, "2 writers")):
                for kind in kinds:
                    add("append", family, kind, 1 / rates[kind, n], rates[reference, n] / rates[kind, n])
            for kind in kinds:
                add("append_scaling", "2 writers / 1 writer", kind, 1 / rates[kind, 2], rates[kind, 2] / rates[kind, 1])
            lags: dict[str, list[float]] = {}
            for kind in kinds:
                progress(f"postgres: {kind} projection lag across processes, 2 writers x {size.lag_rate:g}/s "
                         f"for {size.lag_seconds:g} s")
                lags[kind] = lag(db, size, kind, folder)
            for name, q in (("p50", 0.5), ("p99", 0.99)):
                base = percentile(lags[reference], q)
                for kind in kinds:
                    add(f"projection_lag_{name}", LAG_FAMILY, kind, percentile(lags[kind], q),
                        percentile(lags[kind], q) / base)
            times, poll = failover(db, size, folder, progress)
            for name, value in (("p50", percentile(times, 0.5)), ("max", max(times))):
                add(f"failover_{name}", FAILOVER_FAMILY, "poll_interval", poll, 1.0)
                add(f"failover_{name}", FAILOVER_FAMILY, "this", value, value / poll)
    finally:
        db.close()
    return results


def summary(results: list[Result]) -> str:
    """Our figures beside eventsourcing's (or the poll interval), as measured in this run."""
    by = {(r.scenario, r.family, r.implementation): r for r in results}
    peer = any(r.implementation == "eventsourcing" for r in results)

    def cell(scenario: str, family: str, kind: str, show: Callable[[Result], str]) -> str:
        found = by.get((scenario, family, kind))
        return show(found) if found is not None else "not measured"

    def per_second(r: Result) -> str:
        return f"{1e9 / r.median_ns:,.0f}/s"

    def ms(r: Result) -> str:
        return f"{r.median_ns / 1e6:,.1f} ms"

    lines = ["| measure | this | eventsourcing | this vs eventsourcing |", "|---|---:|---:|---|"]
    for family, label in (("1 writer", "1 writer process"), ("2 writers", "2 writer processes")):
        ours = by[("append", family, "this")]
        versus = f"{1 / ours.ratio:.2f}x the throughput" if peer else "-"
        lines.append(f"| append, {label} | {per_second(ours)} | "
                     f"{cell('append', family, 'eventsourcing', per_second)} | {versus} |")
    scaling = "2 writers / 1 writer"
    lines.append(f"| throughput, 2 writers / 1 writer | {by[('append_scaling', scaling, 'this')].ratio:.2f}x | "
                 f"{cell('append_scaling', scaling, 'eventsourcing', lambda r: f'{r.ratio:.2f}x')} | - |")
    for q in ("p50", "p99"):
        ours = by[(f"projection_lag_{q}", LAG_FAMILY, "this")]
        versus = f"{ours.ratio:.2f}x the lag" if peer else "-"
        lines.append(f"| projection lag {q}, {LAG_FAMILY} | {ms(ours)} | "
                     f"{cell(f'projection_lag_{q}', LAG_FAMILY, 'eventsourcing', ms)} | {versus} |")
    p50, worst = by[("failover_p50", FAILOVER_FAMILY, "this")], by[("failover_max", FAILOVER_FAMILY, "this")]
    poll = by[("failover_p50", FAILOVER_FAMILY, "poll_interval")]
    lines.append(f"| worker failover p50 / max ({FAILOVER_FAMILY}) | {ms(p50)} / {ms(worst)} | n/a (no leases) | "
                 f"{p50.ratio:.2f}x / {worst.ratio:.2f}x the poll interval ({ms(poll)}) |")
    if not peer:
        lines.append("")
        lines.append("eventsourcing was not measured (`--no-peers`, or not installed: "
                     "pip install 'eventsourcing[postgres]').")
    return "\n".join(lines)
