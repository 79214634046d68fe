"""The shop on PostgreSQL where it differs from SQLite: commands really run at the same time.

Each race opens two transactions on two connections at once; whatever order the statements then run in, of
two writers of one row exactly one succeeds and the other gets the ``ConcurrencyConflict`` that SQLite gives.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from adapters.shop_app import Shop
from domain.errors import ConcurrencyConflict
from domain.messages import (
    ChangePrice,
    CreateProduct,
    GetCustomerOrders,
    GetDailySales,
    GetOrderDetails,
    GetProductInventory,
    GetSalesDashboard,
    ListProductsByCategory,
    SalesDashboard,
    SearchProducts,
    UpdateProductStock,
)
from domain.model import Stock
from handlers.ports import WriteModel
from mediator import ValidationError
from mediator.readmodels import WriteSession
from mediator.testing import settle

from .backends import postgres_write_storage, shop_on
from .test_shop import stocked
from .test_write_model import KINDS, Kind

if TYPE_CHECKING:
    from mediator.readmodels.postgres import PostgresStorage

WAIT = 10.0
"""Seconds a test waits for the other thread before it calls the test hung."""


@pytest.fixture
def storage() -> Iterator[PostgresStorage]:
    """A storage with the write tables, a customer ``c1`` and a category ``k1`` committed."""
    storage = postgres_write_storage()
    from adapters.shop_postgres import PostgresWriteModel

    session = storage.begin()
    PostgresWriteModel().add_customer(session.handle, "c1", "Ada", "ada@example.com")
    PostgresWriteModel().add_category(session.handle, "k1", "Lamps")
    session.commit()
    yield storage
    storage.close()
    storage.drop_schema()


@pytest.fixture
def port() -> WriteModel:
    from adapters.shop_postgres import PostgresWriteModel

    return PostgresWriteModel()


def committed(storage: PostgresStorage, write: Callable[[Any], object]) -> None:
    session = storage.begin()
    write(session.handle)
    session.commit()


def loaded(storage: PostgresStorage, port: WriteModel, kind: Kind) -> Any:
    session = storage.begin()
    try:
        return kind.load(port, session.handle)
    finally:
        session.rollback()


@attrs.define
class Outcome:
    saved: Any = None
    conflict: ConcurrencyConflict | None = None


def attempt(session: WriteSession, save: Callable[[], object], outcome: Outcome, value: Any) -> None:
    """Run ``save`` in ``session`` and commit it, or roll it back on a conflict; say which in ``outcome``."""
    try:
        save()
    except ConcurrencyConflict as conflict:
        session.rollback()
        outcome.conflict = conflict
        return
    except BaseException:
        session.rollback()
        raise
    session.commit()
    outcome.saved = value


def in_threads(*bodies: Callable[[], None]) -> None:
    failures: list[BaseException] = []

    def run(body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not any(thread.is_alive() for thread in threads), "a racing transaction hung"
    if failures:
        raise failures[0]


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
@pytest.mark.parametrize("race", ["create", "update"])
def test_of_two_transactions_writing_one_row_at_once_exactly_one_wins(
        race: str, kind: Kind, storage: PostgresStorage, port: WriteModel) -> None:
    if race == "update":
        committed(storage, lambda tx: kind.save(port, tx, kind.make(), 0))
    both_read = threading.Barrier(2, timeout=WAIT)
    outcomes = [Outcome(), Outcome()]

    def writer(outcome: Outcome) -> None:
        session = storage.begin()
        if race == "create":
            mine, expected = kind.make(), 0  # both found nothing stored
        else:
            mine = kind.load(port, session.handle)
            expected = mine.version
            kind.change(mine)
        both_read.wait()  # both transactions are open and have read before either writes
        attempt(session, lambda: kind.save(port, session.handle, mine, expected), outcome, mine)

    in_threads(*(lambda o=o: writer(o) for o in outcomes))

    (won,) = [o for o in outcomes if o.saved is not None]
    (lost,) = [o.conflict for o in outcomes if o.conflict is not None]
    assert (lost.kind, lost.key, lost.expected, lost.actual) == (
        (kind.name, kind.key, 0, 1) if race == "create" else (kind.name, kind.key, 1, 2))
    assert loaded(storage, port, kind) == won.saved


@pytest.mark.parametrize("winner", ["commits", "rolls back"])
def test_a_writer_waits_for_the_transaction_holding_its_row_and_goes_by_how_that_ends(
        winner: str, storage: PostgresStorage, port: WriteModel) -> None:
    product = KINDS[0]
    committed(storage, lambda tx: product.save(port, tx, product.make(), 0))
    first, second = storage.begin(), storage.begin()
    theirs, mine = product.load(port, first.handle), product.load(port, second.handle)
    product.change(theirs)
    product.change(mine)
    product.save(port, first.handle, theirs, 1)  # holds the row until it ends
    outcome = Outcome()
    waiting = threading.Thread(target=attempt, args=(
        second, lambda: product.save(port, second.handle, mine, 1), outcome, mine))
    waiting.start()
    try:
        blocked_on_a_lock(storage, second)
    finally:
        if winner == "commits":
            first.commit()
        else:
            first.rollback()
        waiting.join(WAIT)
    assert not waiting.is_alive()
    if winner == "commits":
        assert outcome.conflict is not None
        assert (outcome.conflict.expected, outcome.conflict.actual) == (1, 2)
        assert loaded(storage, port, product) == theirs
    else:  # nothing was committed over version 1: no conflict
        assert outcome.conflict is None
        assert loaded(storage, port, product) == mine


def blocked_on_a_lock(storage: PostgresStorage, session: WriteSession) -> None:
    pid = session.handle.info.backend_pid
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        row = storage.read_connection().execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row is not None and row[0] == "Lock":
            return
        time.sleep(0.01)
    raise AssertionError("the second writer never waited for the first one's row lock")


def test_two_transactions_that_deadlock_on_two_rows_give_one_success_and_one_conflict(
        storage: PostgresStorage, port: WriteModel) -> None:
    import psycopg

    committed(storage, lambda tx: [port.save_stock(tx, Stock(p, on_hand=5, version=1), 0) for p in ("p1", "p2")])
    both_locked = threading.Barrier(2, timeout=WAIT)
    outcomes = [Outcome(), Outcome()]

    def writer(order: tuple[str, str], outcome: Outcome) -> None:
        session = storage.begin()
        stocks = [port.stock(session.handle, p) for p in order]
        for stock in stocks:
            stock.adjust(1, "delivery")

        def save() -> None:
            port.save_stock(session.handle, stocks[0], 1)
            both_locked.wait()  # each holds one row and now asks for the other's
            port.save_stock(session.handle, stocks[1], 1)

        attempt(session, save, outcome, order)

    in_threads(lambda: writer(("p1", "p2"), outcomes[0]), lambda: writer(("p2", "p1"), outcomes[1]))

    assert sorted(o.saved is not None for o in outcomes) == [False, True]
    (lost,) = [o.conflict for o in outcomes if o.conflict is not None]
    assert isinstance(lost.__cause__, psycopg.errors.DeadlockDetected)
    assert "deadlock" in str(lost)


# -- through the whole shop ---------------------------------------------------------------------------------


class BothRead:
    """Wraps a write-model read so that each of two threads' first read waits for the other's."""

    def __init__(self, read: Callable[..., Any]) -> None:
        self.read = read
        self.barrier = threading.Barrier(2, timeout=WAIT)
        self.seen = threading.local()

    def __call__(self, tx: Any, key: str) -> Any:
        found = self.read(tx, key)
        if not getattr(self.seen, "once", False):
            self.seen.once = True
            self.barrier.wait()
        return found


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Any]:
    with shop_on("postgres", tmp_path, logging=False, authorize=False) as built:
        yield built


def test_two_commands_naming_one_version_at_once_get_one_success_and_one_conflict(
        shop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    monkeypatch.setattr(shop.model, "product", BothRead(shop.model.product))
    results: list[object] = []

    def change(price: str) -> None:
        try:
            shop.mediator.send(ChangePrice(product_id=desk, new_price=Decimal(price), reason="race",
                                           expected_version=1))
            results.append(price)
        except ConcurrencyConflict as conflict:
            results.append(conflict)

    in_threads(lambda: change("30.00"), lambda: change("31.00"))
    monkeypatch.undo()

    (won,) = [r for r in results if isinstance(r, str)]
    (lost,) = [r for r in results if isinstance(r, ConcurrencyConflict)]
    assert (lost.expected, lost.actual) == (1, 2)
    product = shop.inspect(lambda model, tx: model.product(tx, desk))
    assert (product.price, product.version) == (Decimal(won), 2)


def test_two_commands_without_a_version_at_once_both_apply_one_after_a_retry(
        shop: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _customer, _lamps, desk, _floor = stocked(shop)
    monkeypatch.setattr(shop.model, "stock", BothRead(shop.model.stock))
    in_threads(*(lambda d=delta: shop.mediator.send(UpdateProductStock(product_id=desk, delta=d, reason="count"))
                 for delta in (3, 4)))
    monkeypatch.undo()
    stock = shop.inspect(lambda model, tx: model.stock(tx, desk))
    assert (stock.on_hand, stock.version) == (10 + 3 + 4, 3)
    settle(shop.engine)
    inventory = shop.mediator.ask(GetProductInventory(product_id=desk))
    assert inventory is not None
    assert (inventory.on_hand, inventory.version) == (17, 3)


# -- the read side -------------------------------------------------------------------------------------------


def test_queries_before_anything_is_projected_answer_empty_even_inside_a_transaction(
        storage: PostgresStorage) -> None:
    from adapters.shop_app import event_types
    from handlers.projections import all_projections
    from handlers.queries import ShopQueries
    from mediator.readmodels import ReadModels

    engine = ReadModels(storage, event_types())
    for projection in all_projections():
        engine.add(projection)  # never run: no tables
    queries = ShopQueries(engine)

    def empty() -> None:
        assert queries.order_details(GetOrderDetails(order_id="o1")) is None
        assert queries.customer_orders(GetCustomerOrders(customer_id="c1")) == ()
        page = queries.products_by_category(ListProductsByCategory(category_id="k1"))
        assert (page.items, page.total) == ((), 0)
        assert queries.product_inventory(GetProductInventory(product_id="p1")) is None
        assert queries.search(SearchProducts(text="lamp")) == ()
        assert queries.dashboard(GetSalesDashboard()) == SalesDashboard(
            since=None, orders=0, units=0, revenue=Decimal("0.00"), days=(), categories=())
        assert queries.dashboard(GetSalesDashboard(since=dt.date(2026, 1, 1))).days == ()
        assert queries.daily_sales(GetDailySales()) == ()

    empty()  # autocommit: each failed statement is gone with itself
    connection = storage.read_connection()
    connection.execute("BEGIN")
    try:
        empty()
        assert connection.execute("SELECT 1").fetchone() == (1,)  # the transaction was not aborted
    finally:
        connection.execute("ROLLBACK")


SEARCHES = ["lamp", "LAMP", "lam", "desk lamp", "lamp desk", "adjust-a", "adjust-b", "lamp brass", "brass adj",
            "cafe", "café", "CAFÉ", "x_y", "y", "-", "desk -", 'de"sk', "sk", "2nd", "o'neil", "\x00 lamp", "*",
            "lamp*", "(lamp", "lamp OR brass", "NOT"]


def search(shop: Shop, text: str) -> list[str]:
    """The names found, or why the search was refused (text with a NUL character is, on every backend)."""
    try:
        return sorted(p.name for p in shop.mediator.ask(SearchProducts(text=text, limit=100)))
    except ValidationError as refused:
        return [f"refused: {refused.errors}"]


def test_search_finds_what_it_finds_on_sqlite(tmp_path: Path) -> None:
    def found(backend: str) -> list[list[str]]:
        with shop_on(backend, tmp_path / backend, logging=False) as shop:
            _customer, lamps, _desk, _floor = stocked(shop)
            shop.mediator.send(CreateProduct(category_id=lamps, name="O'Neil 2nd lamp",
                                             description="brass, adjust-able café; x_y", price=Decimal("9")))
            settle(shop.engine)
            return [search(shop, text) for text in SEARCHES]

    for backend in ("sqlite", "postgres"):
        (tmp_path / backend).mkdir()
    assert found("postgres") == found("sqlite")


def test_every_read_model_answers_as_on_sqlite(tmp_path: Path) -> None:
    from domain.messages import CancelOrder, OrderItem, PlaceOrder

    def answers(backend: str) -> list[object]:
        with shop_on(backend, tmp_path / backend, logging=False) as shop:
            customer, lamps, desk, floor = stocked(shop)
            shop.mediator.send(CreateProduct(category_id=lamps, name="apple lamp", price=Decimal("1")))
            shop.mediator.send(CreateProduct(category_id=lamps, name="Zebra lamp", price=Decimal("2")))
            order = shop.mediator.send(PlaceOrder(customer_id=customer, items=(
                OrderItem(product_id=desk, quantity=2), OrderItem(product_id=floor, quantity=1))))
            dropped = shop.mediator.send(PlaceOrder(customer_id=customer, items=(
                OrderItem(product_id=desk, quantity=1),)))
            shop.mediator.send(CancelOrder(order_id=dropped, reason="no"))
            settle(shop.engine)
            ask = shop.mediator.ask
            details = ask(GetOrderDetails(order_id=order))
            assert details is not None
            return [
                [(p.name, p.price, p.available) for p in ask(ListProductsByCategory(category_id=lamps)).items],
                [(ln.product_name, ln.quantity, ln.unit_price) for ln in details.lines],
                sorted((s.status, s.total, s.item_count) for s in ask(GetCustomerOrders(customer_id=customer))),
                [(d.orders, d.units, d.revenue) for d in ask(GetDailySales())],
                attrs.evolve(board := ask(GetSalesDashboard()),
                             categories=tuple(attrs.evolve(c, category_id="") for c in board.categories)),
            ]

    for backend in ("sqlite", "postgres"):
        (tmp_path / backend).mkdir()
    assert answers("postgres") == answers("sqlite")


def test_a_lost_connection_in_the_write_model_is_a_storage_error(pg_schema: str) -> None:
    import psycopg

    from adapters.shop_app import build_shop
    from mediator.readmodels import StorageError
    from tests import postgres

    shop = build_shop(postgres=postgres.DSN, schema=pg_schema, logging=False)
    session = shop.storage.begin()
    try:
        with psycopg.connect(postgres.DSN, autocommit=True) as admin:  # the server goes away mid-command
            admin.execute("SELECT pg_terminate_backend(%s)", (session.handle.info.backend_pid,))
        with pytest.raises(StorageError, match="PostgreSQL failed in the write model"):
            shop.model.add_category(session.handle, "c1", "Lamps")
    finally:
        session.rollback()
        shop.close()
