"""Who is acting, over HTTP: signed bearer tokens verified by both of the shop's apps (FastAPI and WSGI), each
refusal with its status, and the header mode that stays behind a development flag."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import httpx
import jwt
import pytest
from structlog.testing import capture_logs

from adapters.shop_app import Shop, build_shop
from adapters.shop_http import asgi
from adapters.shop_web import IdentityConfigError, identity, issue_token
from adapters.shop_wsgi import wsgi_app
from domain.messages import GetDailySales, GetSalesDashboard, OrderItem, PlaceOrder
from handlers.authorization import ANONYMOUS, Forbidden, Principal, SignInRequired
from tests.http.servers import serving, wsgi_serving

from .test_shop import stocked
from .tokens import ADMIN, KEY, as_customer, as_staff

OTHER_KEY = "not-the-shop-key-but-long-enough-0123456789"


@attrs.frozen
class Served:
    client: httpx.Client
    shop: Shop
    app: str
    customer: str
    desk: str
    """A desk lamp, 10 in stock."""

    def order(self, customer: str | None = None) -> dict[str, object]:
        """The body of an order of one desk lamp for ``customer`` (the stocked customer by default)."""
        return {"customer_id": customer or self.customer, "items": [{"product_id": self.desk, "quantity": 1}]}


@pytest.fixture(params=["fastapi", "wsgi"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """The shop, stocked, served by one of its two apps."""
    shop = build_shop(tmp_path / "shop.db", logging=False)
    try:
        customer, _lamps, desk, _floor = stocked(shop)
        app = (asgi(shop, jwt_key=KEY) if request.param == "fastapi"
               else wsgi_app(shop.mediator, head=shop.storage.head, jwt_key=KEY))
        with (serving if request.param == "fastapi" else wsgi_serving)(app) as client:
            yield Served(client, shop, request.param, customer, desk)
    finally:
        shop.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_customer_with_a_valid_token_places_their_own_order(served: Served) -> None:
    client, customer = served.client, served.customer
    placed = client.post("/orders", json=served.order(), headers=as_customer(customer))
    assert placed.status_code == 201, placed.text


def test_no_token_where_identity_is_needed_is_a_401_with_a_bare_challenge(
        served: Served) -> None:
    client, shop = served.client, served.shop
    head = shop.storage.head()
    for answer in (client.post("/orders", json=served.order()), client.get("/dashboard")):
        assert (answer.status_code, answer.json()["error"]) == (401, "unauthenticated"), answer.text
        assert answer.headers["www-authenticate"] == "Bearer"  # RFC 6750: no error code without a credential
    assert shop.storage.head() == head


@pytest.mark.parametrize("token", [
    pytest.param(lambda c: issue_token(OTHER_KEY, c), id="forged: signed with another key"),
    pytest.param(lambda c: issue_token(KEY, c, expires_in=dt.timedelta(seconds=-5)), id="expired"),
    pytest.param(lambda c: jwt.encode({"sub": c}, KEY, algorithm="HS256"), id="no expiry"),
    pytest.param(lambda c: jwt.encode({"sub": c, "exp": 4102444800}, "", algorithm="none"), id="unsigned"),
    pytest.param(lambda c: jwt.encode({"sub": c, "exp": 4102444800}, KEY * 2, algorithm="HS512"), id="other algorithm"),
    pytest.param(lambda c: "not.a.token", id="malformed"),
    pytest.param(lambda c: issue_token(KEY, c)[:-4] + "AAAA", id="tampered signature"),
])
def test_a_token_that_does_not_verify_is_refused_with_401(served: Served, token: Callable[[str], str]) -> None:
    client, shop, customer = served.client, served.shop, served.customer
    head = shop.storage.head()
    answer = client.post("/orders", json=served.order(), headers=bearer(token(customer)))
    assert (answer.status_code, answer.json()["error"]) == (401, "unauthenticated"), answer.text
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert shop.storage.head() == head


def test_a_credential_that_is_not_a_bearer_token_is_refused_with_401(served: Served) -> None:
    client, customer = served.client, served.customer
    for value in ("Basic YWRhOnNlY3JldA==", "Bearer", f"Token {issue_token(KEY, customer)}", customer):
        answer = client.post("/orders", json=served.order(), headers={"Authorization": value})
        assert answer.status_code == 401, value


def test_a_customer_acting_as_another_customer_is_refused_with_403(served: Served) -> None:
    client, shop = served.client, served.shop
    head = shop.storage.head()
    answer = client.post("/orders", json=served.order(), headers=as_customer("someone-else"))
    assert (answer.status_code, answer.json()["error"]) == (403, "forbidden")
    assert shop.storage.head() == head


def test_a_customer_acting_as_staff_is_refused_with_403(served: Served) -> None:
    client, customer = served.client, served.customer
    # A customer's token, and one claiming staff in ways that do not count (a string, another role).
    not_staff = [as_customer(customer),
                 bearer(jwt.encode({"sub": customer, "exp": 4102444800, "staff": "true"}, KEY, algorithm="HS256")),
                 bearer(jwt.encode({"sub": customer, "exp": 4102444800, "role": "admin"}, KEY, algorithm="HS256")),
                 {**as_customer(customer), "X-Admin": "1"}]  # the development header means nothing here
    for headers in not_staff:
        answer = client.get("/dashboard", headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (403, "forbidden"), headers
        if served.app == "fastapi":
            answer = client.post("/categories", json={"name": "Mine"}, headers=headers)
            assert answer.status_code == 403
            assert client.get("/sales/daily", headers=headers).status_code == 403


def test_staff_read_the_dashboard(served: Served) -> None:
    client = served.client
    for headers in (ADMIN, bearer(jwt.encode({"sub": "s2", "exp": 4102444800, "role": "staff"}, KEY,
                                             algorithm="HS256"))):
        answer = client.get("/dashboard", headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json()["orders"] == 0


def test_a_duplicated_authorization_header_counts_with_its_first_value(
        served: Served) -> None:
    client = served.client
    forged = issue_token(OTHER_KEY, "staff-1", staff=True)
    valid = as_staff()["Authorization"]
    assert client.get("/dashboard", headers=[("Authorization", valid), ("Authorization", f"Bearer {forged}")]
                      ).status_code == 200
    assert client.get("/dashboard", headers=[("Authorization", f"Bearer {forged}"), ("Authorization", valid)]
                      ).status_code == 401


def test_trusting_headers_takes_the_development_flag_and_warns(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    try:
        customer, _lamps, desk, _floor = stocked(shop)
        monkeypatch.setenv("SHOP_TRUST_HEADERS", "1")
        with capture_logs() as logs:
            apps = [asgi(shop), wsgi_app(shop.mediator)]
        assert [(e["event"], e["log_level"]) for e in logs] == [
            ("identity taken from headers: development only", "warning")] * 2
        for app, serve in zip(apps, (serving, wsgi_serving), strict=True):
            with serve(app) as client:
                body = {"customer_id": customer, "items": [{"product_id": desk, "quantity": 1}]}
                mine = client.post("/orders", json=body, headers={"X-Customer-Id": customer})
                assert mine.status_code == 201, mine.text
                assert client.get("/dashboard", headers={"X-Admin": "1"}).status_code == 200
                # Duplicated, the first value counts (WSGI servers join them: the text before the first comma).
                duplicated = [("X-Customer-Id", "someone-else"), ("X-Customer-Id", customer)]
                assert client.post("/orders", json=body, headers=duplicated).status_code == 403
    finally:
        shop.close()


def test_the_apps_refuse_to_start_without_a_way_to_tell_who_is_acting(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOP_JWT_KEY", raising=False)
    monkeypatch.delenv("SHOP_TRUST_HEADERS", raising=False)
    shop = build_shop(None, logging=False)
    try:
        with pytest.raises(IdentityConfigError, match="SHOP_JWT_KEY"):
            asgi(shop)
        with pytest.raises(IdentityConfigError, match="SHOP_JWT_KEY"):
            wsgi_app(shop.mediator)
        with pytest.raises(IdentityConfigError, match="at least 32"):
            asgi(shop, jwt_key="short")
        monkeypatch.setenv("SHOP_JWT_KEY", KEY)
        assert asgi(shop) is not None  # the key from the environment
    finally:
        shop.close()


def test_the_token_names_the_customer_or_staff() -> None:
    resolve = identity(jwt_key=KEY, environ={})
    assert resolve({}) == ANONYMOUS
    assert resolve({"authorization": as_customer("c-7")["Authorization"]}) == Principal(customer_id="c-7")
    assert resolve({"authorization": ADMIN["Authorization"]}) == Principal(admin=True)
    assert resolve({"authorization": "bearer " + issue_token(KEY, "c-8")}) == Principal(customer_id="c-8")


def test_sales_figures_are_for_staff_only(tmp_path: Path) -> None:
    shop = build_shop(tmp_path / "shop.db", logging=False)
    try:
        customer, _lamps, desk, _floor = stocked(shop)
        shop.mediator.send(PlaceOrder(customer_id=customer, items=(OrderItem(product_id=desk, quantity=1),)))
        for query in (GetSalesDashboard(), GetDailySales()):
            with shop.mediator.scope(principal=Principal(customer_id=customer)), pytest.raises(Forbidden) as denied:
                shop.mediator.ask(query)
            assert not isinstance(denied.value, SignInRequired)
            with shop.mediator.scope(principal=ANONYMOUS), pytest.raises(SignInRequired):
                shop.mediator.ask(query)
            with shop.mediator.scope(principal=Principal(admin=True)):
                shop.mediator.ask(query)
            shop.mediator.ask(query)  # no principal: trusted in-process code
    finally:
        shop.close()
