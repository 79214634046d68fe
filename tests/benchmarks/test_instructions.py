"""The instruction-count children do their work (run here directly, not under valgrind: that takes minutes)."""

import pytest

from benchmarks import _instructions


@pytest.mark.parametrize("mode", _instructions.MODES)
@pytest.mark.parametrize("work", [True, False])
def test_each_child_runs_with_and_without_its_work(mode: str, work: bool) -> None:
    _instructions._child(mode, 20, work)


def test_a_count_is_read_from_valgrinds_report(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def fake_run(*_args: object, **_kwargs: object) -> subprocess.CompletedProcess[str]:
        report = "==1== Events    : Ir\n==1== Collected : 1234\n==1==\n==1== I   refs:      1,234,567\n"
        return subprocess.CompletedProcess([], 0, "", report)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert _instructions._count("hand", 10, True) == 1_234_567


@pytest.mark.parametrize("mode", ["crud", "write", "apply:dashboard", "apply:all"])
def test_each_checkout_breakdown_child_runs_with_and_without_its_work(mode: str) -> None:
    from benchmarks import _checkout_instructions

    for work in (True, False):
        _checkout_instructions._child(mode, 3, work)


def test_the_checkout_breakdown_counts_every_projection_of_the_shop() -> None:
    from adapters.shop_app import build_shop
    from benchmarks import _checkout_instructions

    shop = build_shop()
    try:
        assert set(_checkout_instructions.PROJECTIONS) == set(shop.engine.projections)
    finally:
        shop.close()
