"""Instruction counts under valgrind's callgrind: the sync suite's two CPU-bound ratios, free of the machine's noise.

On a shared machine the wall-clock ratios of the framework tax and of projection
apply move by a tenth or more between runs minutes apart. Instructions executed
do not: callgrind counts the same for the same work whatever else runs. Each
figure is measured as a difference, so start-up and set-up cancel out: the
process doing the work ``n`` times, minus the same process doing everything but
the work. Run as ``python -m benchmarks._instructions MODE N`` under valgrind by
:func:`per_operation`; modes:

- ``mediator`` / ``hand``: ``N`` commands through the mediator (validation,
  logging, unit of work, outbox) / the same writes hand-coded (the sync suite's
  ``framework_tax`` pair);
- ``apply`` / ``raw``: ``N`` events projected by the engine / the same rows
  upserted by batched ``executemany`` (the ``projection_apply`` pair); the log is
  filled in both, so the difference is the applying alone;
- ``typed``: the same events projected into a typed table (``TypedBalances``),
  against ``apply`` (the ``typed_projection`` pair);
- ``dispatch:SCENARIO:FAMILY:IMPLEMENTATION``: ``N`` dispatches of the dispatch
  suite's ``this`` or ``baseline`` (:func:`per_dispatch`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("mediator", "hand", "apply", "raw")


def available() -> bool:
    """Whether valgrind is on the path."""
    return shutil.which("valgrind") is not None


def _count(mode: str, n: int, work: bool) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
         "benchmarks._instructions", mode, str(n), "work" if work else "idle"],
        capture_output=True, text=True, timeout=900, check=True, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same string hashes, so the same dict probes, in both
    )
    return refs(done.stderr)


def refs(stderr: str) -> int:
    """The instructions executed, from what valgrind printed."""
    found = re.search(r"refs:\s+([\d,]+)", stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def per_operation(mode: str, n: int) -> float:
    """Instructions per command (or event) of ``mode``: ``n`` of them, less the same process without them."""
    return (_count(mode, n, True) - _count(mode, n, False)) / n


def per_dispatch(scenario: str, family: str, implementation: str, n: int) -> float:
    """Instructions per dispatch of the dispatch suite's ``implementation`` (``this`` or ``baseline``)."""
    return per_operation(f"dispatch:{scenario}:{family}:{implementation}", n)


def _dispatching(mode: str, n: int, work: bool) -> None:
    import asyncio

    from . import dispatch

    _, scenario, family, implementation = mode.split(":")
    call, message = dispatch.one_message_call(scenario, family == "async", implementation)
    rounds = n if work else 0
    if family == "async":

        async def loop() -> None:
            for _ in range(200):  # warm: first-call paths, the event loop
                await call(message)
            for _ in range(rounds):
                await call(message)

        asyncio.run(loop())
        return
    for _ in range(200):
        call(message)
    for _ in range(rounds):
        call(message)


def _child(mode: str, n: int, work: bool) -> None:
    if mode.startswith("dispatch:"):
        _dispatching(mode, n, work)
        return
    from . import sync

    with sync.quiet_logging(), tempfile.TemporaryDirectory(prefix="mediator-instructions-") as tmp:
        if mode in ("apply", "typed", "raw"):
            _applying(Path(tmp), mode, n, work)
        else:
            _commands(Path(tmp), mode, n, work)


def _applying(folder: Path, mode: str, n: int, work: bool) -> None:
    from mediator.readmodels.sqlite import connect

    from . import sync

    path = folder / "apply.db"
    sync._fill(path, n)
    if mode == "apply":
        bench = sync.app(path)
        if work:
            bench.engine.catch_up()
        bench.storage.close()
        return
    if mode == "typed":
        sync.typed_apply(path, n, catch_up=work)
        return
    connection = connect(folder / "raw.db")
    connection.execute("CREATE TABLE raw_balance (account TEXT PRIMARY KEY, amount INTEGER)")
    rows = [(f"a{i}", 1) for i in range(n)]
    statement = sync.UPSERT.format(table="raw_balance")
    for start in range(0, n if work else 0, 500):  # as sync.raw_inserts
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(statement, rows[start:start + 500])
        connection.execute("COMMIT")
    connection.close()


def _commands(folder: Path, mode: str, n: int, work: bool) -> None:
    from . import sync

    bench = sync.app(folder / "tax.db")
    hand, by_hand = sync.hand_coded(folder / "hand.db")
    send = bench.mediator.send
    for i in range(50):  # warm both alike: connections, statement caches, first-call paths
        send(sync.Deposit(account=f"t{i % 100}", amount=1))
        by_hand(f"t{i % 100}", 1)
    if work and mode == "mediator":
        for i in range(n):
            send(sync.Deposit(account=f"t{i % 100}", amount=1))
    elif work:
        for i in range(n):
            by_hand(f"t{i % 100}", 1)
    bench.storage.close()
    hand.close()

if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "work")
