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
from .scenario import DASHBOARD_RATE

Chart = Callable[[Sequence[Result], Path], bool]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _bars(path: Path, labels: Sequence[str], series: Mapping[str, Sequence[float]], *, ylabel: str, title: str,
          log: bool, size: tuple[float, float] = (9, 4.5)) -> bool:
    """Draw one group of bars per label, one bar per series, into ``path``; ``False`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(figsize=size)
    width = 0.8 / len(series)
    middle = (len(series) - 1) / 2
    for offset, (name, values) in enumerate(series.items()):
        axes.bar([i + (offset - middle) * width for i in range(len(labels))], values, width, label=name)
    if log:
        axes.set_yscale("log")
    rotate = len(labels) > 6
    axes.set_xticks(range(len(labels)), labels, fontsize=7 if rotate else 9, rotation=25 if rotate else 0,
                    ha="right" if rotate else "center")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def dispatch_chart(results: Sequence[Result], path: Path) -> bool:
    """Time per dispatch as a ratio to the direct call: this, the hand-written baseline, the fastest peer."""
    rows = [r for r in results if r.suite == "dispatch" and not r.family.endswith(" instructions")]
    if not rows:
        return False
    groups = list(dict.fromkeys((r.scenario, r.family) for r in rows))
    series: dict[str, list[float]] = {"this": [], "baseline": [], "fastest peer": []}
    for key in groups:
        cell = {r.implementation: r for r in rows if (r.scenario, r.family) == key}
        peers = [r.ratio for name, r in cell.items() if name not in ("direct", "baseline", "this")]
        series["this"].append(cell["this"].ratio)
        series["baseline"].append(cell["baseline"].ratio)
        series["fastest peer"].append(min(peers) if peers else math.nan)
    labels = [f"{scenario.replace('_', ' ')}\n({family})" for scenario, family in groups]
    return _bars(path, labels, series, ylabel="time per dispatch / direct call (log)", log=True, size=(11, 4.8),
                 title="Dispatch overhead against the direct call (1 = the direct call), this run")


def _orders(family: str) -> int:
    digits = "".join(c for c in family if c.isdigit())
    return int(digits) if digits else -1


def reads_chart(results: Sequence[Result], path: Path) -> bool:
    """p50 latency per read, CRUD beside CQRS, at the run's largest size, on a log scale."""
    rows = [r for r in results if r.suite == "scenario" and r.scenario.endswith("_p50")
            and r.implementation in ("crud", "cqrs") and not r.scenario.startswith("projection_lag")]
    if not rows:
        return False
    family = max((r.family for r in rows), key=_orders)
    reads = list(dict.fromkeys(r.scenario.removesuffix("_p50") for r in rows if r.family == family))
    cell = {(r.scenario, r.implementation): r.median_ns / 1e3 for r in rows if r.family == family}
    series = {kind.upper(): [cell.get((f"{read}_p50", kind), math.nan) for read in reads] for kind in ("crud", "cqrs")}
    return _bars(path, [read.replace("_", " ") for read in reads], series, log=True,
                 ylabel="p50 latency, microseconds (log)", title=f"Reads at {family}: CRUD against CQRS, this run")


def throughput_chart(results: Sequence[Result], path: Path) -> bool:
    """Checkout throughput alone and beside each dashboard reader the run had, CRUD beside CQRS."""
    cell = {(r.scenario, r.family, r.implementation): r for r in results if r.suite == "scenario"}
    labels = {("checkout", "alone"): "alone",
              ("checkout_loaded", "under dashboard load"): f"beside {DASHBOARD_RATE} dashboard\nreads a second",
              ("checkout_loaded", "under a flat-out dashboard reader"): "beside a flat-out\ndashboard reader"}
    phases = [phase for phase in labels if all((*phase, kind) in cell for kind in ("crud", "cqrs"))]
    if len(phases) < 2 or phases[0] != ("checkout", "alone"):
        return False
    series = {kind.upper(): [1e9 / cell[scenario, family, kind].median_ns for scenario, family in phases]
              for kind in ("crud", "cqrs")}
    return _bars(path, [labels[phase] for phase in phases], series, log=False, size=(8, 4.5),
                 ylabel="PlaceOrder per second", title="Checkout throughput, and what dashboard readers cost it")


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
