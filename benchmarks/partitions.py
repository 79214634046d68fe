"""The partitions suite: one heavy projection on PostgreSQL in 1, 2 and 4 partitions, applied by 1, 2 and 4 worker
processes, events per second side by side in one run.

Run by ``python -m benchmarks partitions`` (not part of the default run: it needs the server of
``MEDIATOR_BENCH_POSTGRES``, else ``MEDIATOR_TEST_POSTGRES``, else the machine's own). For each pair (partitions,
workers), in a schema of its own:

- the log is loaded with ``events`` events on ``keys`` keys straight through the storage (no projection running);
- ``workers`` processes (``python -m benchmarks.partitions worker``) open the engine with the projection in that
  many partitions and wait at a gate; once all are ready the gate opens and each starts its runner (leases share
  the partitions among them);
- the time from the gate to every partition's checkpoint at the head is the run's time.

The projection reads its key's row and writes it back per event (``session.get`` then ``put``): a round trip to
the server per event, as a projection that looks things up does, so its time is the server's and the network's
more than this process's CPU. ``median_ns`` is the time per event (median of the rounds); ``ratio`` is the
throughput over that of 1 partition with 1 worker, in the same run. The pairs take turns within each round.
With more workers than partitions, the extra ones stand by (they hold no partition).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs

from mediator import Event
from mediator.readmodels import (
    Delivery,
    EventTypes,
    Projection,
    ProjectionSession,
    ReadModels,
    Table,
    on,
)

from ._harness import FULL, QUICK, TINY, Result, Settings, append_straight
from .sync import quiet_logging

DSN = (os.environ.get("MEDIATOR_BENCH_POSTGRES") or os.environ.get("MEDIATOR_TEST_POSTGRES")
       or "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3")
PAIRS = [(p, w) for p in (1, 2, 4) for w in (1, 2, 4)]
"""(partitions, workers) measured."""
SIZES = {TINY: (600, 60, 1), QUICK: (8_000, 800, 3), FULL: (40_000, 4_000, 5)}
"""Events, keys and rounds per setting."""


@attrs.frozen(kw_only=True)
class Tallied(Event):
    key: str
    amount: int


@attrs.frozen
class Tally:
    key: str
    total: int
    count: int


class Tallies(Projection):
    """Each event reads its key's row and writes it back (a round trip to the server per event)."""

    name = "tallies"
    tally = Table(Tally, key="key")

    @on(Tallied)
    def tallied(self, event: Tallied, session: ProjectionSession) -> None:
        row = session.get(self.tally, event.key)
        if row is None:
            session.put(self.tally, Tally(event.key, event.amount, 1))
        else:
            session.put(self.tally, Tally(event.key, row.total + event.amount, row.count + 1))


def tallies(partitions: int) -> Tallies:
    """The projection in ``partitions`` partitions."""
    return type("Tallies", (Tallies,), {"partitions": partitions})()  # type: ignore[no-any-return]


def engine(schema: str, partitions: int) -> ReadModels:
    from mediator.readmodels.postgres import PostgresStorage

    types = EventTypes()
    types.register(Tallied, name="bench.tallied")
    built = ReadModels(PostgresStorage(DSN, schema=schema), types, batch_size=200, standby_interval=0.05,
                       poll_interval=0.05)
    built.add(tallies(partitions), delivery=Delivery.WORKER)
    return built


def worker() -> None:
    """A worker process: open the engine, say ``ready``, wait for the gate, run until stdin closes."""
    built = engine(os.environ["BENCH_SCHEMA"], int(os.environ["BENCH_PARTITIONS"]))
    built.storage.head()  # connected before the gate opens
    print("ready", flush=True)
    gate = Path(os.environ["BENCH_GATE"])
    while not gate.exists():
        time.sleep(0.001)
    built.start(Delivery.WORKER)
    sys.stdin.read()  # until the suite closes it
    built.stop()
    built.storage.close()


def _load(built: ReadModels, events: int, keys: int) -> None:
    def tallied(number: int) -> tuple[Tallied, str]:
        key = f"k{number % keys:06d}"
        return Tallied(key=key, amount=number), key

    append_straight(built, events, tallied, chunk=2_000)


def _one(partitions: int, workers: int, events: int, keys: int, folder: Path) -> float:
    """Seconds for ``workers`` processes to apply ``events`` in ``partitions`` partitions (a fresh schema)."""
    from mediator.readmodels.postgres import PostgresStorage

    schema = f"bench_partitions_{uuid.uuid4().hex[:10]}"
    built = engine(schema, partitions)
    storage = built.storage
    assert isinstance(storage, PostgresStorage)
    gate = folder / f"{schema}.go"
    children: list[subprocess.Popen[str]] = []
    try:
        _load(built, events, keys)
        head = storage.head()
        env = {**os.environ, "BENCH_SCHEMA": schema, "BENCH_PARTITIONS": str(partitions), "BENCH_GATE": str(gate),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for _ in range(workers):
            child = subprocess.Popen([sys.executable, "-m", "benchmarks.partitions", "worker"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            children.append(child)
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a partitions worker did not start")
        started = time.perf_counter()
        gate.touch()
        while built.applied("tallies", 1) < head:
            time.sleep(0.002)
        spent = time.perf_counter() - started
        rows = built.find(Tallies.tally)
        if sum(row.count for row in rows) != events or len(rows) != keys:
            raise RuntimeError(f"{partitions} partitions, {workers} workers: the read model does not add up")
        return spent
    finally:
        for child in children:
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.close()
            child.wait(30)
            child.stdout.close()
        storage.close()
        storage.drop_schema()


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    events, keys, rounds = SIZES.get(settings, SIZES[QUICK])
    timed: dict[tuple[int, int], list[float]] = {pair: [] for pair in PAIRS}
    with quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-partitions-") as tmp:
        for round_ in range(rounds):
            for partitions, workers in PAIRS:
                progress(f"partitions: round {round_ + 1} of {rounds}, {partitions} partitions, {workers} workers")
                timed[partitions, workers].append(_one(partitions, workers, events, keys, Path(tmp)))
    base = statistics.median(timed[1, 1])
    return [Result("partitions", f"{p} partitions", f"{w} workers", "postgres",
                   statistics.median(spent) / events * 1e9, base / statistics.median(spent))
            for (p, w), spent in timed.items()]


def summary(results: list[Result]) -> str:
    by = {(r.scenario, r.family): r for r in results}
    lines = ["| events/s (vs 1 partition, 1 worker) | 1 worker | 2 workers | 4 workers |", "|---|---:|---:|---:|"]
    for p in (1, 2, 4):
        cells = []
        for w in (1, 2, 4):
            found = by.get((f"{p} partitions", f"{w} workers"))
            cells.append("-" if found is None else f"{1e9 / found.median_ns:,.0f} ({found.ratio:.2f}x)")
        lines.append(f"| {p} partition{'s' if p > 1 else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    worker()
