"""Command line: ``python -m benchmarks [SUITE ...] [--quick] [--json PATH] [--no-peers]``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import dispatch, sync
from ._harness import FULL, QUICK, TINY, Result, machine, table, write_json

SUITES = {"dispatch": dispatch, "sync": sync}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suites", nargs="*", choices=[*SUITES, []], metavar="SUITE",
                        help=f"suites to run (default: all): {', '.join(SUITES)}")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short runs: well under a minute per suite")
    size.add_argument("--tiny", action="store_true", help="smoke-test size: proves the runner, measures nothing")
    parser.add_argument("--json", metavar="PATH", help="write every result to PATH as a JSON list")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer libraries even if installed")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    settings = TINY if args.tiny else QUICK if args.quick else FULL
    info = machine()
    print(f"python {info['python']} on {info['system']} ({info['machine']}, {info['processor']})", flush=True)
    results: list[Result] = []
    started = time.perf_counter()
    for name in args.suites or list(SUITES):
        suite = SUITES[name]
        suite_results = suite.run(settings, with_peers=not args.no_peers,
                                  progress=lambda line: print(line, file=sys.stderr, flush=True))
        results += suite_results
        print(f"\n## {name}\n\n{table(suite_results)}\n\n{suite.summary(suite_results)}\n", flush=True)
    if args.json:
        from pathlib import Path

        write_json(Path(args.json), results)
        print(f"wrote {len(results)} results to {args.json}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
