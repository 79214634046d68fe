"""The dispatch suite's runner works; timings are never asserted here."""

import json
from pathlib import Path

import pytest

from benchmarks import dispatch, peers
from benchmarks.__main__ import main
from benchmarks._harness import TINY

from ..conftest import skip_or_fail


def test_every_implementation_checks_out_and_is_timed() -> None:
    results = dispatch.run(TINY, with_peers=False, progress=lambda line: None)
    combos = {(r.scenario, r.family) for r in results}
    assert combos == {(s, f) for s in peers.SCENARIOS for f in peers.FAMILIES}
    for scenario, family in combos:
        names = [r.implementation for r in results if (r.scenario, r.family) == (scenario, family)]
        assert names == ["direct", "baseline", "this"]
    assert all(r.median_ns > 0 for r in results)
    assert all(r.ratio == 1.0 for r in results if r.implementation == "direct")


def test_a_wrong_result_stops_the_suite_before_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "add", lambda command: 0)
    with pytest.raises(dispatch.CheckFailed, match="computed the wrong result for send"):
        dispatch.run(TINY, with_peers=False, progress=lambda line: None)


@pytest.mark.parametrize("name", peers.PEERS)
def test_each_peer_computes_the_right_result(name: str) -> None:
    module = peers.load(name)
    if module is None:
        skip_or_fail(f"peer {name} is not installed (pip install -e '.[peers]')")
    supported = 0
    for scenario in peers.SCENARIOS:
        for family in peers.FAMILIES:
            impl = dispatch._peer(module, scenario, family == "async")
            if impl is not None:
                supported += 1
                assert impl.check(), f"{name} {scenario} {family}"
    assert supported >= 3


def test_command_line_writes_the_shared_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert main(["dispatch", "--tiny", "--no-peers", "--json", str(out), "--out", str(tmp_path / "report")]) == 0
    rows = json.loads(out.read_text())
    assert {tuple(sorted(row)) for row in rows} == {
        ("family", "implementation", "median_ns", "ratio", "scenario", "suite")
    }
    assert {row["suite"] for row in rows} == {"dispatch"}
    printed = capsys.readouterr().out
    assert "this / floor" in printed
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| send | sync | this |" in report
    assert "- command: `python -m benchmarks dispatch --tiny --no-peers" in report
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == rows


def test_the_counted_scenarios_are_reported_against_the_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import _instructions

    asked: list[tuple[str, str, str, int]] = []

    def per_dispatch(scenario: str, family: str, implementation: str, n: int) -> float:
        asked.append((scenario, family, implementation, n))
        return {"baseline": 8000.0, "this": 10000.0}[implementation] + (500 if family == "async" else 0)

    monkeypatch.setattr(_instructions, "per_dispatch", per_dispatch)
    counted = dispatch.counted(lambda line: None)
    assert sorted(asked) == sorted((s, f, i, dispatch.DISPATCHES_COUNTED) for s in dispatch.COUNTED
                                   for f in peers.FAMILIES for i in ("baseline", "this"))
    by = {(r.family, r.implementation): r for r in counted}
    assert by["sync instructions", "this"].ratio == pytest.approx(1.25)
    assert by["async instructions", "this"].ratio == pytest.approx(10500 / 8500)
    assert by["sync instructions", "baseline"].ratio == 1.0
    timed = dispatch.run(TINY, with_peers=False, progress=lambda line: None)  # TINY counts nothing
    assert not [r for r in timed if r.family.endswith("instructions")]
    table = dispatch.summary(timed + counted)
    assert "| scoped | sync (callgrind) | 10,000 | 8,000 | 1.25x | <= 1.5x |" in table
    assert "| scoped | async (callgrind) | 10,500 | 8,500 | 1.24x | <= 1.5x |" in table
    assert table.count("| scoped | sync |") == 1  # the timed row, once: the counts are a table of their own
