"""The run's output folder: results as JSON, a markdown report, and PNG charts.

Charts need matplotlib (the ``bench`` extra); without it the report says so
and the JSON and markdown are written all the same. Every chart plots ratios
or side-by-side figures from the one run, never a bare time against another
run's.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._harness import Result, table, write_json

Chart = Callable[[Sequence[Result], Path], bool]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def dispatch_chart(results: Sequence[Result], path: Path) -> bool:
    """Bars of time per dispatch as a ratio to the direct call: this, the hand-written baseline, the fastest peer."""
    rows = [r for r in results if r.suite == "dispatch"]
    plt = _pyplot()
    if not rows or plt is None:
        return False
    groups = list(dict.fromkeys((r.scenario, r.family) for r in rows))
    series: dict[str, list[float]] = {"this": [], "baseline": [], "fastest peer": []}
    for key in groups:
        cell = {r.implementation: r for r in rows if (r.scenario, r.family) == key}
        peers = [r.ratio for name, r in cell.items() if name not in ("direct", "baseline", "this")]
        series["this"].append(cell["this"].ratio)
        series["baseline"].append(cell["baseline"].ratio)
        series["fastest peer"].append(min(peers) if peers else math.nan)
    figure, axes = plt.subplots(figsize=(11, 4.8))
    width = 0.27
    for offset, (name, values) in enumerate(series.items()):
        axes.bar([i + (offset - 1) * width for i in range(len(groups))], values, width, label=name)
    axes.set_yscale("log")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(groups)), [f"{s.replace('_', ' ')}\n({f})" for s, f in groups], fontsize=7,
                    rotation=25, ha="right")
    axes.set_ylabel("time per dispatch / direct call (log)")
    axes.set_title("Dispatch overhead against the direct call, this run")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def reads_chart(results: Sequence[Result], path: Path) -> bool:
    """Bars of p50 latency per read, CRUD beside CQRS, on a log scale."""
    rows = [r for r in results if r.suite == "scenario" and r.scenario.startswith("read_") and
            r.scenario.endswith("_p50")]
    plt = _pyplot()
    if not rows or plt is None:
        return False
    reads = list(dict.fromkeys(r.scenario.removeprefix("read_").removesuffix("_p50") for r in rows))
    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.38
    for offset, implementation in enumerate(("crud", "cqrs")):
        values = [next((r.median_ns / 1e3 for r in rows if r.implementation == implementation
                        and r.scenario == f"read_{read}_p50"), math.nan) for read in reads]
        axes.bar([i + (offset - 0.5) * width for i in range(len(reads))], values, width, label=implementation.upper())
    axes.set_yscale("log")
    axes.set_xticks(range(len(reads)), [read.replace("_", " ") for read in reads])
    axes.set_ylabel("p50 latency, microseconds (log)")
    axes.set_title("Reads: CRUD joins and aggregates against CQRS read models, same data, same run")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def throughput_chart(results: Sequence[Result], path: Path) -> bool:
    """Checkout throughput alone and under dashboard load, CRUD beside CQRS."""
    rows = {(r.scenario, r.implementation): r for r in results if r.suite == "scenario"}
    wanted = [(scenario, impl) for scenario in ("checkout_alone", "checkout_loaded") for impl in ("crud", "cqrs")]
    plt = _pyplot()
    if plt is None or any(key not in rows for key in wanted):
        return False
    figure, axes = plt.subplots(figsize=(7, 4.5))
    width = 0.38
    for offset, impl in enumerate(("crud", "cqrs")):
        values = [1e9 / rows[(scenario, impl)].median_ns for scenario in ("checkout_alone", "checkout_loaded")]
        axes.bar([i + (offset - 0.5) * width for i in range(2)], values, width, label=impl.upper())
    axes.set_xticks(range(2), ["alone", "with dashboard readers"])
    axes.set_ylabel("PlaceOrder per second")
    axes.set_title("Checkout throughput, and what dashboard readers cost it")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


CHARTS: dict[str, Chart] = {
    "dispatch.png": dispatch_chart,
    "reads.png": reads_chart,
    "throughput.png": throughput_chart,
}


def write(out: Path, results: Sequence[Result], summaries: Mapping[str, str], info: Mapping[str, str],
          command: str) -> list[Path]:
    """Write ``results.json``, ``report.md`` and the charts into ``out``; return the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    write_json(written[0], results)
    charts = [name for name, draw in CHARTS.items() if draw(results, out / name)]
    written += [out / name for name in charts]
    machine = f"Python {info['python']} ({info['implementation']}) on {info['system']}, {info['machine']}"
    lines = [
        "# Benchmark report",
        "",
        f"- command: `{command}`",
        f"- machine: {machine}, {info.get('cores', '?')} cores",
        f"- finished: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "- every ratio compares two figures measured in this run, never across runs",
        "",
    ]
    if not charts:
        lines += ["Charts: none drawn (install the `bench` extra for matplotlib, or no suite produced them).", ""]
    for name in charts:
        lines += [f"![{name.removesuffix('.png')}]({name})", ""]
    for suite, text in summaries.items():
        rows = [r for r in results if r.suite == suite]
        lines += [f"## {suite}", "", text, "", "<details><summary>every result</summary>", "", table(rows), "",
                  "</details>", ""]
    (out / "report.md").write_text("\n".join(lines))
    written.append(out / "report.md")
    return written
