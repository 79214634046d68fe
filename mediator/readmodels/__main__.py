"""Operate read models from a shell.

    python -m mediator.readmodels --app myapp.wiring:engine status
    python -m mediator.readmodels --app myapp.wiring:engine rebuild NAME
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters list [NAME]
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters retry NAME POSITION
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters retry --all [NAME]
    python -m mediator.readmodels --app myapp.wiring:engine dead-letters skip NAME POSITION
    python -m mediator.readmodels --app myapp.wiring:engine processes list
    python -m mediator.readmodels --app myapp.wiring:engine processes retry NAME POSITION
    python -m mediator.readmodels --app myapp.wiring:engine schedules list [--parked]
    python -m mediator.readmodels --app myapp.wiring:engine schedules cancel ID
    python -m mediator.readmodels --app myapp.wiring:engine schedules retry ID
    python -m mediator.readmodels --app myapp.wiring:engine worker [--once] [--only NAME,NAME...]
    python -m mediator.readmodels --app myapp.wiring:app describe

``--app`` names, as ``module:attribute``, a ``ReadModels`` engine, a ``Mediator`` (or ``AsyncMediator``), an
object with ``.engine`` and/or ``.mediator`` (an application's composition root), or a function taking no
arguments that returns one of those. ``describe`` prints what the mediator runs for each message type (its
behaviours in order, its handler and their lifetimes) and the engine's projections; every other command needs
the engine.

``worker`` runs the projections delivered as ``Delivery.WORKER`` (and rebuilds) until stopped with SIGTERM or
Ctrl-C; ``--only`` limits it to some of them. Several workers may run at once: on PostgreSQL each projection is
run by one of them at a time (a lease), and another takes it over when that one dies. ``worker --once`` and
``rebuild`` take no lease: they may run beside the lease holder, whose batches and theirs take turns on the
checkpoint row.

Only ``worker`` creates a database (the SQLite file, the PostgreSQL schema and tables) that is not there yet:
starting the workers is how a deployment may begin. Every other command opens only a database that exists, and a
mistyped path is an error rather than a new, empty database reported as current.

Exit status: 0 when the command did all it was asked; 1 when it failed or left something undone (a database that
is not there or is down, no dead letter at that position, an event that stays parked, an application that raised
while it was imported or built); 2 when the command line is wrong (an ``--app`` module or attribute that is not
there, an object that is neither engine nor mediator, an unknown projection name); 130 when interrupted. Errors
are one line on stderr (``--traceback`` shows the whole trace instead).

Tables go to stdout: coloured on a terminal (unless ``NO_COLOR`` is set), plain aligned text when piped.
``rebuild`` and ``worker --once`` show their progress (events/s, positions to go, time left) on stderr when it
is a terminal. Unless the application configures structlog itself, the engine's warnings and errors go to stderr
while a command runs (its info lines say what the command's own output says), never between the lines of a
table; a running ``worker`` leaves logging as the application has it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

import attrs
import structlog

from .._errors import MediatorError
from .._messages import Kind, qualname
from ._console import BOLD, GREEN, RED, YELLOW, Progress, StatusLine, paint, table, wants_colour
from ._engine import ReadModels
from ._errors import RebuildRefusedError, UnknownProjectionError
from ._loading import App, BadAppError, load
from ._opening import existing_only
from ._ports import BLOCKED, PARKED, PENDING, partition_name
from ._projections import Delivery


@attrs.frozen
class Outcome:
    """What a command prints on stdout, and whether it did all it was asked (else the exit status is 1)."""

    text: str
    complete: bool = True


# -- status and dead letters ---------------------------------------------------------------------------------------

_HEALTH = {"ok": GREEN, "parked": RED, "stalled": RED, "holding": YELLOW}


def _status_style(header: str, cell: str) -> str | None:
    if header == "health":
        return _HEALTH.get(cell)
    if header == "state" and cell == "rebuilding":
        return YELLOW
    if header in ("behind", "blocked") and cell != "0":
        return YELLOW
    if header == "parked" and cell != "0":
        return RED
    return None


def status(engine: ReadModels, *, colour: bool = False, sample: float = 0.0) -> str:
    """The head of the log and one row per projection generation (per partition of a partitioned one: ``orders#2``):
    lag, health, parked and blocked events; then a
    line per rebuild under way (its rate and time left watched for ``sample`` seconds)."""
    rows = [
        (lag.projection if lag.partition is None else partition_name(lag.projection, lag.partition), lag.generation,
         engine.built_by(lag.projection, lag.generation, record=False),
         "rebuilding" if lag.rebuilding else "current", lag.health, engine.delivery(lag.projection).value,
         lag.checkpoint, lag.applied, lag.positions_behind, f"{lag.seconds_behind:.3f}", lag.parked, lag.blocked,
         f"{lag.oldest_parked_seconds:.0f}" if lag.parked or lag.blocked else "")
        for lag in engine.lag()
    ]
    headers = ("projection", "generation", "version", "state", "health", "delivery", "checkpoint", "applied",
               "behind", "seconds behind", "parked", "blocked", "oldest parked (s)")
    text = f"head of the log: {engine.storage.head()}\n" + table(headers, rows, colour=colour, style=_status_style)
    rebuilds = rebuild_progress(engine, sample)
    if rebuilds:
        text += "\n\n" + "\n".join(rebuilds)
    if engine.processes.tracks:
        text += "\n\n" + processes(engine, colour=colour)
    if engine.schedules.registered:
        text += "\n\n" + schedules_summary(engine)
    return text


def checked_status(engine: ReadModels, *, colour: bool, sample: float, check: bool) -> Outcome:
    """:func:`status`; with ``check``, then whether every projection meets its readiness rule (``engine.health``),
    incomplete (exit status 1) when one does not: a container probe's or a cron job's test."""
    text = status(engine, colour=colour, sample=sample)
    if not check:
        return Outcome(text)
    report = engine.health.check()
    verdict = "ready" if report.ready else "not ready:\n" + "\n".join(f"  {p}" for p in report.problems)
    return Outcome(f"{text}\n\n{verdict}", complete=report.ready)


def processes(engine: ReadModels, *, colour: bool = False) -> str:
    """One row per process manager: its checkpoint, how far behind, live instances, parked and waiting steps, and
    how long the instance that moved least recently has waited (a stuck one shows there)."""
    rows = [(p.name, p.position, p.behind, p.instances, p.parked, p.blocked,
             "" if p.oldest_instance_seconds is None else f"{p.oldest_instance_seconds:.0f}")
            for p in engine.processes.status()]
    lines = table(("process manager", "checkpoint", "behind", "instances", "parked", "blocked",
                   "oldest instance idle (s)"), rows, colour=colour, style=_status_style)
    letters = [letter for p in engine.processes.status() for letter in p.letters]
    if letters:
        lines += "\n" + table(("process manager", "position", "status", "key", "event type", "attempts",
                               "next retry", "reason"),
                              [(d.projection.removeprefix("process_"), d.position, d.status, d.key or "", d.type_name,
                                d.attempts, _when(d.retry_at) if d.status == PARKED else "", d.reason)
                               for d in letters], colour=colour)
    return lines


def schedules_summary(engine: ReadModels) -> str:
    """How many scheduled commands wait, when the next is due, how many are overdue, how many are parked."""
    found = engine.storage.scheduled()
    now = engine.clock()
    pending = [row for row in found if row.status == PENDING]
    parked = len(found) - len(pending)
    if not found:
        return "scheduled commands: none"
    overdue = sum(1 for row in pending if row.due_at <= now)
    nearest = min((row.due_at for row in pending), default=None)
    due = f", the next due {_when(nearest)}" if nearest is not None else ""
    return (f"scheduled commands: {len(pending)} pending{due}, {overdue} overdue; {parked} parked "
            "(`schedules list` shows them)")


def schedules(engine: ReadModels, *, only_parked: bool = False, colour: bool = False) -> str:
    """The scheduled commands, due first first: when, what, how often it failed and why."""
    rows = [(row.schedule_id, row.command, _when(row.due_at), row.status, row.attempts, row.reason or "")
            for row in engine.storage.scheduled(PARKED if only_parked else None)]
    if not rows:
        return "no scheduled commands"
    styles = {PARKED: RED}
    return table(("schedule id", "command", "due", "status", "attempts", "reason"), rows, colour=colour,
                 style=lambda header, cell: styles.get(cell) if header == "status" else None)


def _when(retry_at: float | None) -> str:
    if retry_at is None:
        return "by an operator"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(retry_at))


def dead_letters(engine: ReadModels, name: str | None, *, colour: bool = False) -> str:
    """The parked and blocked events of projection ``name`` (or of all), with when each is tried next and why."""
    rows = [(d.projection, d.position, d.status, d.key or "", d.type_name, d.attempts,
             _when(d.retry_at) if d.status == PARKED else "", d.reason)
            for d in engine.dead_letters(name)]
    if not rows:
        return "no dead letters"
    styles = {PARKED: RED, BLOCKED: YELLOW}
    return table(("projection", "position", "status", "key", "event type", "attempts", "next retry", "reason"),
                 rows, colour=colour, style=lambda header, cell: styles.get(cell) if header == "status" else None)


def release(engine: ReadModels, action: str, name: str, position: int) -> Outcome:
    """Retry (``action="retry"``) or skip the dead letter at ``position``; incomplete if an event stays parked.

    The engine answers how many events it applied; whether the retried event applied, or one behind it failed,
    is read back from the dead letters, so a retry that fails again never reads as a success.
    """
    before = {letter.position: letter for letter in engine.dead_letters(name)}
    applied = engine.retry(name, position) if action == "retry" else engine.skip(name, position)
    key = before[position].key if position in before else None
    mine = [letter for letter in engine.dead_letters(name)
            if letter.position == position or (key is not None and letter.key == key)]
    waiting = sum(1 for letter in mine if letter.status == BLOCKED)
    behind = f"; {waiting} event(s) of its key wait behind it" if waiting else ""
    for letter in mine:
        if letter.position == position and letter.status == PARKED:
            return Outcome(f"{action}: {name} position {position} failed again and is still parked (attempt "
                           f"{letter.attempts}): {letter.reason}{behind}", complete=False)
    lines = [f"{action}: {name} position {position}; {applied} event(s) applied"]
    lines += [f"{action}: {name} position {letter.position} behind it failed and is parked: {letter.reason}{behind}"
              for letter in mine if letter.status == PARKED]
    return Outcome("\n".join(lines), complete=len(lines) == 1)


def retry_all(engine: ReadModels, name: str | None) -> Outcome:
    """Retry every parked event (of ``name``, or of all); per projection what applied and what stays parked."""
    outcome = engine.retry_all(name)
    lines = []
    for projection, (applied, still) in outcome.items():
        lines.append(f"retry: {projection}: {applied} event(s) applied, {still} still parked")
        lines += [f"  position {letter.position}" + (f" (key {letter.key!r})" if letter.key is not None else "")
                  + f": {letter.reason}"
                  for letter in (engine.dead_letters(projection) if still else []) if letter.status == PARKED]
    return Outcome("\n".join(lines) or "no projections", complete=not any(still for _, still in outcome.values()))


# -- rebuilds and workers --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _progress(engine: ReadModels, label: str, measure: Callable[[], tuple[int, int]],
              status_line: StatusLine | None, *, then: str = "") -> Iterator[None]:
    """Show ``label``'s progress on ``status_line`` (if any: stderr is a terminal) while the block runs.

    Redrawn as the engine commits batches (``ReadModels.on_applied``); on success it leaves a summary line, on
    failure the last state.
    """
    if status_line is None:
        yield
        return
    progress = Progress(label, measure, status=status_line, colour=wants_colour(status_line.stream), then=then)

    def listener(_name: str, events: int) -> None:
        # A short batch ends a replay or a catch-up: draw it whatever the interval, or a rebuild's grace period
        # would be spent showing the state of a batch before the last.
        if events < engine.batch_size:
            progress.draw()
        else:
            progress.tick()

    engine.on_applied.append(listener)
    progress.draw()
    try:
        yield
    except BaseException:
        status_line.end(progress.text())
        raise
    finally:
        engine.on_applied.remove(listener)
    progress.finish(label)


def rebuild(engine: ReadModels, name: str, status_line: StatusLine | None = None, *,
            accept: bool = False) -> Outcome:
    """Replay projection ``name`` into a fresh generation, swap it in and drop the old one; with the projection's
    ``verify_rebuilds``, compared with the live generation first (``accept``: swapped in whatever that finds)."""
    generation = engine.rebuild(name)
    if accept:
        engine.rebuilds.accept(name)
    storage = engine.storage
    start = engine.checkpoint(name, generation)  # a rebuild under way already is joined where it is

    def measure() -> tuple[int, int]:
        at = engine.checkpoint(name, generation)
        return at - start, storage.head() - at

    grace = engine.retire_after
    then = "swapping in" + (f"; the old generation is dropped after {grace:g} s, for queries still reading it"
                            if grace else "")
    try:
        with _progress(engine, f"rebuild {name}", measure, status_line, then=then):
            engine.finish_rebuilds()  # waits retire_after before dropping the old tables: services may read them
    except RebuildRefusedError as refused:
        return Outcome(f"{refused.check.summary()}\n{name}: not swapped in; the live generation stays. Accept it "
                       "with --accept-differences, or stop it with --cancel.", complete=False)
    done = f"{name}: rebuilt as generation {generation}, now current"
    check = engine.rebuilds.checks.get(name)
    if check is not None and check.new_generation == generation:
        done = f"{check.summary()}\n{done}"
    return Outcome(done)


def cancel_rebuild(engine: ReadModels, name: str) -> str:
    """Stop the rebuild of ``name`` under way and drop its generation's tables; the live one is untouched."""
    generation = engine.rebuilds.cancel(name)
    grace = engine.retire_after
    if grace:  # a service may be reading the rebuild's tables to compare them: give it the grace period too
        time.sleep(grace)
    engine.rebuilds.drop_cancelled(name)
    return f"{name}: the rebuild into generation {generation} is cancelled and dropped; the live one stays"


def rebuild_progress(engine: ReadModels, sample: float) -> list[str]:
    """A line per rebuild under way: how far it is, and (watched for ``sample`` seconds) its rate and time left."""
    storage = engine.storage
    under_way = [(name, g) for name in engine.projections if (g := storage.rebuilding(name)) is not None]
    if not under_way:
        return []
    first = {name: engine.checkpoint(name, g) for name, g in under_way}
    started = time.monotonic()
    if sample > 0:
        time.sleep(sample)
    lines = []
    head = storage.head()
    for name, generation in under_way:
        at = engine.checkpoint(name, generation)
        elapsed = time.monotonic() - started
        rate = (at - first[name]) / elapsed if sample > 0 and elapsed > 0 else None
        done = 100 * at / head if head else 100.0
        line = f"rebuild {name}: generation {generation} at {at:,} of {head:,} ({done:.0f}%)"
        if rate is not None:
            line += (f", {rate:,.0f} events/s, about {_duration((head - at) / rate)} left" if rate > 0
                     else f", no progress in {sample:g} s (is a runner running it?)")
        if engine.rebuilds.refused(name):
            line += "; refused by its check (see `rebuild NAME --accept-differences`)"
        elif _held_for_its_check(engine, name, generation, at, head):
            line += (f"; held at {at:,}, where the live generation stands, to be compared with it (a check that "
                     "refused it is in the runner's log: `rebuild NAME --accept-differences` overrides it)")
        lines.append(line)
    return lines


def _held_for_its_check(engine: ReadModels, name: str, generation: int, at: int, head: int) -> bool:
    """Whether a verified upgrade waits where the live generation stands, to be compared (or refused)."""
    if not engine.projections[name].verify_rebuilds or at >= head:
        return False
    live = engine.storage.current_generation(name)
    return (engine.built_by(name, live, record=False) < engine.built_by(name, generation, record=False)
            and engine.checkpoint(name, live) == at)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _positions(engine: ReadModels, names: Sequence[str]) -> tuple[int, int]:
    """The checkpoints of the live generations (and rebuilds) of ``names`` added up, and the positions they
    have still to go to the head of the log."""
    storage = engine.storage
    head = storage.head()
    generations = [(name, storage.current_generation(name)) for name in names]
    generations += [(name, g) for name in names if (g := storage.rebuilding(name)) is not None]
    checkpoints = [engine.checkpoint(name, generation) for name, generation in generations]
    return sum(checkpoints), sum(max(0, head - checkpoint) for checkpoint in checkpoints)


def worker(engine: ReadModels, once: bool, only: list[str] | None = None,
           status_line: StatusLine | None = None) -> str:
    """Run the worker-delivered projections: once to the head of the log, or until SIGTERM or Ctrl-C."""
    if only is not None:
        unknown = sorted(set(only) - set(engine.projections))
        if unknown:
            raise UnknownProjectionError(unknown, engine.projections)
    if once:
        names = [name for name in engine.projections
                 if engine.delivery(name) is Delivery.WORKER and (only is None or name in only)]
        label = "catch up" + (f" {', '.join(only)}" if only else "")
        start, _ = _positions(engine, names)

        def measure() -> tuple[int, int]:
            at, to_go = _positions(engine, names)
            return at - start, to_go

        with _progress(engine, label, measure, status_line):
            applied = engine.catch_up(deliveries=(Delivery.WORKER,), only=only)
        return f"applied {applied} events"
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine.start(Delivery.WORKER, only=only)
    print("worker running; SIGTERM or Ctrl-C stops it", flush=True)
    stop.wait()
    engine.stop()
    return "worker stopped"


# -- describe -----------------------------------------------------------------------------------------------------

_KIND_ORDER = {kind: i for i, kind in enumerate(Kind)}
_PLURALS = {Kind.COMMAND: "commands", Kind.QUERY: "queries", Kind.STREAM: "streams", Kind.EVENT: "events"}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def describe(app: App, *, colour: bool = False) -> str:
    """What the app's mediator runs for each message type (``explain()``), and the engine's projections."""
    sections = []
    if app.mediator is not None:
        explanations = sorted((app.mediator.explain(t) for t in app.mediator.message_types),
                              key=lambda e: (_KIND_ORDER[e.kind], qualname(e.message_type)))
        counts = {kind: sum(1 for e in explanations if e.kind is kind) for kind in Kind}
        summary = ", ".join(f"{count} {_PLURALS[kind] if count != 1 else kind.value}"
                            for kind, count in counts.items() if count)
        sections.append(paint(f"{_count(len(explanations), 'message type')} ({summary or 'none'})", BOLD, colour))
        for explanation in explanations:
            first, _, rest = str(explanation).partition("\n")
            sections.append(paint(first, BOLD, colour) + "\n" + rest)
    if app.engine is not None:
        engine = app.engine
        rows = [(name, projection.version, engine.delivery(name).value,
                 ", ".join(sorted(engine.types.entry(event_type).name for event_type in projection.handlers)))
                for name, projection in engine.projections.items()]
        sections.append(paint(_count(len(rows), "projection"), BOLD, colour) + "\n"
                        + table(("projection", "version", "delivery", "events"), rows, colour=colour))
        steps = [(name, ", ".join(sorted(engine.types.entry(event_type).name for event_type in track.manager.handlers)))
                 for name, track in engine.processes.tracks.items()]
        if steps:
            sections.append(paint(_count(len(steps), "process manager"), BOLD, colour) + "\n"
                            + table(("process manager", "events"), steps, colour=colour))
    return "\n\n".join(sections)


# -- the command line -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _logs_to(sink: StatusLine, colour: bool) -> Iterator[None]:
    """Send the engine's structlog lines, warnings and worse, to ``sink`` while the block runs.

    structlog prints to stdout by default, between the lines of a table. An application that configures structlog
    has chosen where its lines go: then nothing changes.
    """
    if structlog.is_configured():
        yield
        return
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.StackInfoRenderer(), structlog.dev.set_exc_info,
                    structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
                    structlog.dev.ConsoleRenderer(colors=colour)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(typing.cast(TextIO, sink)),  # it calls write() and flush()
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mediator.readmodels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", required=True,
                        help="module:attribute of an engine, a mediator, an object with .engine/.mediator, or a "
                             "function returning one")
    parser.add_argument("--traceback", action="store_true", help="on an error, show the whole traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    rebuild_parser = commands.add_parser("rebuild", help="replay a projection into a fresh generation, then swap")
    rebuild_parser.add_argument("name")
    rebuild_choice = rebuild_parser.add_mutually_exclusive_group()
    rebuild_choice.add_argument("--accept-differences", action="store_true",
                                help="swap a verified rebuild in whatever its comparison with the live one finds")
    rebuild_choice.add_argument("--cancel", action="store_true",
                                help="stop the rebuild under way and drop its generation; the live one stays")
    status_parser = commands.add_parser("status", help="lag and parked events per projection")
    status_parser.add_argument("--sample", type=float, default=1.0, metavar="SECONDS",
                               help="how long to watch a rebuild under way for its rate and time left (0: not)")
    status_parser.add_argument("--check", action="store_true",
                               help="exit 1 unless every projection meets its readiness rule (engine.health)")
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
    worker_parser = commands.add_parser("worker", help="run the worker-delivered projections (may create the "
                                                       "database)")
    worker_parser.add_argument("--once", action="store_true", help="catch up once and exit")
    worker_parser.add_argument("--only", metavar="NAMES", type=lambda v: [n for n in v.split(",") if n],
                               help="comma-separated projections this worker may run (default: all)")
    commands.add_parser("describe", help="each message type's behaviours, handler and lifetimes; the projections")
    process_parser = commands.add_parser("processes", help="list process managers, retry a parked step")
    process_commands = process_parser.add_subparsers(dest="action", required=True)
    process_commands.add_parser("list")
    step_parser = process_commands.add_parser("retry", help="take a parked step now, then those behind it")
    step_parser.add_argument("name")
    step_parser.add_argument("position", type=int)
    schedule_parser = commands.add_parser("schedules", help="list, cancel or retry scheduled commands")
    schedule_commands = schedule_parser.add_subparsers(dest="action", required=True)
    schedule_listing = schedule_commands.add_parser("list")
    schedule_listing.add_argument("--parked", action="store_true", help="only those that failed every try")
    for verb, text in (("cancel", "delete a scheduled command unrun"), ("retry", "make a scheduled command due now")):
        schedule_commands.add_parser(verb, help=text).add_argument("id")
    return parser


def _run(args: argparse.Namespace, app: App, status_line: StatusLine | None) -> Outcome:
    colour = wants_colour(sys.stdout)
    if args.command == "describe":
        return Outcome(describe(app, colour=colour))
    action: str | None = getattr(args, "action", None)
    engine = app.need_engine(f"{args.command} {action}" if action else args.command)
    if args.command == "status":
        return checked_status(engine, colour=colour, sample=args.sample, check=args.check)
    if args.command == "rebuild":
        if args.cancel:
            return Outcome(cancel_rebuild(engine, args.name))
        return rebuild(engine, args.name, status_line, accept=args.accept_differences)
    if args.command == "worker":
        return Outcome(worker(engine, args.once, args.only, status_line))
    if args.command == "processes":
        if action == "list":
            return Outcome(processes(engine, colour=colour))
        stepped = engine.processes.retry(args.name, args.position)
        left = [lt for p in engine.processes.status() if p.name == args.name for lt in p.letters
                if lt.position == args.position]
        return Outcome(f"took {_count(stepped, 'step')}" + ("; the step is parked again" if left else ""),
                       complete=not left)
    if args.command == "schedules":
        if action == "list":
            return Outcome(schedules(engine, only_parked=args.parked, colour=colour))
        if action == "cancel":
            engine.schedules.cancel(args.id)
            return Outcome(f"cancelled {args.id}")
        engine.schedules.retry(args.id)
        return Outcome(f"{args.id} is due now: a runner with the application's mediator dispatches it")
    if action == "list":
        return Outcome(dead_letters(engine, args.name, colour=colour))
    if action == "retry" and args.all:
        return retry_all(engine, args.name)
    assert action in ("retry", "skip")
    return release(engine, action, args.name, args.position)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status (see the module)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "dead-letters" and args.action == "retry":
        if args.all and args.position is not None:
            parser.error("dead-letters retry --all takes a NAME at most, no POSITION")
        if not args.all and (args.name is None or args.position is None):
            parser.error("dead-letters retry needs NAME and POSITION, or --all")
    stderr = sys.stderr
    status_line = StatusLine(stderr)
    running_worker = args.command == "worker" and not args.once
    try:
        with contextlib.ExitStack() as stack:
            if args.command != "worker":  # a worker may create the database: it is how a deployment starts
                stack.enter_context(existing_only())
            app = load(args.app)
            stack.callback(app.close)
            if not running_worker:
                stack.enter_context(_logs_to(status_line, wants_colour(stderr)))
            outcome = _run(args, app, status_line if stderr.isatty() else None)
    except KeyboardInterrupt:
        status_line.end()
        print("error: interrupted", file=stderr)
        return 130
    except (BadAppError, UnknownProjectionError) as exc:  # the command line names what is not there
        if args.traceback:
            raise
        print(f"error: {exc}", file=stderr)
        return 2
    except MediatorError as exc:  # a database missing or down, no such dead letter, the app's import failing
        if args.traceback:
            raise
        print(f"error: {exc}", file=stderr)
        return 1
    try:
        print(outcome.text, flush=True)
    except BrokenPipeError:  # `... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit does not fail too
    return 0 if outcome.complete else 1


if __name__ == "__main__":
    sys.exit(main())
