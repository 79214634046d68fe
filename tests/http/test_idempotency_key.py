"""The ``Idempotency-Key`` header through uvicorn: a repeat answers the first response, a reused key 422, a repeat
while the first runs 409 (the IETF Idempotency-Key draft), a key that cannot be one 400."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from mediator import IdempotentCommand, Registry
from mediator.fastapi import IdempotencyKey, Mediated, MediatorMiddleware, install_error_handlers
from mediator.readmodels import EventTypes, ReadModels, UnitOfWork
from mediator.readmodels.sqlite import SqliteStorage
from tests.readmodels.bank import Deposited

from .servers import serving


@attrs.frozen(kw_only=True)
class PayIn(IdempotentCommand[int]):
    account: str
    amount: int


class Body(BaseModel):
    account: str
    amount: int


class Teller:
    def __init__(self) -> None:
        self.runs = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    async def pay_in(self, command: PayIn, uow: UnitOfWork) -> int:
        self.runs += 1
        uow.record(Deposited(account=command.account, amount=command.amount), key=command.account)
        self.entered.set()
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 10)
        return self.runs


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[httpx.Client, Teller, ReadModels]]:
    types = EventTypes()
    types.register(Deposited, name="bank.deposited")
    engine = ReadModels(SqliteStorage(tmp_path / "bank.db"), types)
    registry = Registry()
    engine.install(registry)
    teller = Teller()
    registry.handle(PayIn).by(teller.pay_in)
    mediator = registry.build_async()
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/pay-ins", status_code=201)
    async def pay_in(body: Body, mediator: Mediated, key: IdempotencyKey) -> dict[str, int]:
        return {"receipt": await mediator.send(PayIn(account=body.account, amount=body.amount, idempotency_key=key))}

    try:
        with serving(MediatorMiddleware(app, mediator, lambda headers: "user", engine=engine)) as client:
            yield client, teller, engine
    finally:
        engine.storage.close()


def test_a_repeated_request_answers_the_first_response_and_token(
        service: tuple[httpx.Client, Teller, ReadModels]) -> None:
    client, teller, engine = service
    headers = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}
    first = client.post("/pay-ins", json={"account": "a", "amount": 5}, headers=headers)
    client.post("/pay-ins", json={"account": "a", "amount": 1})
    again = client.post("/pay-ins", json={"account": "a", "amount": 5},
                        headers={"Idempotency-Key": "8e03978e-40d5-43e8-bc93-6894a57f9324"})  # quoted or bare
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json() == {"receipt": 1}
    assert again.headers["x-consistency-token"] == first.headers["x-consistency-token"] == "1"
    assert teller.runs == 2
    assert engine.storage.head() == 2


def test_a_key_reused_with_another_body_is_a_422_and_runs_nothing(
        service: tuple[httpx.Client, Teller, ReadModels]) -> None:
    client, teller, engine = service
    client.post("/pay-ins", json={"account": "a", "amount": 5}, headers={"Idempotency-Key": "k"})
    reused = client.post("/pay-ins", json={"account": "a", "amount": 6}, headers={"Idempotency-Key": "k"})
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    assert teller.runs == 1
    assert engine.storage.head() == 1


def test_a_repeat_while_the_first_request_runs_is_a_409(service: tuple[httpx.Client, Teller, ReadModels]) -> None:
    client, teller, engine = service
    teller.gate = threading.Event()
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(
        client.post("/pay-ins", json={"account": "a", "amount": 5}, headers={"Idempotency-Key": "k"})))
    first.start()
    assert teller.entered.wait(10)
    busy = client.post("/pay-ins", json={"account": "a", "amount": 5}, headers={"Idempotency-Key": "k"})
    assert (busy.status_code, busy.json()["error"]) == (409, "idempotency_key_in_use")
    assert busy.headers["retry-after"] == "1"
    teller.gate.set()
    first.join(10)
    assert answers[0].status_code == 201
    later = client.post("/pay-ins", json={"account": "a", "amount": 5}, headers={"Idempotency-Key": "k"})
    assert (later.status_code, later.json()) == (201, answers[0].json())
    assert teller.runs == 1
    assert engine.storage.head() == 1


def test_a_key_that_cannot_be_one_is_a_400(service: tuple[httpx.Client, Teller, ReadModels]) -> None:
    client, teller, _engine = service
    for bad in ('""', "x" * 256):
        answer = client.post("/pay-ins", json={"account": "a", "amount": 5}, headers={"Idempotency-Key": bad})
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request")
    assert teller.runs == 0
