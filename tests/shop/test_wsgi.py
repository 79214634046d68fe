"""The sync embedding: a plain WSGI app on the sync mediator, driven by real HTTP requests."""

import threading
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest

from adapters.shop_app import Shop, build_shop
from adapters.shop_wsgi import wsgi_app

from .test_shop import stocked
from .tokens import KEY, as_customer


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[httpx.Client, Shop]]:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    shop.engine.start()
    app = wsgi_app(shop.mediator, head=shop.storage.head, jwt_key=KEY)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=10) as http:
            yield http, shop
    finally:
        server.shutdown()
        server.server_close()
        shop.close()


def test_a_sync_service_places_an_order_and_reads_it_back(client: tuple[httpx.Client, Shop]) -> None:
    http, shop = client
    customer, _lamps, desk, _floor = stocked(shop)
    placed = http.post("/orders", json={"customer_id": customer, "items": [{"product_id": desk, "quantity": 2}]},
                       headers=as_customer(customer))
    assert placed.status_code == 201
    token = placed.headers["x-consistency-token"]
    details = http.get(f"/orders/{placed.json()['order_id']}",
                       headers={"X-Consistent-With": token, **as_customer(customer)})
    assert details.status_code == 200
    assert details.json()["total"] == "50.00"


def test_the_sync_service_maps_errors(client: tuple[httpx.Client, Shop]) -> None:
    http, shop = client
    customer, _lamps, desk, _floor = stocked(shop)
    assert http.get("/orders/missing").status_code == 404
    assert http.post("/orders", content=b"nonsense").status_code == 400
    other = http.post("/orders", json={"customer_id": customer, "items": [{"product_id": desk, "quantity": 1}]},
                      headers=as_customer("someone-else"))
    assert (other.status_code, other.json()["error"]) == (403, "forbidden")
    too_many = http.post("/orders", json={"customer_id": customer, "items": [{"product_id": desk, "quantity": 99}]},
                         headers=as_customer(customer))
    assert (too_many.status_code, too_many.json()["error"]) == (409, "rule_violation")


def test_the_sync_service_refuses_odd_quantities_and_tokens(client: tuple[httpx.Client, Shop]) -> None:
    http, shop = client
    customer, _lamps, desk, _floor = stocked(shop)
    who = as_customer(customer)
    for quantity in ("1e400", "1.9", "true", '"2"'):
        body = f'{{"customer_id": "{customer}", "items": [{{"product_id": "{desk}", "quantity": {quantity}}}]}}'
        assert http.post("/orders", content=body.encode(), headers=who).status_code == 400, quantity
    nested = b"[" * 5000 + b"]" * 5000
    assert http.post("/orders", content=nested, headers=who).status_code == 400
    assert http.get("/orders/x", headers={"X-Consistent-With": "nope"}).status_code == 400
    beyond = http.get("/orders/x", headers={"X-Consistent-With": str(shop.storage.head() + 1)})
    assert (beyond.status_code, beyond.json()["error"]) == (400, "bad_request")


def test_a_checkout_retried_with_its_idempotency_key_places_one_order(client: tuple[httpx.Client, Shop]) -> None:
    http, shop = client
    customer, _lamps, desk, _floor = stocked(shop)
    order = {"customer_id": customer, "items": [{"product_id": desk, "quantity": 1}]}
    headers = {**as_customer(customer), "Idempotency-Key": "checkout-1"}
    first, again = (http.post("/orders", json=order, headers=headers) for _ in range(2))
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["x-consistency-token"] == first.headers["x-consistency-token"]
    other = http.post("/orders", json={**order, "items": [{"product_id": desk, "quantity": 2}]}, headers=headers)
    assert (other.status_code, other.json()["error"]) == (422, "idempotency_key_reused")
    assert http.post("/orders", json=order, headers={**headers, "Idempotency-Key": ""}).status_code == 400
