"""Checked rebuilds: compared with the live generation before the swap (a repair reports what was wrong; a new
version that differs where it does not say it changes is refused), and cancelled leaving the live one untouched."""

from __future__ import annotations

import pytest

from mediator.readmodels import (
    RebuildCancelError,
    RebuildNotFoundError,
    RebuildRefusedError,
    Storage,
    UnknownProjectionError,
)

from .bank import Balance, Balances, BalancesInCents, BrokenCents, CheckedBalances, CheckedCents, Deposit, make_bank


def deposits(bank: object, *pairs: tuple[str, int]) -> None:
    for account, amount in pairs:
        bank.mediator.send(Deposit(account=account, amount=amount))  # type: ignore[attr-defined]


def drift(storage: Storage, account: str, amount: int) -> None:
    """Write a wrong balance straight into the live generation: a bug, an operator's hand, a restore gone wrong."""
    generation = storage.current_generation("balances")
    with storage.session("balances", generation) as session:
        session.put(Balances.balance, Balance(account, amount))


def test_a_repair_is_swapped_in_with_what_was_wrong_as_its_report(storage: Storage) -> None:
    bank = make_bank(storage, projection_class=CheckedBalances, retire_after=0)
    deposits(bank, ("a", 5), ("b", 7), ("c", 1))
    bank.engine.catch_up()
    drift(storage, "b", 70)
    drift(storage, "z", 3)
    assert bank.balances() == {"a": 5, "b": 70, "c": 1, "z": 3}

    bank.engine.rebuild("balances")
    bank.engine.finish_rebuilds()
    assert bank.balances() == {"a": 5, "b": 7, "c": 1}  # repaired
    check = bank.engine.rebuilds.checks["balances"]
    assert not check.upgrade
    assert not check.unexpected
    assert not check.same
    (table,) = check.tables
    assert (table.table, table.live_rows, table.new_rows, table.differing) == ("balance", 4, 3, 2)
    assert table.live_digest != table.new_digest
    assert table.examples == ("'b': amount: 70 -> 7", "'z': only in the live generation")
    assert "2 differing" in check.summary()


def test_a_rebuild_that_finds_nothing_wrong_says_so(storage: Storage) -> None:
    bank = make_bank(storage, projection_class=CheckedBalances, retire_after=0)
    deposits(bank, ("a", 5), ("b", 7))
    bank.engine.catch_up()
    bank.engine.rebuild("balances")
    bank.engine.finish_rebuilds()
    check = bank.engine.rebuilds.checks["balances"]
    assert check.same
    assert check.tables[0].live_digest == check.tables[0].new_digest


def test_a_new_version_that_changes_what_it_declares_is_swapped_in(storage: Storage) -> None:
    old = make_bank(storage, retire_after=0)
    deposits(old, ("a", 5), ("b", 7))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=CheckedCents, retire_after=0)
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert new.balances() == {"a": 500, "b": 700}
    check = new.engine.rebuilds.checks["balances"]
    assert check.upgrade
    assert not check.unexpected
    assert check.tables[0].differing == 2
    assert check.tables[0].unexpected == 0


def test_a_broken_new_version_is_caught_and_not_swapped_in_until_accepted(storage: Storage) -> None:
    old = make_bank(storage, retire_after=0)
    deposits(old, ("a", 5), ("b", 7))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BrokenCents, retire_after=0)
    deposits(new, ("c", 1))  # commands go on meanwhile
    new.engine.catch_up()
    with pytest.raises(RebuildRefusedError, match="'b': only in the live generation") as refused:
        new.engine.finish_rebuilds()
    assert refused.value.check.unexpected
    assert storage.current_generation("balances") == 1  # the live generation stays
    assert old.balances() == {"a": 5, "b": 7}
    rebuilt = storage.rebuilding("balances")
    assert rebuilt is not None
    assert storage.checkpoint("balances", rebuilt) == 2  # held where the live one stands: compared there
    assert new.engine.catch_up() == 0  # and it stays held, however often the runner looks
    assert new.engine.rebuilds.refused("balances")

    new.engine.rebuilds.accept("balances")  # an operator's decision
    new.engine.finish_rebuilds()
    assert storage.current_generation("balances") == rebuilt
    assert new.balances() == {"a": 500, "c": 100}


def test_cancelling_a_rebuild_leaves_the_live_generation_untouched(storage: Storage) -> None:
    bank = make_bank(storage, retire_after=0, batch_size=1)
    deposits(bank, ("a", 5), ("b", 7))
    bank.engine.catch_up()
    live = storage.current_generation("balances")
    generation = bank.engine.rebuild("balances")
    bank.engine.applier.run_batch(bank.engine._tracks["balances"], generation, True)  # part of the replay
    assert storage.checkpoint("balances", generation) == 1
    assert bank.engine.rebuilds.cancel("balances") == generation
    bank.engine.rebuilds.drop_cancelled("balances")
    assert (storage.current_generation("balances"), storage.rebuilding("balances")) == (live, None)
    deposits(bank, ("a", 1))
    bank.engine.catch_up()
    assert bank.balances() == {"a": 6, "b": 7}
    assert storage.current_generation("balances") == live
    with pytest.raises(RebuildNotFoundError):
        bank.engine.rebuilds.cancel("balances")
    again = bank.engine.rebuild("balances")  # a rebuild may start again afterwards
    assert again != generation
    bank.engine.finish_rebuilds()
    assert bank.balances() == {"a": 6, "b": 7}


def test_an_upgrade_cannot_be_cancelled_by_the_code_that_needs_it(storage: Storage) -> None:
    old = make_bank(storage, retire_after=0)
    deposits(old, ("a", 5))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    new.engine.rebuild("balances")  # claimed for version 2, nothing replayed yet
    with pytest.raises(RebuildCancelError, match="replaces version 1"):
        new.engine.rebuilds.cancel("balances")
    assert storage.rebuilding("balances") is not None
    with pytest.raises(UnknownProjectionError):
        new.engine.rebuilds.check("nothing")


def test_a_verified_upgrade_let_past_the_live_generation_goes_on_in_another_process(storage: Storage) -> None:
    import threading

    old = make_bank(storage, retire_after=0)
    deposits(old, ("a", 5), ("b", 7))
    old.engine.catch_up()
    deposits(old, ("c", 1), ("d", 2))  # committed; the old generation, which nobody runs now, stays at 2
    first = make_bank(storage, projection_class=CheckedCents, retire_after=0, batch_size=1)
    track = first.engine._tracks["balances"]
    first.engine.versions.to_run(track)  # claims the rebuild for version 2
    generation = storage.rebuilding("balances")
    assert generation is not None
    while first.engine.applier.run_batch(track, generation, True):
        pass
    assert storage.checkpoint("balances", generation) == 2  # held where the live one stands
    first.engine.rebuilds.maybe_swap(track)  # compared there: fit
    assert first.engine.applier.run_batch(track, generation, True) == 1  # let past it; then this process dies
    assert storage.checkpoint("balances", generation) == 3

    second = make_bank(storage, projection_class=CheckedCents, retire_after=0)  # knows nothing of that verdict
    def finish() -> None:
        second.engine.catch_up()
        second.engine.finish_rebuilds()

    finishing = threading.Thread(target=finish, daemon=True)
    finishing.start()
    finishing.join(30)
    assert not finishing.is_alive(), "the rebuild stayed held behind a position it had passed"
    assert storage.current_generation("balances") == generation
    assert second.balances() == {"a": 500, "b": 700, "c": 100, "d": 200}
