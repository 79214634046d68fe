"""Idempotent commands: a repeat under the same key answers the first's result and token, and runs nothing."""

from __future__ import annotations

import asyncio
import decimal
import enum
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mediator import (
    IdempotencyKeyError,
    IdempotencyKeyInUseError,
    IdempotencyKeyMismatchError,
    IdempotentCommand,
    Mediator,
)
from mediator.readmodels import ReadModels, Storage, digest_of, fresh_token, last_token
from mediator.testing import Clock, settle
from tests import storages

from .bank import Balances
from .idempotent_bank import PayIn, PayInTwice, Receipt, Teller, Withdraw, wire

ROOT = Path(__file__).resolve().parents[2]


@attrs.define
class Bank:
    engine: ReadModels
    mediator: Mediator
    teller: Teller
    clock: Clock

    def balance(self, account: str = "a") -> int:
        settle(self.engine)
        row = self.engine.get(Balances.balance, account)
        return row.amount if row else 0


@pytest.fixture
def bank(storage: Storage) -> Bank:
    teller, clock = Teller(), Clock()
    engine, registry = wire(storage, teller, clock=clock, idempotency_ttl=3_600.0)
    return Bank(engine, registry.build(), teller, clock)


def pay_in(amount: int = 10, key: str | None = "key-1", account: str = "a") -> PayIn:
    return PayIn(account=account, amount=amount, idempotency_key=key)


def test_a_repeat_answers_the_first_result_and_token_without_running_again(bank: Bank) -> None:
    with fresh_token():
        first = bank.mediator.send(pay_in())
        token = last_token()
    bank.mediator.send(pay_in(5, key="other"))
    with fresh_token():
        again = bank.mediator.send(pay_in())
        assert last_token() == token
    assert again == first == Receipt("a", 10, 1)
    assert bank.teller.runs == 2
    assert bank.balance() == 15
    assert bank.engine.idempotency.absorbed == {"tests.readmodels.idempotent_bank.PayIn": 1}


def test_commands_without_a_key_run_each_time(bank: Bank) -> None:
    bank.mediator.send(pay_in(key=None))
    bank.mediator.send(pay_in(key=None))
    assert bank.teller.runs == 2
    assert bank.balance() == 20


def test_a_key_reused_for_another_payload_is_refused_and_runs_nothing(bank: Bank) -> None:
    bank.mediator.send(pay_in(10))
    with pytest.raises(IdempotencyKeyMismatchError, match="another payload") as raised:
        bank.mediator.send(pay_in(11))
    assert (raised.value.key, raised.value.command) == ("key-1", PayIn)
    assert bank.teller.runs == 1
    assert bank.balance() == 10


def test_a_key_reused_for_another_command_is_refused(bank: Bank) -> None:
    bank.mediator.send(pay_in(10))
    with pytest.raises(IdempotencyKeyMismatchError, match=r"not a .*Withdraw") as raised:
        bank.mediator.send(Withdraw(account="a", amount=10, idempotency_key="key-1"))
    assert raised.value.stored_command.endswith("PayIn")
    assert bank.teller.runs == 1


def test_a_failed_command_keeps_no_key_and_its_retry_runs(bank: Bank) -> None:
    bank.teller.fail_next = True
    with pytest.raises(ConnectionError):
        bank.mediator.send(pay_in())
    assert bank.mediator.send(pay_in()) == Receipt("a", 10, 2)
    assert bank.balance() == 10


def test_a_key_expires_after_its_time_to_live(bank: Bank) -> None:
    bank.mediator.send(pay_in())
    bank.clock.advance(minutes=59)
    bank.mediator.send(pay_in())
    assert bank.teller.runs == 1
    bank.clock.advance(minutes=1)
    assert bank.engine.storage.count_keys(bank.clock()) == 0
    assert bank.mediator.send(pay_in(12)) == Receipt("a", 12, 2)  # the key is free again, for any payload
    assert bank.engine.storage.count_keys(bank.clock()) == 1


def test_expired_records_are_deleted_and_live_ones_kept(bank: Bank) -> None:
    bank.mediator.send(pay_in(key="old"))
    bank.clock.advance(minutes=30)
    bank.mediator.send(pay_in(key="new"))
    bank.clock.advance(minutes=31)
    assert bank.engine.expire_idempotency_keys() == 1
    bank.mediator.send(pay_in(key="new"))
    assert bank.teller.runs == 2


def test_a_repeat_while_the_first_runs_is_refused_and_then_answers(bank: Bank) -> None:
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    bank.teller.before = hold
    mediator = bank.mediator
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(mediator.send(pay_in())))
    first.start()
    assert started.wait(10)
    with pytest.raises(IdempotencyKeyInUseError) as raised:
        mediator.send(pay_in())
    assert raised.value.command is PayIn
    release.set()
    first.join(10)
    bank.teller.before = None
    assert mediator.send(pay_in()) == results[0] == Receipt("a", 10, 1)
    assert bank.teller.runs == 1


def test_idempotent_commands_inside_another_command_commit_with_it(bank: Bank) -> None:
    twice = PayInTwice(first=pay_in(1, key="k1"), second=pay_in(2, key="k2"), fail_after=True)
    with pytest.raises(ValueError, match="refused after"):
        bank.mediator.send(twice)
    assert bank.engine.storage.count_keys(bank.clock()) == 0  # rolled back with the command they joined
    receipts = bank.mediator.send(attrs.evolve(twice, fail_after=False))
    assert bank.mediator.send(pay_in(2, key="k2")) == receipts[1]
    assert bank.teller.runs == 4
    assert bank.balance() == 3


def test_a_command_without_a_result_answers_none_again(bank: Bank) -> None:
    withdraw = Withdraw(account="a", amount=3, idempotency_key="w")
    assert bank.mediator.send(withdraw) is None
    assert bank.mediator.send(withdraw) is None
    assert bank.teller.runs == 1


def test_the_async_mediator_answers_repeats_alike(storage: Storage) -> None:
    teller = Teller()
    _engine, registry = wire(storage, teller, nested=False)
    mediator = registry.build_async()

    async def twice() -> tuple[Receipt, Receipt]:
        return await mediator.send(pay_in()), await mediator.send(pay_in())

    first, again = asyncio.run(twice())
    assert first == again
    assert teller.runs == 1


def test_a_key_that_cannot_be_one_is_refused_when_sent_and_runs_nothing(bank: Bank) -> None:
    for bad in ("", "x" * 256, "tab\there", 7, b"bytes"):
        with pytest.raises(IdempotencyKeyError) as raised:
            bank.mediator.send(PayIn(account="a", amount=1, idempotency_key=bad))  # type: ignore[arg-type]
        assert raised.value.key == bad
    assert bank.teller.runs == 0
    assert bank.engine.storage.head() == 0


def test_the_digest_is_of_the_payload_not_the_key() -> None:
    assert digest_of(pay_in(key="a")) == digest_of(pay_in(key="b")) != digest_of(pay_in(11, key="a"))


def test_the_engine_refuses_a_time_to_live_that_is_not_one(storage: Storage) -> None:
    from mediator.readmodels import ProjectionConfigError

    with pytest.raises(ProjectionConfigError, match="idempotency_ttl"):
        wire(storage, Teller(), idempotency_ttl=0)


# -- across processes ----------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], Storage]]:
    with storages.shared_by_processes(request.param, tmp_path, BANK_PAUSE="0.5") as (env, storage):
        wire(storage, Teller())  # the schema made before the processes start
        yield env, storage


def test_two_processes_sending_one_key_at_once_run_the_handler_once(
        shared: tuple[dict[str, str], Storage]) -> None:
    env, storage = shared
    command = [sys.executable, "-m", "tests.readmodels.idempotent_bank", "same-key", "10"]
    processes = [subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
    answers = sorted(process.communicate(timeout=60)[0].strip().splitlines()[-1] for process in processes)
    assert [process.returncode for process in processes] == [0, 0]
    assert storage.head() == 1  # one pay-in's event: the handler ran once
    # SQLite's writers take turns: the second answers the first's receipt. PostgreSQL's overlap: it is refused.
    assert answers in (["receipt 1 runs 0", "receipt 1 runs 1"], ["in-use", "receipt 1 runs 1"]), answers
    again = subprocess.run(command, env={**env, "BANK_PAUSE": "0"}, cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=True)
    assert again.stdout.strip().splitlines()[-1] == "receipt 1 runs 0"


@attrs.frozen(kw_only=True)
class Tag(IdempotentCommand[None]):
    labels: frozenset[str]
    attributes: dict[str, int]
    note: str = ""


def test_the_digest_is_the_same_in_every_process_sets_included() -> None:
    script = ("from tests.readmodels.test_idempotency import Tag; from mediator.readmodels import digest_of; "
              "print(digest_of(Tag(labels=frozenset({'red', 'green', 'blue', 'cyan'}), attributes={'a': 1, 'b': 2})))")
    digests = {subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed,
                                                                     "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, check=True).stdout for seed in ("1", "2", "3")}
    assert len(digests) == 1
    assert digest_of(Tag(labels=frozenset(), attributes={"a": 1, "b": 2})) != digest_of(
        Tag(labels=frozenset(), attributes={"a": 1, "b": 3}))


class Size(enum.IntEnum):
    SMALL = 1


class Colour(enum.StrEnum):
    RED = "red"


@attrs.frozen(kw_only=True)
class Line(IdempotentCommand[None]):
    count: int
    colour: str
    price: decimal.Decimal
    colours: tuple[Colour, ...] = ()


def test_values_marshal_cannot_write_as_they_are_still_digest_the_same_each_time() -> None:
    # Subclasses of int and str in fields annotated int and str: the fast form is refused and the strict one used.
    one = Line(count=Size.SMALL, colour=Colour.RED, price=decimal.Decimal("1.50"), idempotency_key="a")
    assert digest_of(one) == digest_of(attrs.evolve(one, idempotency_key="b"))
    # An enum member is not mistaken for its value, nor a decimal for another with the same value written apart.
    assert digest_of(one) != digest_of(attrs.evolve(one, count=1, colour="red"))
    assert digest_of(one) != digest_of(attrs.evolve(one, price=decimal.Decimal("1.5")))
    # A text that reads like the form of another value is not mistaken for it.
    assert digest_of(attrs.evolve(one, colours=(Colour.RED,))) != digest_of(attrs.evolve(one, colours=()))
    assert len({digest_of(Line(count=n, colour=c, price=decimal.Decimal(0))) for n in (1, 2)
                for c in ("red", "<Colour.RED: 'red'>")}) == 4


def test_a_payload_of_a_type_events_cannot_hold_is_refused() -> None:
    @attrs.frozen(kw_only=True)
    class Odd(IdempotentCommand[None]):
        thing: object

    with pytest.raises(TypeError, match=r"Cannot digest a (builtins\.)?object in an idempotent command"):
        digest_of(Odd(thing=object(), idempotency_key="k"))
