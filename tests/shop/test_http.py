"""The shop through real HTTP requests against uvicorn: routes, errors, read-your-writes across requests."""

import contextlib
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from structlog.testing import capture_logs

from adapters.shop_app import Shop, build_shop
from adapters.shop_http import asgi
from mediator.readmodels._versions import record_version
from mediator.testing import settle

ADMIN = {"X-Admin": "1"}


@contextlib.contextmanager
def serving(app: Any, log_level: str = "warning") -> Iterator[httpx.Client]:
    """Serve ``app`` with uvicorn on a free local port, and a client for it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        running.should_exit = True
        thread.join(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, Shop]]:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    shop.engine.start()
    try:
        with serving(asgi(shop)) as client:
            yield client, shop
    finally:
        shop.close()


@pytest.fixture
def paused(tmp_path: Path) -> Iterator[tuple[httpx.Client, Shop]]:
    """The shop served with its projection runner not started: read models move on only when the test says."""
    shop = build_shop(tmp_path / "shop.db", logging=False)
    try:
        with serving(asgi(shop, consistency_timeout=0.1)) as client:
            yield client, shop
    finally:
        shop.close()


def setup_shop(client: httpx.Client) -> dict[str, str]:
    customer = client.post("/customers", json={"name": "Ada", "email": "ada@example.com"}).json()["customer_id"]
    category = client.post("/categories", json={"name": "Lamps"}, headers=ADMIN).json()["category_id"]
    product = client.post("/products", json={"category_id": category, "name": "Desk lamp", "price": "25.00"},
                          headers=ADMIN).json()["product_id"]
    assert client.post(f"/products/{product}/stock", json={"delta": 5, "reason": "delivery"},
                       headers=ADMIN).status_code == 204
    return {"customer": customer, "category": category, "product": product}


def test_a_client_reads_its_own_write_through_the_token_header(server: tuple[httpx.Client, Shop]) -> None:
    client, _shop = server
    ids = setup_shop(client)
    as_customer = {"X-Customer-Id": ids["customer"]}
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 2}]},
                         headers=as_customer)
    assert placed.status_code == 201
    token = placed.headers["x-consistency-token"]
    assert int(token) > 0
    assert placed.headers["x-correlation-id"]
    order_id = placed.json()["order_id"]

    details = client.get(f"/orders/{order_id}", headers={**as_customer, "X-Consistent-With": token})
    assert details.status_code == 200
    body: dict[str, Any] = details.json()
    assert (body["status"], body["total"], body["customer_name"]) == ("placed", "50.00", "Ada")
    inventory = client.get(f"/products/{ids['product']}/inventory", headers={"X-Consistent-With": token}).json()
    assert (inventory["on_hand"], inventory["reserved"], inventory["available"]) == (5, 2, 3)
    orders = client.get(f"/customers/{ids['customer']}/orders", headers={**as_customer, "X-Consistent-With": token})
    assert [o["order_id"] for o in orders.json()] == [order_id]
    found = client.get("/search", params={"q": "desk"}, headers={"X-Consistent-With": token}).json()
    assert [p["name"] for p in found] == ["Desk lamp"]
    page = client.get(f"/categories/{ids['category']}/products", headers={"X-Consistent-With": token}).json()
    assert page["total"] == 1
    board = client.get("/dashboard", headers={"X-Consistent-With": token}).json()
    assert (board["orders"], board["units"], [c["units"] for c in board["categories"]]) == (1, 2, [2])
    assert [d["units"] for d in client.get("/sales/daily", headers={"X-Consistent-With": token}).json()] == [2]


def test_errors_map_to_http(server: tuple[httpx.Client, Shop]) -> None:
    client, shop = server
    ids = setup_shop(client)
    invalid = client.post("/products", json={"category_id": ids["category"], "name": "", "price": "-1"},
                          headers=ADMIN)
    assert invalid.status_code == 422
    assert set(invalid.json()["fields"]) == {"name", "price"}
    missing = client.get("/orders/nope")
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    forbidden = client.post(f"/products/{ids['product']}/stock", json={"delta": 1, "reason": "x"},
                            headers={"X-Customer-Id": ids["customer"]})
    assert (forbidden.status_code, forbidden.json()["error"]) == (403, "forbidden")
    too_many = client.post("/orders", json={"customer_id": ids["customer"],
                                            "items": [{"product_id": ids["product"], "quantity": 9}]},
                           headers={"X-Customer-Id": ids["customer"]})
    assert (too_many.status_code, too_many.json()["error"]) == (409, "rule_violation")
    stale = client.put(f"/products/{ids['product']}/price",
                       json={"price": "30", "reason": "costs", "expected_version": 7}, headers=ADMIN)
    assert (stale.status_code, stale.json()["error"]) == (409, "conflict")
    head = shop.storage.head()
    assert client.post("/orders", content=b"{not json", headers={"content-type": "application/json"}).status_code \
        == 422
    assert shop.storage.head() == head  # no partial write from any refused request


def test_reads_of_orders_are_the_customers_own(server: tuple[httpx.Client, Shop]) -> None:
    client, _shop = server
    ids = setup_shop(client)
    other = client.post("/customers", json={"name": "Bo", "email": "bo@example.com"}).json()["customer_id"]
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 1}]},
                         headers={"X-Customer-Id": ids["customer"]})
    token, order_id = placed.headers["x-consistency-token"], placed.json()["order_id"]
    wait = {"X-Consistent-With": token}
    assert client.get(f"/orders/{order_id}", headers={**wait, "X-Customer-Id": ids["customer"]}).status_code == 200
    assert client.get(f"/orders/{order_id}", headers={**wait, "X-Customer-Id": other}).status_code == 404
    assert client.get(f"/orders/{order_id}", headers=wait).status_code == 404  # anonymous
    assert client.get(f"/orders/{order_id}", headers={**wait, **ADMIN}).status_code == 200
    assert client.get(f"/customers/{ids['customer']}/orders", headers={"X-Customer-Id": other}).status_code == 403


def test_bad_headers_and_fields_are_4xx_with_reasons(server: tuple[httpx.Client, Shop]) -> None:
    client, shop = server
    ids = setup_shop(client)
    beyond = str(shop.storage.head() + 1).encode()  # no read model can reach it: it is not a token we issued
    for token in (b"abc", b"-3", "²".encode("latin-1"), b"1" * 40, beyond, b"9" * 18):
        answer = client.get("/dashboard", headers={b"X-Consistent-With": token})
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_request"), token
    for body in ({"name": "  ", "email": "a@b"}, {"name": "Ada", "email": "no-at-sign"}):
        assert client.post("/customers", json=body).status_code == 422
    zero = client.post(f"/products/{ids['product']}/stock", json={"delta": 0, "reason": "x"}, headers=ADMIN)
    assert zero.status_code == 422
    assert "delta" in zero.json()["fields"]
    assert client.get("/search", params={"q": "\x00 lamp"}).status_code == 200


def test_a_client_can_send_back_the_version_it_read(server: tuple[httpx.Client, Shop]) -> None:
    client, _shop = server
    ids = setup_shop(client)
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 1}]},
                         headers={"X-Customer-Id": ids["customer"]})
    wait = {"X-Consistent-With": placed.headers["x-consistency-token"], **ADMIN}
    order = client.get(f"/orders/{placed.json()['order_id']}", headers=wait).json()
    assert order["version"] == 1
    confirm = client.post(f"/orders/{order['order_id']}/confirm", json={"expected_version": order["version"]},
                          headers=ADMIN)
    assert confirm.status_code == 204
    again = client.post(f"/orders/{order['order_id']}/ship", json={"expected_version": order["version"]},
                        headers=ADMIN)
    assert (again.status_code, again.json()["error"]) == (409, "conflict")  # it moved on to version 2
    inventory = client.get(f"/products/{ids['product']}/inventory", headers=wait).json()
    assert inventory["version"] >= 1


def test_a_read_without_the_token_may_be_stale_and_one_with_it_waits_for_the_write(
        paused: tuple[httpx.Client, Shop]) -> None:
    client, shop = paused
    ids = setup_shop(client)
    settle(shop.engine)  # the read models show the stock; nothing moves them on until the runner starts
    as_customer = {"X-Customer-Id": ids["customer"]}
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 2}]},
                         headers=as_customer)
    token, order_id = placed.headers["x-consistency-token"], placed.json()["order_id"]
    inventory = f"/products/{ids['product']}/inventory"

    stale = client.get(inventory)
    assert (stale.status_code, stale.json()["reserved"], stale.json()["available"]) == (200, 0, 5)
    assert client.get(f"/orders/{order_id}", headers=as_customer).status_code == 404  # not projected yet
    waited = client.get(inventory, headers={"X-Consistent-With": token})
    assert (waited.status_code, waited.json()["error"]) == (503, "not_yet_consistent")

    shop.engine.start()
    fresh = client.get(inventory, headers={"X-Consistent-With": token})
    assert (fresh.status_code, fresh.json()["reserved"], fresh.json()["available"]) == (200, 2, 3)
    details = client.get(f"/orders/{order_id}", headers={**as_customer, "X-Consistent-With": token})
    assert (details.status_code, details.json()["status"]) == (200, "placed")


def test_every_read_that_cannot_catch_up_in_time_is_a_503(paused: tuple[httpx.Client, Shop]) -> None:
    client, shop = paused
    ids = setup_shop(client)
    token = client.post("/categories", json={"name": "Shades"}, headers=ADMIN).headers["x-consistency-token"]
    wait = {"X-Consistent-With": token, **ADMIN}
    for url in (f"/orders/{ids['product']}", f"/customers/{ids['customer']}/orders",
                f"/categories/{ids['category']}/products", f"/products/{ids['product']}/inventory",
                "/search?q=lamp", "/dashboard"):
        answer = client.get(url, headers=wait)
        assert answer.status_code == 503, url
        assert answer.json() == {"error": "not_yet_consistent",
                                 "detail": "The read model has not caught up yet; retry shortly."}
    assert shop.engine.lag()[0].checkpoint == 0  # nothing was projected meanwhile: each answer really timed out


def test_an_unexpected_failure_is_a_500_with_a_correlation_id_and_nothing_internal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shop = build_shop(tmp_path / "shop.db", logging=False)

    def broken_read(product_id: str) -> object:
        raise sqlite3.DatabaseError("database disk image is malformed: /srv/shop/secret-read.db")

    def broken_write(tx: object, category_id: str, name: str) -> None:
        raise RuntimeError("constraint xyz_secret failed in /srv/shop/handlers.py")

    monkeypatch.setattr(shop.views, "product_inventory", broken_read)
    monkeypatch.setattr(shop.model, "add_category", broken_write)
    head = shop.storage.head()
    try:
        # Starlette re-raises to the server once the 500 is sent, and uvicorn then drops the connection: one each.
        with serving(asgi(shop), log_level="critical") as client, capture_logs() as logs:
            read = client.get("/products/p1/inventory", headers={"X-Correlation-Id": "req-42", "Connection": "close"})
            write = client.post("/categories", json={"name": "Lamps"}, headers={**ADMIN, "Connection": "close"})
    finally:
        shop.close()
    assert read.status_code == write.status_code == 500
    assert read.json() == {"error": "internal", "detail": "Something went wrong; it has been logged.",
                           "correlation_id": "req-42"}
    assert read.headers["x-correlation-id"] == "req-42"
    assert write.json()["correlation_id"] == write.headers["x-correlation-id"]  # made up for the request
    assert len(write.json()["correlation_id"]) == 32
    for answer in (read, write):
        for leak in ("secret", "malformed", "srv", "Error", "Traceback", "File "):
            assert leak not in answer.text
    assert [e["event"] for e in logs].count("request failed") == 2  # the details go to the log instead
    assert shop.storage.head() == head  # the failed command wrote nothing


def test_an_order_keeps_its_shipping_address_for_shipping_only(server: tuple[httpx.Client, Shop]) -> None:
    client, shop = server
    ids = setup_shop(client)
    address = "221B Baker Street, London"
    placed = client.post("/orders", json={"customer_id": ids["customer"], "shipping_address": address,
                                          "items": [{"product_id": ids["product"], "quantity": 1}]},
                         headers={"X-Customer-Id": ids["customer"]})
    assert placed.status_code == 201
    order_id = placed.json()["order_id"]
    stored = shop.inspect(lambda model, tx: model.order(tx, order_id))
    assert stored is not None
    assert stored.shipping_address == address
    details = client.get(f"/orders/{order_id}", headers={"X-Consistent-With": placed.headers["x-consistency-token"],
                                                         **ADMIN})
    assert details.status_code == 200
    assert "Baker" not in details.text  # personal data stays out of the events and so out of the read models
    too_long = client.post("/orders", json={"customer_id": ids["customer"], "shipping_address": "x" * 501,
                                            "items": [{"product_id": ids["product"], "quantity": 1}]},
                           headers={"X-Customer-Id": ids["customer"]})
    assert (too_long.status_code, list(too_long.json()["fields"])) == (422, ["shipping_address"])


def test_a_read_model_being_rebuilt_for_a_new_version_is_a_503_to_retry(tmp_path: Path) -> None:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    # As a read database made by the previous release would be: its dashboard built by version 1.
    record_version(shop.storage, "dashboard", shop.storage.current_generation("dashboard"), 1)
    try:
        with serving(asgi(shop)) as client:
            ids = setup_shop(client)
            answer = client.get("/dashboard")
            assert (answer.status_code, answer.json()["error"]) == (503, "read_model_unavailable")
            assert answer.headers["Retry-After"] == "5"
            assert client.get(f"/categories/{ids['category']}/products").status_code == 200  # the others serve
            settle(shop.engine)  # the first catch-up rebuilds it for this version
            shop.engine.finish_rebuilds()
            assert client.get("/dashboard").json()["orders"] == 0
    finally:
        shop.close()


def test_a_database_that_is_down_is_a_503_to_retry_with_nothing_internal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mediator.readmodels import StorageError

    shop = build_shop(tmp_path / "shop.db", logging=False)

    def down(*_args: object) -> object:
        raise StorageError("PostgreSQL failed to begin a write transaction: connection to 10.0.0.7 refused")

    monkeypatch.setattr(shop.views, "product_inventory", down)
    monkeypatch.setattr(shop.storage, "begin", down)
    try:
        with serving(asgi(shop), log_level="critical") as client, capture_logs() as logs:
            read = client.get("/products/p1/inventory")
            write = client.post("/categories", json={"name": "Lamps"}, headers=ADMIN)
    finally:
        shop.close()
    for answer in (read, write):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json() == {"error": "storage_unavailable",
                                 "detail": "The service's database is unavailable; retry shortly."}
        assert "10.0.0.7" not in answer.text
    assert [e["event"] for e in logs].count("storage unavailable") == 2
