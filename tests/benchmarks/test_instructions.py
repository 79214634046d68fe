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


@pytest.mark.parametrize("family", ["sync", "async"])
@pytest.mark.parametrize("implementation", ["this", "baseline"])
def test_each_dispatch_child_runs_with_and_without_its_work(family: str, implementation: str) -> None:
    for work in (True, False):
        _instructions._child(f"dispatch:scoped:{family}:{implementation}", 20, work)


def test_a_dispatch_count_is_this_many_dispatches_less_the_same_process_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    commands: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        assert kwargs["env"]["PYTHONHASHSEED"] == "0"  # type: ignore[index]
        refs = 5_000_000 if command[-1] == "work" else 1_000_000
        return subprocess.CompletedProcess([], 0, "", f"==1== I   refs:      {refs:,}\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert _instructions.per_dispatch("scoped", "async", "this", 400) == 10_000
    assert [c[-3:] for c in commands] == [["dispatch:scoped:async:this", "400", "work"],
                                          ["dispatch:scoped:async:this", "400", "idle"]]
