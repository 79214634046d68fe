"""Timing loops, results and reports shared by every suite.

Each measurement is the median, over ``repeats`` runs, of the time per call of
a tight loop whose call count is calibrated first (as ``timeit.autorange``
does) so that one run lasts at least ``min_seconds``. The loop itself costs about 10 ns per call on
the development machine; it is the same for every implementation of a scenario,
so it is left in (ratios are slightly flattered towards 1, never the reverse).
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Result:
    """One implementation of one scenario, timed, with its ratio to the scenario's floor."""

    suite: str
    scenario: str
    family: str
    implementation: str
    median_ns: float
    ratio: float


@attrs.frozen
class Settings:
    """How long to measure: each repeat lasts at least ``min_seconds``; ``repeats`` of them."""

    min_seconds: float
    repeats: int


QUICK = Settings(min_seconds=0.02, repeats=5)
FULL = Settings(min_seconds=0.2, repeats=9)
TINY = Settings(min_seconds=0.0005, repeats=1)
"""For smoke tests: proves the runner works, measures nothing worth reading."""


def _next_number(number: int, elapsed: int, settings: Settings) -> int | None:
    """The next call count to try while calibrating, or ``None`` once a run is long enough."""
    target = settings.min_seconds * 1e9
    if elapsed >= target or number >= 10_000_000:
        return None
    return number * (10 if elapsed * 10 < target else 2)


def _measure(loop: Callable[[int], int], settings: Settings) -> float:
    """Calibrate the call count like ``timeit.autorange``, then return the median ns per call."""
    number, elapsed = 1, loop(1)
    while (bigger := _next_number(number, elapsed, settings)) is not None:
        number, elapsed = bigger, loop(bigger)
    samples = [elapsed] + [loop(number) for _ in range(settings.repeats - 1)]
    return statistics.median(samples) / number


def time_sync(func: Callable[[Any], Any], arg: Any, settings: Settings) -> float:
    """Median ns per ``func(arg)``."""

    def loop(number: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(number):
            func(arg)
        return time.perf_counter_ns() - start

    return _measure(loop, settings)


def time_sync0(func: Callable[[], Any], settings: Settings) -> float:
    """Median ns per ``func()``."""

    def loop(number: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(number):
            func()
        return time.perf_counter_ns() - start

    return _measure(loop, settings)


def _in_one_loop(body: Callable[[int], Awaitable[int]], settings: Settings) -> float:
    """The async twin of :func:`_measure`; every repeat runs in one event loop."""

    async def main() -> float:
        number, elapsed = 1, await body(1)
        while (bigger := _next_number(number, elapsed, settings)) is not None:
            number, elapsed = bigger, await body(bigger)
        samples = [elapsed] + [await body(number) for _ in range(settings.repeats - 1)]
        return statistics.median(samples) / number

    return asyncio.run(main())


def time_async(func: Callable[[Any], Awaitable[Any]], arg: Any, settings: Settings) -> float:
    """Median ns per ``await func(arg)``, all inside one running event loop."""

    async def body(number: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(number):
            await func(arg)
        return time.perf_counter_ns() - start

    return _in_one_loop(body, settings)


def time_async0(func: Callable[[], Awaitable[Any]], settings: Settings) -> float:
    """Median ns per ``await func()``."""

    async def body(number: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(number):
            await func()
        return time.perf_counter_ns() - start

    return _in_one_loop(body, settings)


def run_once(call: Callable[[], Any], is_async: bool) -> Any:
    """Call once (awaiting it for async) and return the result, for checking before timing."""
    if not is_async:
        return call()

    async def once() -> Any:
        return await call()

    return asyncio.run(once())


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), ``q`` from 0 to 1."""
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is between 0 and 1, not {q!r} (the p99 is 0.99)")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def machine() -> dict[str, str]:
    """Describe where the figures came from."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "system": f"{platform.system()} {platform.release()}",
    }


def write_json(path: Path, results: Sequence[Result]) -> None:
    """Write the results as a JSON list (the format every suite shares)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([attrs.asdict(r) for r in results], indent=2) + "\n")


def table(results: Sequence[Result]) -> str:
    """Render results as a markdown table, grouped by scenario and family."""
    lines = ["| scenario | family | implementation | median ns | ratio to floor |", "|---|---|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r.scenario} | {r.family} | {r.implementation} | {r.median_ns:,.0f} | {r.ratio:.2f}x |")
    return "\n".join(lines)


def append_straight(engine: Any, count: int, event_of: Callable[[int], tuple[Any, str]], *,
                    chunk: int = 5_000) -> None:
    """Append ``count`` events straight to ``engine``'s log, ``chunk`` to a transaction (no command runs, no
    projection applies them): ``event_of(n)`` gives the n-th event and its key."""
    from mediator.readmodels import NewEvent, new_event_id

    now = time.time()
    for start in range(0, count, chunk):
        session = engine.storage.begin()
        batch = []
        for number in range(start, min(count, start + chunk)):
            event, key = event_of(number)
            name, version, data = engine.types.encode(event)
            batch.append(NewEvent(new_event_id(), name, version, data, key, now, "{}"))
        session.append(batch)
        session.commit()
