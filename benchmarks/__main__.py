"""Command line: ``python -m benchmarks [SUITE ...] [--full | --tiny] [--json PATH] [--out DIR] [--no-peers]``.

With no suite named, the embedded suites run (dispatch, sync, scenario, workflows, live, rebuilds;
`postgres`, `partitions` and `brokers`
run only when named, against MEDIATOR_BENCH_POSTGRES or the local server), in its quick
form unless ``--full``. The output folder gets ``results.json``, ``report.md``
and PNG charts; the summary tables are printed too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import _report
from ._harness import FULL, QUICK, TINY, Result, machine, write_json
from ._progress import Progress

SUITES = ("dispatch", "sync", "scenario", "workflows", "live", "rebuilds")
"""The default run: everything embedded, on SQLite."""
OPTIONAL = ("postgres", "partitions", "brokers")
"""Suites run only when named: they need a server."""


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", choices=[*SUITES, *OPTIONAL, []], metavar="SUITE",
                        help=f"suites to run (default: {', '.join(SUITES)}); also: {', '.join(OPTIONAL)}")
    parser.add_argument("--suite", action="append", choices=[*SUITES, *OPTIONAL], default=[], dest="also",
                        help="a suite to run; may be repeated (the same as naming it)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick form (the default): a few minutes for all")
    size.add_argument("--full", action="store_true", help="the full form: longer runs, bigger data")
    size.add_argument("--tiny", action="store_true", help="smoke-test size: proves the runner, measures nothing")
    parser.add_argument("--json", metavar="PATH", help="also write every result to PATH as a JSON list")
    parser.add_argument("--out", metavar="DIR", default="bench-out",
                        help="folder for results.json, report.md and the charts (default: bench-out)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries even if installed")
    return parser.parse_args(argv)


def suite(name: str) -> Any:
    """The suite module (imported when it runs: the scenario suite pulls in the whole shop)."""
    return importlib.import_module(f"{__package__}.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse(arguments)
    settings = TINY if args.tiny else FULL if args.full else QUICK
    info = {**machine(), "cores": str(os.cpu_count() or "?")}
    print(f"python {info['python']} on {info['system']} ({info['machine']}, {info['cores']} cores)", flush=True)
    names = list(dict.fromkeys([*args.suites, *args.also])) or list(SUITES)
    progress = Progress()
    results: list[Result] = []
    summaries: dict[str, str] = {}
    started = time.perf_counter()
    for name in names:
        module = suite(name)
        suite_results = module.run(settings, with_peers=not args.no_peers, progress=progress)
        progress.finish()
        results += suite_results
        summaries[name] = module.summary(suite_results)
        print(f"\n## {name}\n\n{summaries[name]}\n", flush=True)
    if args.json:
        write_json(Path(args.json), results)
        print(f"wrote {len(results)} results to {args.json}")
    command = "python -m benchmarks" + "".join(f" {a}" for a in arguments)
    written = _report.write(Path(args.out), results, summaries, info, command)
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
