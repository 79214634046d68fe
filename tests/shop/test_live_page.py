"""The staff's live dashboard page in a real browser (headless Chromium): orders placed through the API show up on
the page by themselves, with the figures ``GET /dashboard`` answers; a screenshot is kept as a test artefact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from adapters.shop_http import asgi
from tests.browser import ARTEFACTS, browser
from tests.http.servers import serving

from .backends import shop_on
from .test_shop import stocked
from .tokens import ADMIN, KEY, as_customer

FIGURES = """(() => {
  const text = (id) => document.getElementById(id).textContent;
  return {
    state: document.getElementById("status").dataset.state,
    orders: text("orders"), units: text("units"), revenue: text("revenue"), token: text("token"),
    categories: [...document.querySelectorAll("#categories tr")].map(
      (tr) => [...tr.children].map((td) => td.textContent)),
  };
})()"""


def expected(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The page's figures for a dashboard as ``GET /dashboard`` answers it."""
    return {"orders": str(dashboard["orders"]), "units": str(dashboard["units"]), "revenue": dashboard["revenue"],
            "categories": [[c["category_name"], str(c["orders"]), str(c["units"]), c["revenue"]]
                           for c in dashboard["categories"]]}


def shown(page: Any) -> dict[str, Any]:
    figures = page.evaluate(FIGURES)
    return {key: figures[key] for key in ("orders", "units", "revenue", "categories")}


def test_the_staff_dashboard_updates_itself_as_orders_come_in(tmp_path: Path) -> None:
    with shop_on("sqlite", tmp_path, logging=False) as shop:
        customer, _lamps, desk, floor = stocked(shop)
        shop.engine.start()
        with serving(asgi(shop, jwt_key=KEY)) as client, browser(tmp_path) as page:
            bearer = ADMIN["Authorization"].removeprefix("Bearer ")
            page.go(f"{str(client.base_url).rstrip('/')}/staff#bearer={bearer}")
            page.wait_for("document.getElementById('status').dataset.state === 'live'")
            page.wait_for("document.getElementById('orders').textContent === '0'")
            buyer = as_customer(customer)
            for number, (product, quantity) in enumerate([(desk, 2), (floor, 1), (desk, 3)], start=1):
                placed = client.post("/orders", headers=buyer, json={
                    "customer_id": customer, "items": [{"product_id": product, "quantity": quantity}]})
                assert placed.status_code == 201, placed.text
                token = placed.headers["X-Consistency-Token"]
                dashboard = client.get("/dashboard", headers={**ADMIN, "X-Consistent-With": token})
                assert dashboard.status_code == 200
                want = expected(dashboard.json())
                assert want["orders"] == str(number)
                page.wait_for(f"(() => {{ const f = {FIGURES}; return JSON.stringify("
                              "[f.orders, f.units, f.revenue, f.categories]) === "
                              f"{_js([want['orders'], want['units'], want['revenue'], want['categories']])}; }})()")
                assert shown(page) == want
                assert int(page.evaluate(FIGURES)["token"]) >= int(token)  # the page says how fresh it is
            assert shown(page) == {"orders": "3", "units": "6", "revenue": "205.00",
                                   "categories": [["Lamps", "3", "6", "205.00"]]}
            page.screenshot(ARTEFACTS / "live-dashboard.png")
            page.screenshot(tmp_path / "live-dashboard.png")
        assert shop.engine.live.watching == 0  # the browser went: its subscription ended
    assert (ARTEFACTS / "live-dashboard.png").stat().st_size > 10_000


def test_the_page_without_credentials_says_so(tmp_path: Path) -> None:
    with shop_on("sqlite", tmp_path, logging=False) as shop:
        shop.engine.start()
        with serving(asgi(shop, jwt_key=KEY)) as client, browser(tmp_path) as page:
            assert client.get("/dashboard/live").status_code == 401
            assert httpx.get(f"{str(client.base_url).rstrip('/')}/staff").status_code == 200
            page.go(f"{str(client.base_url).rstrip('/')}/staff")
            status = page.wait_for("document.getElementById('status').dataset.state === 'error' && "
                                   "document.getElementById('status').textContent")
            assert "401" in status


def _js(value: Any) -> str:
    import json

    return json.dumps(json.dumps(value, separators=(",", ":")))
