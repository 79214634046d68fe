"""Fuzzing every route with real HTTP requests: bad input gets a 4xx with an error body, never a 500, never a
partial write. ``MEDIATOR_FUZZ_EXAMPLES`` sets the cases per route (CI runs the default)."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.shop_app import Shop, build_shop
from adapters.shop_http import asgi

from .tokens import ADMIN, KEY, as_customer

EXAMPLES = int(os.environ.get("MEDIATOR_FUZZ_EXAMPLES", "150"))

ODD = ["", "0", "-1", "25.00", "1e400", "NaN", "' OR 1=1 --", "\x00", "ü" * 300]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30), st.sampled_from(ODD))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Shop, dict[str, str]]]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    shop = build_shop(folder / "shop.db", logging=False)
    shop.engine.start()  # as a service runs it: a fuzzed token the shop did issue is soon reached
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(asgi(shop, jwt_key=KEY), host="127.0.0.1", port=port, log_level="critical",
                                            lifespan="off"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.01)
    admin = ADMIN
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        customer = client.post("/customers", json={"name": "Ada", "email": "a@b.c"}).json()["customer_id"]
        category = client.post("/categories", json={"name": "Lamps"}, headers=admin).json()["category_id"]
        product = client.post("/products", json={"category_id": category, "name": "Lamp", "price": "5"},
                              headers=admin).json()["product_id"]
        ids = {"customer": customer, "category": category, "product": product}
        try:
            yield client, shop, ids
        finally:
            running.should_exit = True
            thread.join(10)
            shop.close()


ROUTES = [
    ("POST", "/customers"), ("POST", "/categories"), ("POST", "/products"), ("PUT", "/products/{product}/price"),
    ("POST", "/products/{product}/discontinue"), ("POST", "/products/{product}/stock"), ("POST", "/orders"),
    ("POST", "/orders/{any}/confirm"), ("POST", "/orders/{any}/ship"), ("POST", "/orders/{any}/cancel"),
    ("GET", "/orders/{any}"), ("GET", "/customers/{customer}/orders"), ("GET", "/categories/{any}/products"),
    ("GET", "/products/{any}/inventory"), ("GET", "/search"), ("GET", "/dashboard"),
]


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict)
        assert body["error"]
        assert body["detail"]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_fuzzed_requests_never_fail_the_server(method: str, path: str,
                                               server: tuple[httpx.Client, Shop, dict[str, str]]) -> None:
    client, shop, ids = server

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=json_values, segment=st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s and s != ".."),
           params=st.dictionaries(st.sampled_from(["q", "page", "page_size", "limit", "since"]), st.text(max_size=8)),
           who=st.sampled_from([{}, ADMIN, as_customer(ids["customer"]), as_customer("x"), {"X-Admin": "1"},
                                 {"Authorization": "Bearer not-a-token"}, as_customer("x", key="k" * 32)]),
           token=st.one_of(st.none(), st.integers(0, 10**6).map(str),  # issued or not (beyond the last write)
                           st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255), max_size=25)),
           raw=st.booleans())
    def run(body: Any, segment: str, params: dict[str, str], who: dict[str, str], raw: bool,
            token: str | None) -> None:
        url = path.format(product=ids["product"], customer=ids["customer"], any=quote(segment, safe=""))
        headers = {k.encode(): v.encode() for k, v in who.items()}
        if token is not None:  # any byte a header can carry: httpx needs bytes for those beyond ASCII
            headers[b"X-Consistent-With"] = token.encode("latin-1")
        head = shop.storage.head()
        if method == "GET":
            response = client.request(method, url, params=params, headers=headers)
        elif raw:
            response = client.request(method, url, content=repr(body).encode(),
                                      headers={**headers, b"content-type": b"application/json"})
        else:
            response = client.request(method, url, json=body, headers=headers)
        check(response)
        if response.status_code >= 400:
            assert shop.storage.head() == head, "a refused request wrote something"

    run()
