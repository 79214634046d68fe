"""The shop through real HTTP requests against uvicorn: routes, errors, read-your-writes across requests."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from adapters.shop_app import Shop, build_shop
from adapters.shop_http import asgi
from domain.events import OrderPlaced
from handlers.projections import OrderDetailsProjection
from mediator.readmodels._versions import record_version
from mediator.testing import settle
from tests.http.servers import serving

from .backends import shop_on
from .test_shop import stocked
from .tokens import ADMIN, KEY, as_customer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, Shop]]:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    shop.engine.start()
    try:
        with serving(asgi(shop, jwt_key=KEY)) as client:
            yield client, shop
    finally:
        shop.close()


@pytest.fixture
def paused(tmp_path: Path) -> Iterator[tuple[httpx.Client, Shop]]:
    """The shop served with its projection runner not started: read models move on only when the test says."""
    shop = build_shop(tmp_path / "shop.db", logging=False)
    try:
        with serving(asgi(shop, consistency_timeout=0.1, jwt_key=KEY)) as client:
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
    buyer = as_customer(ids["customer"])
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 2}]},
                         headers=buyer)
    assert placed.status_code == 201
    token = placed.headers["x-consistency-token"]
    assert int(token) > 0
    assert placed.headers["x-correlation-id"]
    order_id = placed.json()["order_id"]

    details = client.get(f"/orders/{order_id}", headers={**buyer, "X-Consistent-With": token})
    assert details.status_code == 200
    body: dict[str, Any] = details.json()
    assert (body["status"], body["total"], body["customer_name"]) == ("placed", "50.00", "Ada")
    inventory = client.get(f"/products/{ids['product']}/inventory", headers={"X-Consistent-With": token}).json()
    assert (inventory["on_hand"], inventory["reserved"], inventory["available"]) == (5, 2, 3)
    orders = client.get(f"/customers/{ids['customer']}/orders", headers={**buyer, "X-Consistent-With": token})
    assert [o["order_id"] for o in orders.json()] == [order_id]
    found = client.get("/search", params={"q": "desk"}, headers={"X-Consistent-With": token}).json()
    assert [p["name"] for p in found] == ["Desk lamp"]
    page = client.get(f"/categories/{ids['category']}/products", headers={"X-Consistent-With": token}).json()
    assert page["total"] == 1
    board = client.get("/dashboard", headers={**ADMIN, "X-Consistent-With": token}).json()
    assert (board["orders"], board["units"], [c["units"] for c in board["categories"]]) == (1, 2, [2])
    daily = client.get("/sales/daily", headers={**ADMIN, "X-Consistent-With": token}).json()
    assert [d["units"] for d in daily] == [2]


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
                            headers=as_customer(ids["customer"]))
    assert (forbidden.status_code, forbidden.json()["error"]) == (403, "forbidden")
    too_many = client.post("/orders", json={"customer_id": ids["customer"],
                                            "items": [{"product_id": ids["product"], "quantity": 9}]},
                           headers=as_customer(ids["customer"]))
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
                         headers=as_customer(ids["customer"]))
    token, order_id = placed.headers["x-consistency-token"], placed.json()["order_id"]
    wait = {"X-Consistent-With": token}
    assert client.get(f"/orders/{order_id}", headers={**wait, **as_customer(ids["customer"])}).status_code == 200
    assert client.get(f"/orders/{order_id}", headers={**wait, **as_customer(other)}).status_code == 404
    assert client.get(f"/orders/{order_id}", headers=wait).status_code == 404  # anonymous
    assert client.get(f"/orders/{order_id}", headers={**wait, **ADMIN}).status_code == 200
    assert client.get(f"/customers/{ids['customer']}/orders", headers=as_customer(other)).status_code == 403


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
    # Typed-field validation refuses NUL characters in message fields (422); before it, the search ran (200).
    assert client.get("/search", params={"q": "\x00 lamp"}).status_code in (200, 422)


def test_a_client_can_send_back_the_version_it_read(server: tuple[httpx.Client, Shop]) -> None:
    client, _shop = server
    ids = setup_shop(client)
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 1}]},
                         headers=as_customer(ids["customer"]))
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
    buyer = as_customer(ids["customer"])
    placed = client.post("/orders", json={"customer_id": ids["customer"],
                                          "items": [{"product_id": ids["product"], "quantity": 2}]},
                         headers=buyer)
    token, order_id = placed.headers["x-consistency-token"], placed.json()["order_id"]
    inventory = f"/products/{ids['product']}/inventory"

    stale = client.get(inventory)
    assert (stale.status_code, stale.json()["reserved"], stale.json()["available"]) == (200, 0, 5)
    assert client.get(f"/orders/{order_id}", headers=buyer).status_code == 404  # not projected yet
    waited = client.get(inventory, headers={"X-Consistent-With": token})
    assert (waited.status_code, waited.json()["error"]) == (503, "not_yet_consistent")

    shop.engine.start()
    fresh = client.get(inventory, headers={"X-Consistent-With": token})
    assert (fresh.status_code, fresh.json()["reserved"], fresh.json()["available"]) == (200, 2, 3)
    details = client.get(f"/orders/{order_id}", headers={**buyer, "X-Consistent-With": token})
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

    def broken_read(*_args: object) -> object:
        raise KeyError("secret row missing from /srv/shop/secret-read.db")

    def broken_write(tx: object, category_id: str, name: str) -> None:
        raise RuntimeError("constraint xyz_secret failed in /srv/shop/handlers.py")

    monkeypatch.setattr(shop.engine, "get", broken_read)
    monkeypatch.setattr(shop.model, "add_category", broken_write)
    head = shop.storage.head()
    try:
        # Starlette passes the error on after its 500; the middleware logs it, and keeps it from the server.
        with serving(asgi(shop, jwt_key=KEY)) as client, capture_logs() as logs:
            read = client.get("/products/p1/inventory", headers={"X-Correlation-Id": "req-42"})
            write = client.post("/categories", json={"name": "Lamps"}, headers=ADMIN)
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
    failed = [e for e in logs if e["event"] == "request failed"]  # the details go to the log instead, once each
    assert [(e["error_type"], e["correlation_id"]) for e in failed] == [
        ("KeyError", "req-42"), ("RuntimeError", write.headers["x-correlation-id"])]
    assert all("exc_info" not in e and e["raised_at"].startswith("tests/shop/test_http.py:") for e in failed)
    assert shop.storage.head() == head  # the failed command wrote nothing


def test_an_order_keeps_its_shipping_address_for_shipping_only(server: tuple[httpx.Client, Shop]) -> None:
    client, shop = server
    ids = setup_shop(client)
    address = "221B Baker Street, London"
    placed = client.post("/orders", json={"customer_id": ids["customer"], "shipping_address": address,
                                          "items": [{"product_id": ids["product"], "quantity": 1}]},
                         headers=as_customer(ids["customer"]))
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
                           headers=as_customer(ids["customer"]))
    assert (too_long.status_code, list(too_long.json()["fields"])) == (422, ["shipping_address"])


def test_a_read_model_being_rebuilt_for_a_new_version_is_a_503_to_retry(tmp_path: Path) -> None:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    # As a read database made by the previous release would be: its dashboard built by version 1.
    record_version(shop.storage, "dashboard", shop.storage.current_generation("dashboard"), 1)
    try:
        with serving(asgi(shop, jwt_key=KEY)) as client:
            ids = setup_shop(client)
            answer = client.get("/dashboard", headers=ADMIN)
            assert (answer.status_code, answer.json()["error"]) == (503, "read_model_unavailable")
            assert answer.headers["Retry-After"] == "5"
            assert client.get(f"/categories/{ids['category']}/products").status_code == 200  # the others serve
            settle(shop.engine)  # the first catch-up rebuilds it for this version
            shop.engine.finish_rebuilds()
            assert client.get("/dashboard", headers=ADMIN).json()["orders"] == 0
    finally:
        shop.close()


def test_a_database_that_is_down_is_a_503_to_retry_with_nothing_internal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mediator.readmodels import StorageError

    shop = build_shop(tmp_path / "shop.db", logging=False)

    def down(*_args: object) -> object:
        raise StorageError("PostgreSQL failed to begin a write transaction: connection to 10.0.0.7 refused")

    monkeypatch.setattr(shop.engine, "get", down)
    monkeypatch.setattr(shop.storage, "begin", down)
    try:
        with serving(asgi(shop, jwt_key=KEY), log_level="critical") as client, capture_logs() as logs:
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


def test_a_nul_character_anywhere_is_never_a_5xx_on_any_backend(backend: str, tmp_path: Path) -> None:
    """It used to reach PostgreSQL, whose driver refused it with an error answered 500 (``GET /orders/%00``, no
    identity needed). Typed-field validation refuses it first (422); where it does not, the driver's refusal is
    answered 422 too; SQLite and memory take it as any other character."""
    with shop_on(backend, tmp_path, logging=False) as shop:
        customer, _lamps, desk, _floor = stocked(shop)
        requests: list[tuple[str, str, dict[str, Any] | None]] = [
            ("GET", "/orders/%00", None), ("GET", "/products/%00/inventory", None),
            ("GET", "/customers/%00/orders", None), ("GET", "/categories/a%00b/products", None),
            ("GET", "/search?q=lamp%00", None), ("POST", "/customers", {"name": "Ada\x00", "email": "a@b.c"}),
            ("POST", "/categories", {"name": "\x00"}), ("POST", f"/products/{desk}%00/discontinue", None),
            ("POST", "/orders", {"customer_id": f"{customer}\x00", "shipping_address": "\x00",
                                 "items": [{"product_id": desk, "quantity": 1}]}),
        ]
        with serving(asgi(shop, jwt_key=KEY)) as client:
            for method, url, body in requests:
                for headers in ({}, ADMIN, as_customer(customer)):
                    head = shop.storage.head()
                    answer = client.request(method, url, json=body, headers=headers)
                    assert answer.status_code < 500, (method, url, headers, answer.text)
                    if answer.status_code >= 400:
                        assert answer.json()["error"]
                        assert shop.storage.head() == head  # a refused request wrote nothing


def test_a_read_held_back_by_a_parked_event_is_a_503_at_once_and_never_stale_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bob's order is parked (its projection has a bug for it): reading it with the order's token must not answer
    what the read model has (no such order), nor wait out the timeout for a retry a minute away. It answers 503
    ``read_model_held_back`` at once, the reason in the log only; a later write's token is held back as well."""
    shop = build_shop(tmp_path / "shop.db", logging=False, max_attempts=1)
    details = shop.engine.projections["order_details"]
    assert isinstance(details, OrderDetailsProjection)
    placed = details.handlers[OrderPlaced]
    unlucky: list[str] = []

    def buggy(event: OrderPlaced, session: Any) -> None:
        if event.customer_id in unlucky:
            raise ZeroDivisionError("total of the order of secret-bob divided by zero")
        placed(event, session)

    monkeypatch.setitem(details.handlers, OrderPlaced, buggy)
    shop.engine.start()
    try:
        with serving(asgi(shop, consistency_timeout=5.0, jwt_key=KEY)) as client, capture_logs() as logs:
            ids = setup_shop(client)
            bob = client.post("/customers", json={"name": "Bob", "email": "bob@example.com"}).json()["customer_id"]
            unlucky.append(bob)
            lines = [{"product_id": ids["product"], "quantity": 1}]
            bobs = client.post("/orders", json={"customer_id": bob, "items": lines}, headers=as_customer(bob))
            adas = client.post("/orders", json={"customer_id": ids["customer"], "items": lines},
                               headers=as_customer(ids["customer"]))
            assert bobs.status_code == adas.status_code == 201
            token = bobs.headers["x-consistency-token"]
            settle(shop.engine)  # Ada's order applies, so Bob's is poison: parked, not retried for a minute
            [parked] = shop.engine.dead_letters()  # Bob's OrderPlaced, one of the events up to his token
            assert (parked.status, parked.position <= int(token)) == ("parked", True)
            started = time.monotonic()
            held = client.get(f"/orders/{bobs.json()['order_id']}",
                              headers={**as_customer(bob), "X-Consistent-With": token})
            took = time.monotonic() - started
            # Bob cancels: the projection could apply that, but it waits behind his parked order (same key).
            cancelled = client.post(f"/orders/{bobs.json()['order_id']}/cancel", json={"reason": "too slow"},
                                    headers=as_customer(bob))
            assert cancelled.status_code == 204
            settle(shop.engine)
            assert [d.status for d in shop.engine.dead_letters()] == ["parked", "blocked"]
            blocked = client.get(f"/orders/{bobs.json()['order_id']}", headers={
                **as_customer(bob), "X-Consistent-With": cancelled.headers["x-consistency-token"]})
            later = client.get(f"/orders/{adas.json()['order_id']}",
                               headers={**as_customer(ids["customer"]),
                                        "X-Consistent-With": adas.headers["x-consistency-token"]})
            unheld = client.get(f"/categories/{ids['category']}/products",  # another read model is not held back
                                headers={"X-Consistent-With": adas.headers["x-consistency-token"]})
    finally:
        shop.close()
    assert (held.status_code, held.json()["error"], held.headers["retry-after"]) == (503, "read_model_held_back", "30")
    assert "secret-bob" not in held.text
    assert "ZeroDivision" not in held.text
    assert took < 2.5  # not the 5 s timeout: no retry is due before it, so waiting cannot help
    assert (blocked.status_code, blocked.json()["error"]) == (503, "read_model_held_back")
    assert (later.status_code, later.json()["error"]) == (503, "read_model_held_back")
    assert unheld.status_code == 200
    assert any("secret-bob" in str(entry) for entry in logs)  # the reason is in the log, for the operator


def test_a_checkout_retried_with_its_idempotency_key_places_one_order(server: tuple[httpx.Client, Shop]) -> None:
    client, _shop = server
    ids = setup_shop(client)
    order = {"customer_id": ids["customer"], "items": [{"product_id": ids["product"], "quantity": 2}]}
    headers = {**as_customer(ids["customer"]), "Idempotency-Key": '"5b0c1f3e-checkout"'}
    first, again = (client.post("/orders", json=order, headers=headers) for _ in range(2))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    token = again.headers["x-consistency-token"]
    assert token == first.headers["x-consistency-token"]
    orders = client.get(f"/customers/{ids['customer']}/orders",
                        headers={**as_customer(ids["customer"]), "X-Consistent-With": token})
    assert [o["order_id"] for o in orders.json()] == [first.json()["order_id"]]
    reused = client.post("/orders", json={**order, "items": [{"product_id": ids["product"], "quantity": 1}]},
                         headers=headers)
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    inventory = client.get(f"/products/{ids['product']}/inventory", headers={"X-Consistent-With": token}).json()
    assert inventory["reserved"] == 2


def test_a_payment_over_http_ships_the_order_once(server: tuple[httpx.Client, Shop]) -> None:
    client, shop = server
    ids = setup_shop(client)
    buyer = as_customer(ids["customer"])
    order_id = client.post("/orders", json={"customer_id": ids["customer"],
                                            "items": [{"product_id": ids["product"], "quantity": 2}]},
                           headers=buyer).json()["order_id"]
    paying = {**buyer, "Idempotency-Key": "gateway-1"}
    first = client.post(f"/orders/{order_id}/payments", json={"amount": "50.00"}, headers=paying)
    again = client.post(f"/orders/{order_id}/payments", json={"amount": "50.00"}, headers=paying)
    assert (first.status_code, again.status_code) == (204, 204)
    assert again.headers["x-consistency-token"] == first.headers["x-consistency-token"]
    wrong = client.post(f"/orders/{order_id}/payments", json={"amount": "5.00"}, headers=buyer)
    assert (wrong.status_code, wrong.json()["error"]) == (409, "rule_violation")
    deadline = time.monotonic() + 10
    while shop.engine.processes.instance("fulfilment", order_id) is not None:  # the runner takes the step
        assert time.monotonic() < deadline, "the fulfilment did not ship the paid order"
        time.sleep(0.01)
    token = str(shop.storage.head())
    details = client.get(f"/orders/{order_id}", headers={**buyer, "X-Consistent-With": token}).json()
    assert details["status"] == "shipped"
    paid = [stored for stored in shop.storage.events() if stored.type_name == "shop.OrderPaid"]
    assert len(paid) == 1


def test_an_order_streams_its_status_as_it_changes_to_its_customer_only(server: tuple[httpx.Client, Shop]) -> None:
    from tests.http.test_sse import Events

    client, shop = server
    ids = setup_shop(client)
    buyer = as_customer(ids["customer"])
    placed = client.post("/orders", headers=buyer, json={
        "customer_id": ids["customer"], "items": [{"product_id": ids["product"], "quantity": 1}]})
    order = placed.json()["order_id"]
    stranger = client.get(f"/orders/{order}/live", headers=as_customer("cus-someone-else"))
    assert stranger.status_code == client.get(f"/orders/{order}", headers=as_customer("cus-someone-else")).status_code
    assert stranger.status_code in (403, 404)  # refused before any stream starts, as the plain read is
    events = Events(client, f"/orders/{order}/live", headers={**buyer, "X-Consistent-With": placed.headers[
        "X-Consistency-Token"]})
    try:
        first = events.next_event()
        assert first is not None
        assert first["event"] == "order"
        assert '"status":"placed"' in first["data"]
        assert client.post(f"/orders/{order}/payments", headers=buyer, json={"amount": "25.00"}).status_code == 204
        statuses: list[str] = []
        while not statuses or statuses[-1] != "shipped":  # paid confirms it; the fulfilment then ships it
            changed = events.next_event()
            assert changed is not None
            statuses.append(changed["data"].split('"status":"')[1].split('"')[0])
        assert statuses[-1] == "shipped"
    finally:
        events.close()
    _until_no_subscription(shop)


def _until_no_subscription(shop: Shop) -> None:
    deadline = time.monotonic() + 10
    while shop.engine.live.watching:
        assert time.monotonic() < deadline, "a subscription outlived its stream"
        time.sleep(0.01)


def test_the_shop_answers_its_probes_without_credentials(server: tuple[httpx.Client, Shop]) -> None:
    client, _shop = server
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert set(ready.json()["projections"]) == {"order_details", "customer_orders", "catalog", "search", "inventory",
                                                 "dashboard"}
