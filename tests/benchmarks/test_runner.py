"""The runner's progress bars and its output folder; timings are never asserted here."""

import io
import struct
from pathlib import Path

import pytest

from benchmarks import _report
from benchmarks._harness import Result, percentile
from benchmarks._progress import Progress, phase, tick

from ..conftest import skip_or_fail


def test_a_phase_prints_one_line_with_its_bar_when_it_ends_off_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out, live=False)
    phase(progress, "dispatch: send (sync)", 4)
    for _ in range(4):
        tick(progress)
    assert out.getvalue() == ""  # nothing redrawn into a log
    progress("sync: lag")
    progress.finish()
    first, second = out.getvalue().splitlines()
    assert first.startswith("[" + "#" * 24 + "]   4/4   dispatch: send (sync)")
    assert first.endswith(" s")
    assert second.startswith("[" + "#" * 24 + "]")
    assert "sync: lag" in second


def test_on_a_terminal_the_bar_redraws_in_place() -> None:
    out = io.StringIO()
    progress = Progress(out, live=True)
    progress("scenario: load", 2)
    tick(progress)
    assert out.getvalue().endswith("\r[" + "#" * 12 + "." * 12 + "]   1/2   scenario: load")


def test_plain_callables_get_the_phase_line_only() -> None:
    lines: list[str] = []
    phase(lines.append, "sync: rebuild", 10)
    tick(lines.append)
    assert lines == ["sync: rebuild"]


def results() -> list[Result]:
    rows = []
    for family in ("sync", "async"):
        rows += [Result("dispatch", "send", family, "direct", 50, 1.0),
                 Result("dispatch", "send", family, "baseline", 100, 2.0),
                 Result("dispatch", "send", family, "this", 120, 2.4),
                 Result("dispatch", "send", family, "lato", 1200, 24.0)]
    for family in ("50,000 orders", "200,000 orders"):
        for read, crud, cqrs in (("dashboard", 5e8, 2e4), ("order_details", 4e4, 3e4)):
            rows += [Result("scenario", f"{read}_p50", family, "crud", crud, 1.0),
                     Result("scenario", f"{read}_p50", family, "cqrs", cqrs, cqrs / crud)]
    rows.append(Result("scenario", "projection_lag_p50", "alone", "cqrs", 2e6, 1.0))
    for scenario, family, crud, cqrs in (("checkout", "alone", 1e5, 2e5),
                                         ("checkout_loaded", "under dashboard load", 4e5, 2.1e5),
                                         ("checkout_loaded", "under a flat-out dashboard reader", 4e5, 2.5e5)):
        rows += [Result("scenario", scenario, family, "crud", crud, 1.0),
                 Result("scenario", scenario, family, "cqrs", cqrs, cqrs / crud)]
    return rows


def test_the_output_folder_has_json_a_report_and_charts(tmp_path: Path) -> None:
    info = {"python": "3.11.7", "implementation": "CPython", "system": "Linux 6", "machine": "x86_64", "cores": "2"}
    written = _report.write(tmp_path, results(), {"dispatch": "| dispatch summary |", "scenario": "| s |"}, info,
                            "python -m benchmarks --tiny")
    names = {p.name for p in written}
    assert {"results.json", "report.md"} <= names
    report = (tmp_path / "report.md").read_text()
    assert "- command: `python -m benchmarks --tiny`" in report
    assert "## dispatch\n\n| dispatch summary |" in report
    assert "| send | async | lato | 1,200 | 24.00x |" in report
    charts = {"dispatch.png", "reads.png", "throughput.png"}
    if not charts <= names:
        skip_or_fail("matplotlib is not installed (pip install -e '.[bench]'), so no chart was drawn")
    for chart in charts:
        png = (tmp_path / chart).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 500
        assert height > 300
        assert f"![{chart.removesuffix('.png')}]({chart})" in report


def test_without_scenario_results_no_scenario_chart_is_drawn(tmp_path: Path) -> None:
    if _report._pyplot() is None:
        skip_or_fail("matplotlib is not installed (pip install -e '.[bench]')")
    dispatch_only = [r for r in results() if r.suite == "dispatch"]
    assert not _report.reads_chart(dispatch_only, tmp_path / "reads.png")
    assert not (tmp_path / "reads.png").exists()


def test_a_percentile_is_asked_as_a_fraction_and_answers_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1)) == (51.0, 99.0, 100.0)
    for wrong in (50, 99, -0.1):  # a percent where a fraction belongs once reported every p50 as the maximum
        with pytest.raises(ValueError, match="between 0 and 1"):
            percentile(values, wrong)
