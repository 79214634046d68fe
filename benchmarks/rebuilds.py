"""What checking a rebuild costs beside the rebuild itself, on the embedded SQLite default.

A log of deposits to many accounts, a projection keeping a row per account. In one run:

- ``rebuild``: replaying the whole log into a fresh generation and swapping it in (``engine.rebuild`` then
  ``finish_rebuilds``, no check);
- ``verify``: comparing a caught-up rebuild with the live generation (``engine.rebuilds.check``: every row of
  both read, digested and compared by key), the check a ``verify_rebuilds`` projection makes before its swap.

Each is the median of ``repeats`` runs; the ratio is the check's time to the rebuild's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mediator.readmodels import EventTypes, ReadModels
from mediator.readmodels.sqlite import SqliteStorage

from ._harness import FULL, QUICK, Result, Settings, append_straight
from .live import Counts, Noted
from .sync import quiet_logging

SIZES = {QUICK: (50_000, 5_000), FULL: (500_000, 50_000)}
"""Events in the log, and accounts (rows) they fall on, per setting."""


def _engine(path: Path) -> ReadModels:
    types = EventTypes()
    types.register(Noted, name="bench.noted")
    engine = ReadModels(SqliteStorage(path), types, retire_after=0, batch_size=2_000)
    engine.add(Counts())
    return engine


def _load(engine: ReadModels, events: int, keys: int) -> None:
    """Append ``events`` deposits straight to the log (as the loader of the scenario suite does) and project them."""

    def noted(number: int) -> tuple[Noted, str]:
        key = f"k{number % keys:07d}"
        return Noted(key=key), key

    append_straight(engine, events, noted)
    engine.catch_up()


def _caught_up_rebuild(engine: ReadModels) -> int:
    """Start a rebuild and replay it to the head, without swapping it in; its generation."""
    generation = engine.rebuild("counts")
    track = engine._tracks["counts"]
    while engine.applier.run_batch(track, generation, True):
        pass
    return generation


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    events, keys = SIZES.get(settings, (2_000, 200))
    timed: dict[str, list[float]] = {"rebuild": [], "verify": []}
    with quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-rebuilds-") as tmp:
        engine = _engine(Path(tmp) / "rebuilds.db")
        progress(f"rebuilds: loading {events:,} events on {keys:,} rows")
        _load(engine, events, keys)
        for repeat in range(settings.repeats):
            progress(f"rebuilds: round {repeat + 1} of {settings.repeats}")
            started = time.perf_counter()
            engine.rebuild("counts")
            engine.finish_rebuilds()
            timed["rebuild"].append(time.perf_counter() - started)
            _caught_up_rebuild(engine)
            started = time.perf_counter()
            check = engine.rebuilds.check("counts")
            timed["verify"].append(time.perf_counter() - started)
            if check is None or not check.same or check.tables[0].live_rows != keys:
                raise RuntimeError(f"the check found {check}")
            engine.rebuilds.cancel("counts")
            engine.rebuilds.drop_cancelled("counts")
        engine.storage.close()
    rebuild = statistics.median(timed["rebuild"])
    return [Result("rebuilds", name, "sqlite", f"{events} events, {keys} rows", statistics.median(spent) * 1e9,
                   statistics.median(spent) / rebuild) for name, spent in timed.items()]


def summary(results: list[Result]) -> str:
    by = {r.scenario: r for r in results}
    rebuild, verify = by["rebuild"], by["verify"]
    return "\n".join([
        f"| on {rebuild.implementation} | time | vs the rebuild |", "|---|---:|---:|",
        f"| rebuild (replay into a fresh generation, swap in) | {rebuild.median_ns / 1e9:.2f} s | 1.00x |",
        f"| check (compare with the live generation, every row) | {verify.median_ns / 1e9:.2f} s | "
        f"{verify.ratio:.2f}x |"])
