"""Operate read models from a shell.

    python -m mediator.readmodels --app myapp.wiring:engine status
    python -m mediator.readmodels --app myapp.wiring:engine rebuild NAME
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters list [NAME]
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters retry NAME POSITION
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters retry --all [NAME]
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters skip NAME POSITION
    python -m mediator.readmodels --app myapp.wiring:engine worker [--once] [--only NAME,NAME...]

``--app`` names a ``ReadModels`` object, or a function returning one, as
``module:attribute``. ``worker`` runs the projections delivered as
``Delivery.WORKER`` (and rebuilds) until stopped with SIGTERM or Ctrl-C; ``--only``
limits it to some of them. Several workers may run at once: on PostgreSQL each
projection is run by one of them at a time (a lease), and another takes it over
when that one dies. ``worker --once`` and ``rebuild`` take no lease: they may run
beside the lease holder, whose batches and theirs take turns on the checkpoint row.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .._errors import MediatorError
from ._engine import ReadModels
from ._ports import PARKED
from ._projections import Delivery


def load(spec: str) -> ReadModels:
    """Import ``module:attribute`` and return the engine it names (calling it if it is a factory)."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise SystemExit(f"--app must look like package.module:attribute, not {spec!r}")
    target: Any = getattr(importlib.import_module(module_name), attribute)
    engine = target if isinstance(target, ReadModels) else target()
    if not isinstance(engine, ReadModels):
        raise SystemExit(f"{spec} gave a {type(engine).__name__}, not a ReadModels engine")
    return engine


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def status(engine: ReadModels) -> str:
    rows = [
        (lag.projection, lag.generation, engine.built_by(lag.projection, lag.generation, record=False),
         "rebuilding" if lag.rebuilding else "current", lag.health, engine.delivery(lag.projection).value,
         lag.checkpoint, lag.applied, lag.positions_behind, f"{lag.seconds_behind:.3f}", lag.parked, lag.blocked,
         f"{lag.oldest_parked_seconds:.0f}" if lag.parked or lag.blocked else "")
        for lag in engine.lag()
    ]
    headers = ("projection", "generation", "version", "state", "health", "delivery", "checkpoint", "applied",
               "behind", "seconds behind", "parked", "blocked", "oldest parked (s)")
    return f"head of the log: {engine.storage.head()}\n" + render(headers, rows)


def _when(retry_at: float | None) -> str:
    if retry_at is None:
        return "by an operator"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(retry_at))


def dead_letters(engine: ReadModels, name: str | None) -> str:
    rows = [(d.projection, d.position, d.status, d.key or "", d.type_name, d.attempts,
             _when(d.retry_at) if d.status == PARKED else "", d.reason)
            for d in engine.dead_letters(name)]
    if not rows:
        return "no dead letters"
    return render(("projection", "position", "status", "key", "event type", "attempts", "next retry", "reason"),
                  rows)


def retry_all(engine: ReadModels, name: str | None) -> str:
    outcome = engine.retry_all(name)
    lines = [f"retry: {projection}: {applied} event(s) applied, {still} still parked"
             for projection, (applied, still) in outcome.items()]
    return "\n".join(lines) or "no projections"


def rebuild(engine: ReadModels, name: str) -> str:
    if name not in engine.projections:
        raise SystemExit(f"no projection named {name!r}; known: {', '.join(engine.projections)}")
    generation = engine.rebuild(name)
    engine.finish_rebuilds()  # waits retire_after before dropping the old tables: services may still read them
    return f"{name}: rebuilt as generation {generation}, now current"


def worker(engine: ReadModels, once: bool, only: list[str] | None = None) -> str:
    if only is not None:
        unknown = sorted(set(only) - set(engine.projections))
        if unknown:
            raise SystemExit(f"no projection named {', '.join(unknown)}; known: {', '.join(engine.projections)}")
    if once:
        return f"applied {engine.catch_up(deliveries=(Delivery.WORKER,), only=only)} events"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine.start(Delivery.WORKER, only=only)
    print("worker running; SIGTERM or Ctrl-C stops it", flush=True)
    stop.wait()
    engine.stop()
    return "worker stopped"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mediator.readmodels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", required=True, help="module:attribute of a ReadModels engine or a factory")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="lag and parked events per projection")
    rebuild_parser = commands.add_parser("rebuild", help="replay a projection into a fresh generation, then swap")
    rebuild_parser.add_argument("name")
    letters = commands.add_parser("dead-letters", help="list, retry or skip parked events")
    letters_commands = letters.add_subparsers(dest="action", required=True)
    listing = letters_commands.add_parser("list")
    listing.add_argument("name", nargs="?")
    retry_parser = letters_commands.add_parser("retry", help="apply a parked event (or --all) and those behind it")
    retry_parser.add_argument("--all", action="store_true", help="retry every parked event (of NAME, or of all)")
    retry_parser.add_argument("name", nargs="?")
    retry_parser.add_argument("position", type=int, nargs="?")
    skip_parser = letters_commands.add_parser("skip", help="drop a parked event unapplied; apply those behind it")
    skip_parser.add_argument("name")
    skip_parser.add_argument("position", type=int)
    worker_parser = commands.add_parser("worker", help="run the worker-delivered projections")
    worker_parser.add_argument("--once", action="store_true", help="catch up once and exit")
    worker_parser.add_argument("--only", metavar="NAMES", type=lambda v: [n for n in v.split(",") if n],
                               help="comma-separated projections this worker may run (default: all)")
    args = parser.parse_args(argv)

    engine = load(args.app)
    try:
        if args.command == "status":
            out = status(engine)
        elif args.command == "rebuild":
            out = rebuild(engine, args.name)
        elif args.command == "worker":
            out = worker(engine, args.once, args.only)
        elif args.action == "list":
            out = dead_letters(engine, args.name)
        elif args.action == "retry" and args.all:
            out = retry_all(engine, args.name)
        elif args.name is None or args.position is None:
            parser.error(f"dead-letters {args.action} needs NAME and POSITION, or --all")
        else:
            applied = getattr(engine, args.action)(args.name, args.position)
            out = f"{args.action}: {args.name} position {args.position}; {applied} event(s) applied"
    except MediatorError as exc:  # an unknown projection or position, a storage that is down: one line, not a trace
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.storage.close()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
