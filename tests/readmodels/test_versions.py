"""Projection versions: a read model built by an older version of its projection is rebuilt by the new code,
never fed or read by code of another version, and swapped in once it has caught up."""

import pytest

from mediator.readmodels import Delivery, ReadModelUnavailableError, Storage, consistent
from mediator.readmodels._versions import record_version

from .bank import Balances, BalancesInCents, Deposit, GetBalance, make_bank


def test_a_new_read_model_is_recorded_as_built_by_its_projections_version(storage: Storage) -> None:
    bank = make_bank(storage, projection_class=BalancesInCents)
    bank.mediator.send(Deposit(account="a", amount=5))
    bank.engine.catch_up()
    assert bank.balances() == {"a": 500}
    assert (storage.current_generation("balances"), storage.rebuilding("balances")) == (1, None)  # no rebuild
    assert record_version(storage, "balances", 1, 99) == 2


def test_a_read_model_built_by_an_older_version_is_rebuilt_and_served_once_swapped_in(storage: Storage) -> None:
    old = make_bank(storage, retire_after=0)
    for account, amount in (("a", 5), ("b", 7)):
        old.mediator.send(Deposit(account=account, amount=amount))
    old.engine.catch_up()
    assert old.balances() == {"a": 5, "b": 7}

    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)  # the next release's code
    with pytest.raises(ReadModelUnavailableError, match=r"built by version 1 .* this code has version 2"):
        new.mediator.ask(GetBalance(account="a"))  # never the old version's rows read as if they were cents
    new.mediator.send(Deposit(account="c", amount=3))  # commands go on meanwhile
    with consistent(3), pytest.raises(ReadModelUnavailableError):  # at once, not at the consistency timeout
        new.mediator.ask(GetBalance(account="c"))

    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert storage.current_generation("balances") == 2
    assert new.balances() == {"a": 500, "b": 700, "c": 300}
    with consistent(3):
        assert new.mediator.ask(GetBalance(account="c")) == 300
    assert new.projection.applied == [500, 700, 300]  # the new code never wrote the old generation
    # The old generation had delivered a and b; the deposit it never saw gets its side effects from the replay.
    assert new.projection.side_effects == [("c", False)]
    assert storage.all_dead_letters() == []
    assert record_version(storage, "balances", 2, 1) == 2


def test_code_older_than_the_read_model_stands_down(storage: Storage) -> None:
    old = make_bank(storage)
    old.mediator.send(Deposit(account="a", amount=5))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BalancesInCents)
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert new.balances() == {"a": 500}

    old.mediator.send(Deposit(account="a", amount=1))  # an old process's commands still work
    with pytest.raises(ReadModelUnavailableError, match=r"built by version 2 .* newer than this code's"):
        old.mediator.ask(GetBalance(account="a"))
    assert old.engine.catch_up() == 0  # it applies nothing of a newer version's read model
    assert storage.rebuilding("balances") is None  # and does not rebuild it back
    new.engine.catch_up()
    assert new.balances() == {"a": 600}
    assert old.projection.applied == [5]  # only while version 1 was the read model's


def test_a_rebuild_begun_for_an_older_version_is_replaced_by_one_for_this_version(storage: Storage) -> None:
    old = make_bank(storage, retire_after=0)
    old.mediator.send(Deposit(account="a", amount=5))
    old.engine.catch_up()
    begun = old.engine.rebuild("balances")  # the old release started a rebuild and was shut down
    assert begun == 2

    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert storage.current_generation("balances") == 3  # not the abandoned generation 2
    assert (storage.rebuilding("balances"), new.balances()) == (None, {"a": 500})
    assert new.projection.applied == [500]
    assert old.projection.applied == [5]  # the abandoned replay was never run by either
    old.mediator.send(Deposit(account="a", amount=1))
    assert old.engine.catch_up() == 0  # and now the old code stands down from the newer read model
    with pytest.raises(ReadModelUnavailableError, match="newer than this code's"):
        old.engine.rebuild("balances")  # nor can it rebuild it back to its own version
    assert storage.rebuilding("balances") is None
    new.engine.catch_up()
    assert new.balances() == {"a": 600}


def test_older_code_stops_feeding_its_read_model_once_a_newer_version_rebuilds_it(storage: Storage) -> None:
    old = make_bank(storage, retire_after=0)
    old.mediator.send(Deposit(account="a", amount=5))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    new.engine.rebuild("balances")  # claimed, not yet run
    old.mediator.send(Deposit(account="b", amount=7))
    assert old.engine.catch_up() == 0  # whatever it applied now, the new code would apply again as live
    assert old.balances() == {"a": 5}  # its queries still answer from its own version's read model
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert new.balances() == {"a": 500, "b": 700}
    # Each deposit's side effect happened once: a's by the old code, b's by the new code's replay.
    assert (old.projection.side_effects, new.projection.side_effects) == ([("a", False)], [("b", False)])
    with pytest.raises(ReadModelUnavailableError):
        old.balances()


def test_a_runner_standing_down_gives_the_projections_lease_to_the_newer_code(pg_schema: str) -> None:
    from mediator.readmodels.postgres import PostgresStorage
    from tests import postgres

    old_storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    new_storage = PostgresStorage(postgres.DSN, schema=pg_schema)
    try:
        old = make_bank(old_storage, retire_after=0)
        old.mediator.send(Deposit(account="a", amount=5))
        old.engine.catch_up(leased=True)
        assert old_storage.holds("balances")
        new = make_bank(new_storage, projection_class=BalancesInCents, retire_after=0)
        assert new.engine.catch_up(leased=True) == 0  # the old runner has the lease: the rebuild waits
        assert new_storage.rebuilding("balances") is not None
        old.engine.catch_up(leased=True)
        assert not old_storage.holds("balances")  # it stood down and let go
        new.engine.catch_up(leased=True)
        assert new.balances() == {"a": 500}
        assert new_storage.holds("balances")
    finally:
        old_storage.close()
        new_storage.close()


def test_a_rebuild_asked_for_by_hand_is_built_by_this_codes_version(storage: Storage) -> None:
    bank = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    bank.mediator.send(Deposit(account="a", amount=5))
    bank.engine.catch_up()
    generation = bank.engine.rebuild("balances")
    bank.engine.finish_rebuilds()
    assert storage.current_generation("balances") == generation
    assert record_version(storage, "balances", generation, 1) == 2
    assert bank.balances() == {"a": 500}


@pytest.mark.parametrize("projection_class", [Balances, BalancesInCents])
def test_an_inline_read_model_is_upgraded_under_the_writers_lock(storage: Storage,
                                                                 projection_class: type[Balances]) -> None:
    if not storage.inline_for("balances"):  # two SQLite files: nothing inline to upgrade
        with pytest.raises(ValueError, match="cannot be inline"):
            make_bank(storage, delivery=Delivery.INLINE, projection_class=projection_class)
        return
    old = make_bank(storage, delivery=Delivery.INLINE, retire_after=0)
    old.mediator.send(Deposit(account="a", amount=5))
    assert old.balances() == {"a": 5}

    new = make_bank(storage, delivery=Delivery.INLINE, projection_class=projection_class, retire_after=0)
    new.mediator.send(Deposit(account="b", amount=2))  # the outdated generation is not written inline
    if projection_class is Balances:  # the same version: nothing to rebuild, the inline write happened
        assert new.balances() == {"a": 5, "b": 2}
        assert storage.rebuilding("balances") is None
        return
    assert old.balances() == {"a": 5}  # the old version's read model, untouched by the new code
    with pytest.raises(ReadModelUnavailableError):
        new.balances()
    new.engine.catch_up()
    new.engine.finish_rebuilds()
    assert new.balances() == {"a": 500, "b": 200}
    new.mediator.send(Deposit(account="c", amount=1))  # and from now on inline again
    assert new.balances() == {"a": 500, "b": 200, "c": 100}
    assert new.projection.applied == [500, 200, 100]
    assert new.projection.side_effects == [("b", False), ("c", False)]


def test_newer_code_replaces_an_older_rebuild_claimed_while_it_looked(storage: Storage,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_bank(storage, retire_after=0)
    old.mediator.send(Deposit(account="a", amount=5))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    looked = storage.current_generation

    def current_generation(name: str) -> int:  # the old release's operator rebuilds between the engine's reads
        monkeypatch.setattr(storage, "current_generation", looked)
        old.engine.rebuild(name)
        return looked(name)

    monkeypatch.setattr(storage, "current_generation", current_generation)
    new.engine.catch_up()
    monkeypatch.undo()
    new.engine.finish_rebuilds()
    assert record_version(storage, "balances", storage.current_generation("balances"), 1) == 2
    assert new.balances() == {"a": 500}
    assert new.projection.applied == [500]  # into its own generation, never the old version's replay


def test_older_code_cannot_claim_a_rebuild_over_a_newer_read_model_swapped_in_while_it_looked(
        storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    old = make_bank(storage, retire_after=0)
    old.mediator.send(Deposit(account="a", amount=5))
    old.engine.catch_up()
    new = make_bank(storage, projection_class=BalancesInCents, retire_after=0)
    looked = storage.rebuilding

    def rebuilding(name: str) -> int | None:  # the new release finishes its upgrade between the old one's reads
        monkeypatch.setattr(storage, "rebuilding", looked)
        new.engine.catch_up()
        new.engine.finish_rebuilds()
        return looked(name)

    monkeypatch.setattr(storage, "rebuilding", rebuilding)
    with pytest.raises(ReadModelUnavailableError, match="newer than this code's"):
        old.engine.rebuild("balances")
    assert storage.rebuilding("balances") is None
    old.engine.finish_rebuilds()  # returns: nothing of its version to finish
    assert new.balances() == {"a": 500}
