"""The shop scaled out on PostgreSQL, as the README runs it: two service processes under uvicorn, three workers.

Every command goes to one service and every read to the other, with the token the first one answered, so each
read proves read-your-writes across processes. Two workers split the six projections (``--only``); a third may
run any of them and stands by. Halfway, the worker holding the order projections is killed: the standby takes
them over, and the reads go on answering.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import postgres

from .test_http import setup_shop
from .tokens import ADMIN, KEY, as_customer

ROOT = Path(__file__).resolve().parents[2]
SPLIT: tuple[list[str], ...] = (
    ["--only", "order_details,customer_orders,inventory"], ["--only", "catalog,search,dashboard"], [])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def processes(pg_schema: str) -> Iterator[tuple[list[httpx.Client], list[subprocess.Popen[str]]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHOP_POSTGRES": postgres.DSN, "SHOP_SCHEMA": pg_schema,
           "SHOP_DELIVERY": "worker", "SHOP_JWT_KEY": KEY}
    started: list[subprocess.Popen[str]] = []
    clients: list[httpx.Client] = []
    try:
        ports = [free_port(), free_port()]
        for port in ports:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "adapters.shop_http:app", "--host", "127.0.0.1", "--port",
                 str(port), "--log-level", "warning"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, text=True))
        workers: list[subprocess.Popen[str]] = []
        deadline = time.monotonic() + 60
        for only in SPLIT:  # the standby last, once the two others hold their projections
            worker = subprocess.Popen(
                [sys.executable, "-m", "mediator.readmodels", "--app", "adapters.shop_app:engine_from_env",
                 "worker", *only], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            workers.append(worker)
            started.append(worker)
            assert worker.stdout is not None
            assert "worker running" in worker.stdout.readline()
            for name in (only[1].split(",") if only else []):
                while postgres.lease_holder(pg_schema, name) != worker.pid:
                    assert time.monotonic() < deadline, f"the worker for {name} did not take it"
                    time.sleep(0.02)
        deadline = time.monotonic() + 60
        for port in ports:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)
            clients.append(client)
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/dashboard", headers=ADMIN).status_code == 200:
                        break
                assert time.monotonic() < deadline, "a service process did not start"
                time.sleep(0.05)
        yield clients, workers
    finally:
        for client in clients:
            client.close()
        stop(started)


def stop(started: list[subprocess.Popen[str]]) -> None:
    """SIGTERM every process still running, then wait for each (killing one that does not stop)."""
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()


def test_reads_in_one_service_process_see_writes_made_in_another(pg_schema: str) -> None:
    with processes(pg_schema) as ((writes, reads), workers):
        ids = setup_shop(writes)
        buyer = as_customer(ids["customer"])
        placed = []
        for round_ in range(5):  # the stock is 5
            if round_ == 2:  # halfway, the worker of the order projections dies; the standby takes them over
                assert postgres.lease_holder(pg_schema, "order_details") == workers[0].pid
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait(timeout=10)
            answer = writes.post("/orders", json={"customer_id": ids["customer"],
                                                  "items": [{"product_id": ids["product"], "quantity": 1}]},
                                 headers=buyer)
            assert answer.status_code == 201, answer.text
            placed.append(answer.json()["order_id"])
            token = {"X-Consistent-With": answer.headers["x-consistency-token"]}
            details = reads.get(f"/orders/{placed[-1]}", headers={**buyer, **token})
            assert details.status_code == 200, details.text
            assert details.json()["status"] == "placed"
            inventory = reads.get(f"/products/{ids['product']}/inventory", headers=token).json()
            assert (inventory["on_hand"], inventory["reserved"]) == (5, round_ + 1)
            mine = reads.get(f"/customers/{ids['customer']}/orders", headers={**buyer, **token}).json()
            assert sorted(o["order_id"] for o in mine) == sorted(placed)
        stock = writes.post(f"/products/{ids['product']}/stock", json={"delta": 10, "reason": "delivery"},
                            headers=ADMIN)
        token = {"X-Consistent-With": stock.headers["x-consistency-token"]}
        assert reads.get(f"/products/{ids['product']}/inventory", headers=token).json()["on_hand"] == 15
        assert postgres.lease_holder(pg_schema, "order_details") == workers[2].pid
        assert postgres.lease_holder(pg_schema, "catalog") == workers[1].pid


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    postgres.require()
