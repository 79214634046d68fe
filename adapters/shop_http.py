"""The reference shop over HTTP (FastAPI): every command and query as a route.

Run it with ``SHOP_JWT_KEY=... uvicorn adapters.shop_http:app`` (``SHOP_DB`` names the SQLite file, ``shop.db``
by default; :func:`adapters.shop_app.shop_from_env` says the rest). Who is acting comes from a signed bearer token,
``Authorization: Bearer <JWT>`` verified with ``SHOP_JWT_KEY``: its ``sub`` the customer, ``"staff": true`` for
staff (:mod:`adapters.shop_web`). ``SHOP_TRUST_HEADERS=1`` takes identity from ``X-Customer-Id`` and
``X-Admin: 1`` headers instead, which anyone can send: development only.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints, field_validator

from adapters.shop_app import Shop, shop_from_env
from adapters.shop_web import STATUS_OF, data, identity
from domain.errors import NotFound
from domain.messages import (
    CancelOrder,
    ChangePrice,
    ConfirmOrder,
    CreateCategory,
    CreateProduct,
    DiscontinueProduct,
    GetCustomerOrders,
    GetDailySales,
    GetOrderDetails,
    GetProductInventory,
    GetSalesDashboard,
    ListProductsByCategory,
    OrderItem,
    PayForOrder,
    PlaceOrder,
    RegisterCustomer,
    SearchProducts,
    ShipOrder,
    UpdateProductStock,
)
from mediator import AsyncMediator
from mediator.fastapi import (
    IdempotencyKey,
    Mediated,
    MediatorMiddleware,
    event_stream,
    health_routes,
    install_error_handlers,
)
from mediator.http import MAX_BODY

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)]
Money = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]


class NewCustomer(BaseModel):
    name: Text
    email: Email


class NewCategory(BaseModel):
    name: Text


class NewProduct(BaseModel):
    category_id: Text
    name: Text
    description: Annotated[str, Field(max_length=2000)] = ""
    price: Money


class NewPrice(BaseModel):
    price: Money
    reason: Text
    expected_version: Annotated[int, Field(ge=1)] | None = None


class StockChange(BaseModel):
    delta: Annotated[int, Field(ge=-1_000_000, le=1_000_000)]

    @field_validator("delta")
    @classmethod
    def changes_something(cls, delta: int) -> int:
        if delta == 0:
            raise ValueError("a stock change must not be 0")
        return delta
    reason: Text
    expected_version: Annotated[int, Field(ge=0)] | None = None


class Item(BaseModel):
    product_id: Text
    quantity: Annotated[int, Field(ge=1, le=1000)]


class NewOrder(BaseModel):
    customer_id: Text
    items: Annotated[list[Item], Field(min_length=1, max_length=100)]
    shipping_address: Annotated[str, Field(max_length=500)] = ""


class Payment(BaseModel):
    amount: Money


class Transition(BaseModel):
    reason: Text = "no reason given"
    expected_version: Annotated[int, Field(ge=1)] | None = None


STAFF_PAGE = (Path(__file__).parent / "staff.html").read_text(encoding="utf-8")
"""The staff's live dashboard: one HTML file, its script inline (no build step)."""


def create_app(shop: Shop, *, consistency_timeout: float = 5.0, jwt_key: str | None = None,
               trust_headers: bool | None = None, max_body: int | None = MAX_BODY) -> FastAPI:
    """The shop's FastAPI application around an already built ``Shop``.

    ``consistency_timeout`` is how long a read sent with ``X-Consistent-With`` waits before answering 503.
    ``jwt_key`` (else ``SHOP_JWT_KEY``) verifies the bearer tokens; ``trust_headers`` (else
    ``SHOP_TRUST_HEADERS=1``) takes identity from headers instead, for development only
    (:func:`adapters.shop_web.identity`). ``max_body`` is the largest request body, in bytes.

    Raises:
        adapters.shop_web.IdentityConfigError: with neither a key nor the development flag.
    """
    principal = identity(jwt_key=jwt_key, trust_headers=trust_headers)
    mediator: AsyncMediator = shop.registry.build_async()
    app = FastAPI(title="Reference shop")  # routes get the mediator from the middleware (`Mediated`)
    install_error_handlers(app, STATUS_OF)

    def created(key: str, value: str) -> JSONResponse:
        return JSONResponse({key: value}, status_code=201)

    @app.post("/customers", status_code=201)
    async def register_customer(mediator: Mediated, body: NewCustomer) -> JSONResponse:
        return created("customer_id", await mediator.send(RegisterCustomer(name=body.name, email=body.email)))

    @app.post("/categories", status_code=201)
    async def create_category(mediator: Mediated, body: NewCategory) -> JSONResponse:
        return created("category_id", await mediator.send(CreateCategory(name=body.name)))

    @app.post("/products", status_code=201)
    async def create_product(mediator: Mediated, body: NewProduct) -> JSONResponse:
        return created("product_id", await mediator.send(CreateProduct(
            category_id=body.category_id, name=body.name, description=body.description, price=body.price)))

    @app.put("/products/{product_id}/price", status_code=204)
    async def change_price(mediator: Mediated, product_id: str, body: NewPrice) -> None:
        await mediator.send(ChangePrice(product_id=product_id, new_price=body.price, reason=body.reason,
                                        expected_version=body.expected_version))

    @app.post("/products/{product_id}/discontinue", status_code=204)
    async def discontinue(mediator: Mediated, product_id: str) -> None:
        await mediator.send(DiscontinueProduct(product_id=product_id))

    @app.post("/products/{product_id}/stock", status_code=204)
    async def update_stock(mediator: Mediated, product_id: str, body: StockChange) -> None:
        await mediator.send(UpdateProductStock(product_id=product_id, delta=body.delta, reason=body.reason,
                                               expected_version=body.expected_version))

    @app.post("/orders", status_code=201)
    async def place_order(mediator: Mediated, body: NewOrder, key: IdempotencyKey) -> JSONResponse:
        items = tuple(OrderItem(product_id=i.product_id, quantity=i.quantity) for i in body.items)
        return created("order_id", await mediator.send(PlaceOrder(
            customer_id=body.customer_id, items=items, shipping_address=body.shipping_address, idempotency_key=key)))

    @app.post("/orders/{order_id}/payments", status_code=204)
    async def pay(mediator: Mediated, order_id: str, body: Payment, key: IdempotencyKey) -> None:
        await mediator.send(PayForOrder(order_id=order_id, amount=body.amount, idempotency_key=key))

    @app.post("/orders/{order_id}/confirm", status_code=204)
    async def confirm(mediator: Mediated, order_id: str, body: Annotated[Transition | None, Body()] = None) -> None:
        await mediator.send(ConfirmOrder(order_id=order_id, expected_version=body.expected_version if body else None))

    @app.post("/orders/{order_id}/ship", status_code=204)
    async def ship(mediator: Mediated, order_id: str, body: Annotated[Transition | None, Body()] = None) -> None:
        await mediator.send(ShipOrder(order_id=order_id, expected_version=body.expected_version if body else None))

    @app.post("/orders/{order_id}/cancel", status_code=204)
    async def cancel(mediator: Mediated, order_id: str, body: Transition) -> None:
        await mediator.send(CancelOrder(order_id=order_id, reason=body.reason, expected_version=body.expected_version))

    @app.get("/orders/{order_id}")
    async def order_details(mediator: Mediated, order_id: str) -> Any:
        details = await mediator.ask(GetOrderDetails(order_id=order_id))
        if details is None:
            raise NotFound("order", order_id)
        return data(details)

    @app.get("/customers/{customer_id}/orders")
    async def customer_orders(mediator: Mediated, customer_id: str) -> Any:
        return data(await mediator.ask(GetCustomerOrders(customer_id=customer_id)))

    @app.get("/categories/{category_id}/products")
    async def products(mediator: Mediated, category_id: str, page: Annotated[int, Query(ge=1, le=10_000)] = 1,
                       page_size: Annotated[int, Query(ge=1, le=100)] = 20) -> Any:
        return data(await mediator.ask(ListProductsByCategory(category_id=category_id, page=page,
                                                              page_size=page_size)))

    @app.get("/products/{product_id}/inventory")
    async def inventory(mediator: Mediated, product_id: str) -> Any:
        found = await mediator.ask(GetProductInventory(product_id=product_id))
        if found is None:
            raise NotFound("product", product_id)
        return data(found)

    @app.get("/search")
    async def search(mediator: Mediated, q: Annotated[str, Query(min_length=1, max_length=200)],
                     limit: Annotated[int, Query(ge=1, le=100)] = 20) -> Any:
        return data(await mediator.ask(SearchProducts(text=q, limit=limit)))

    @app.get("/dashboard")
    async def dashboard(mediator: Mediated, since: dt.date | None = None) -> Any:
        return data(await mediator.ask(GetSalesDashboard(since=since)))

    # The live routes stream until the client goes: they are left out of the OpenAPI schema, whose every
    # operation the schemathesis test calls and reads to the end.
    @app.get("/dashboard/live", include_in_schema=False)
    async def dashboard_live(mediator: Mediated, request: Request, since: dt.date | None = None) -> StreamingResponse:
        return await event_stream(mediator, GetSalesDashboard(since=since), request, event="dashboard", encode=data)

    @app.get("/orders/{order_id}/live", include_in_schema=False)
    async def order_live(mediator: Mediated, request: Request, order_id: str) -> StreamingResponse:
        query = GetOrderDetails(order_id=order_id)
        if await mediator.ask(query) is None:  # none, or not the caller's to see: 404, as GET /orders/{id}
            raise NotFound("order", order_id)
        return await event_stream(mediator, query, request, event="order", encode=data)

    @app.get("/staff", include_in_schema=False)
    async def staff_page() -> HTMLResponse:
        """The live sales dashboard for staff: it reads ``/dashboard/live`` (credentials in the fragment)."""
        return HTMLResponse(STAFF_PAGE, headers={"Cache-Control": "no-cache"})

    @app.get("/sales/daily")
    async def daily_sales(mediator: Mediated, since: dt.date | None = None) -> Any:
        return data(await mediator.ask(GetDailySales(since=since)))

    health_routes(app, shop.engine)  # GET /health/live, /health/ready: the container's probes
    wrapped = MediatorMiddleware(app, mediator, principal, consistency_timeout=consistency_timeout,
                                 engine=shop.engine, max_body=max_body, status_of=STATUS_OF)
    app.state.asgi = wrapped
    return app


def asgi(shop: Shop, *, consistency_timeout: float = 5.0, jwt_key: str | None = None,
         trust_headers: bool | None = None, max_body: int | None = MAX_BODY) -> Any:
    """The full ASGI application: the FastAPI routes inside the mediator middleware (options as
    :func:`create_app`)."""
    app = create_app(shop, consistency_timeout=consistency_timeout, jwt_key=jwt_key, trust_headers=trust_headers,
                     max_body=max_body)
    return app.state.asgi


def _default() -> Any:  # for `uvicorn adapters.shop_http:app`, configured as adapters.shop_app.shop_from_env says
    shop = shop_from_env()
    try:
        app = asgi(shop)  # refuses to start without SHOP_JWT_KEY (or SHOP_TRUST_HEADERS=1)
    except BaseException:
        shop.close()
        raise
    shop.engine.start()  # runs the background-delivered projections this process holds, and helps with rebuilds
    return app


def __getattr__(name: str) -> Any:  # `app` is built on first access, so importing this module builds nothing
    if name == "app":
        return _default()
    raise AttributeError(name)
