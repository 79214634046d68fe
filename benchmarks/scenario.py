"""The scenario suite (seed 001, "your analytics dashboard is crawling"): one shop, built twice, measured side by side.

Both implementations hold the same generated data (:mod:`benchmarks._shopdata`:
seeded, 20 categories, 2,000 products, one customer per ten orders, orders of one
to three lines spread over 90 days):

- **crud**, the reference (:mod:`benchmarks._crudshop`): one normalised SQLite
  database in WAL mode serving writes and reads, with the indexes its reads need;
  every read is computed at query time with joins and aggregates, and a checkout
  is one transaction inserting the order and its items and reserving each line's
  stock with a check.
- **cqrs**: the reference shop from ``adapters.shop_app.build_shop`` on one SQLite
  file, read through ``mediator.ask`` (``GetOrderDetails``, ``GetCustomerOrders``,
  ``ListProductsByCategory``, ``GetSalesDashboard``, ``GetDailySales``) and written through
  ``mediator.send(PlaceOrder(...))``. It is built as it ships, with every
  behaviour (validation, retry on conflict, the unit of work, authorisation)
  except ``Logging``, because the baseline logs nothing either. Dispatches carry
  no principal: that is trusted in-process code, which ``Authorize`` and
  ``AuthorizeQueries`` check for and let through (the light option, with the
  checks still in the pipeline); no scope is opened per call.

Loading. The baseline is bulk-inserted with ``executemany``. The shop is loaded
by :class:`benchmarks._shopdata.CqrsLoader`: write-model rows through the shop's
``WriteModel`` port plus exactly the events its command handlers record (built by
the same domain methods, encoded with the shop's registered event types), then
the six real projections build every read model from the log (``catch_up``).
Both load times are reported, per order: the projections' share is the write cost
CQRS pays for its reads. Before anything is timed, the two must agree: the same
answers for a sample of orders and customers, every category's first and last
page, and the dashboard and the daily sales over everything and over the last
half of the days; the dashboard must also add up to the generated data.

The two aggregate reads. ``dashboard`` is ``GetSalesDashboard``: the period's
totals, a point per day (90) and the categories by revenue (20). ``daily_sales``
is ``GetDailySales``, the report behind it: a row per day and category (1,800).
Crud computes both from the same join over every order and item (the dashboard
folds that aggregate per day and per category, with a count of each day's
orders); cqrs reads rows its projection keeps counted.

Scenarios (``ratio`` is this / reference, times, so lower is better):

- ``<read>_p50`` / ``<read>_p99`` for ``order_details``, ``customer_orders``,
  ``products_by_category``, ``dashboard`` and ``daily_sales``: latency of one call,
  in the family ``"<N> orders"``; reference: crud. The lookups and the catalogue
  page are timed in alternation, one call of each side in turn; the crud aggregates
  are timed fewer times than the cqrs reads, so their p99 is of few samples.
- ``<read>_growth``: p50 at the run's size; reference: the same implementation's
  p50 at a quarter of it. The growth step is measured on one database per side,
  loaded with the first quarter of the orders, read, then loaded with the rest and
  read again: ``quick`` reads at 50,000 and 200,000 orders, ``full`` at 500,000 and
  2,000,000, ``TINY`` at 100 and 400 (so the run is never loaded past its size).
- ``load`` (crud, cqrs), ``load_write`` and ``load_projections`` (cqrs's two parts):
  seconds per order to load; reference: crud. ``load_floor_append`` and ``load_floor_read``: what the loaded log
  costs by itself (:func:`log_floor`): appending its events again, encoded already, and reading them back and
  decoding them; reference: crud's whole load.
- ``checkout`` (family ``"alone"``; crud, cqrs): time per checkout, sending them
  back to back for a few seconds; reference: crud. For cqrs a projection worker
  process keeps the read models up meanwhile (``Delivery.WORKER``, the configuration
  the README recommends on one machine: the projections on the second core, not in
  the writer's GIL); family ``"runner stopped"`` is the same before the worker starts
  (the command path alone; the projections catch up afterwards, untimed).
- ``checkout_loaded``: the same while another *process* reads the dashboard;
  reference: the same implementation alone, so ``1 / ratio`` is the throughput kept
  under load (the degradation ratio). Family ``"under dashboard load"``: the reader
  offers :data:`DASHBOARD_RATE` reads a second, the same load to both shops (crud's
  reads take longer than the interval, so its reader reads back to back). Family
  ``"under a flat-out dashboard reader"``: it reads back to back whichever shop,
  which keeps one of the machine's cores busy however cheap the read is; this is
  reported beside the other, with no target.
- ``dashboard_reader``: time per dashboard read served by that reader process, in
  each load's family; reference: crud.
- ``inventory_p50`` / ``_p99`` (family ``"read store"``): ``GetProductInventory`` served from its read model in
  SQLite (the cqrs shop) and from the same projection's read model in Redis (a second shop, fed the same
  catalogue, whose ``inventory`` projection keeps it in a :class:`~mediator.readmodels.redis.RedisReadStore` at
  ``MEDIATOR_BENCH_REDIS``), called in turn; reference: SQLite. Left out, saying why, without a Redis.
- ``checkout_paced`` (cqrs; families ``"paced alone"`` and ``"paced under dashboard load"``): time per checkout
  when the writer offers :data:`PACE` (0.5) times crud's checkout rate alone, on a fixed schedule, with the
  worker running (and, in the second, the dashboard reader offering :data:`DASHBOARD_RATE` reads a second);
  reference: crud alone. Back to back, the writer outruns the one worker applying six projections, and the lag
  measured then is mostly the queue the burst leaves; paced at #12's target rate, the lag says whether every
  projection keeps up at that rate.
- ``projection_lag_p50`` / ``_p99`` (cqrs; families ``"alone"``, each load's and each paced one's):
  from a checkout's events being stamped, just before its commit, to the last of
  the six projections committing them (``engine.on_batch`` runs after each batch
  commits, in the worker process); reference: itself.

Every timed checkout run starts from quiet files: the projections caught up, then every WAL copied back and started
over (:func:`quiesce`), so no run pays for the previous one's backlog (the flat-out reader keeps the read models' WAL
from being reset while it reads; copying what piled up then held the next run's first commits).

Targets (in :func:`summary`): the cqrs dashboard at least 1000x faster than the
crud aggregate at the run's size, and cqrs keeping at least 0.9x of its checkout
throughput under dashboard load (the paced reader), beside crud's figure; the
lookups a well-indexed schema serves fast, the daily sales report and the
flat-out reader are reported as they come.

Run time. Loading dominates: the six projections apply about half a millisecond of
work per order, so on the 2-core development machine the quick run (200,000
orders) takes about three and a half minutes, two of them loading, and ``full``
(2,000,000) about half an hour, of which the crud aggregates, ten seconds a call
at that size, take four minutes. Lower ``SIZES[QUICK].orders`` to trade the size
for time; the checkout phases last about a minute whatever the size.

``with_peers`` is accepted for the common runner and ignored: there is no peer here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from adapters.shop_app import Shop, build_shop
from domain.messages import (
    GetCustomerOrders,
    GetDailySales,
    GetOrderDetails,
    GetProductInventory,
    GetSalesDashboard,
    ListProductsByCategory,
    OrderItem,
    PlaceOrder,
)
from mediator.readmodels import Delivery, NewEvent, ReadModels, StoredEvent, new_event_id
from mediator.readmodels.sqlite import SqliteStorage
from mediator.testing import settle

from . import _shopdata as shopdata
from ._crudshop import CrudShop
from ._harness import FULL, QUICK, TINY, Result, Settings, percentile
from .sync import quiet_logging

SEED = 1
READS = ("order_details", "customer_orders", "products_by_category", "dashboard", "daily_sales")
AGGREGATES = ("dashboard", "daily_sales")
"""Reads that crud answers with an aggregate over every order: timed fewer times than the lookups."""
DASHBOARD_RATE = 50
"""Dashboard reads a second that the paced reader process offers: fifty people refreshing a dashboard each second."""
LOADS: dict[str, int | None] = {"under dashboard load": DASHBOARD_RATE, "under a flat-out dashboard reader": None}
"""The checkout runs beside a reader process: its family, and the reads a second it offers (``None``: flat out)."""
FAMILIES = ("alone", *LOADS)
PACE = 0.5
"""The paced checkouts offer this share of crud's checkout rate alone: #12's target, cqrs >= 0.5x crud with every
projection keeping up."""
PACED: dict[str, int | None] = {"paced alone": 0, "paced under dashboard load": DASHBOARD_RATE}
"""The paced checkout's families, and the dashboard reads a second offered beside it (0: no reader)."""
Cart = tuple[str, tuple[tuple[str, int], ...]]
"""A checkout: the customer, and ``(product_id, quantity)`` per line."""
Place = Callable[[str, tuple[tuple[str, int], ...]], object]


@attrs.frozen
class Size:
    orders: int
    """The run's size; the reads are measured at a quarter of it too."""
    lookups: int
    """Calls timed per side of each lookup read and of the catalogue page: enough that a p99 is not one rare pause
    (of 2,000 calls, the 20th slowest moved between 1.9x and 2.4x crud's in runs of the same code)."""
    crud_dashboards: int
    """Calls timed of each crud aggregate (the dashboard, the daily sales), a pass over every order each."""
    cqrs_dashboards: int
    """Calls timed of each of the cqrs dashboard reads."""
    checkout_seconds: float
    """How long each checkout run lasts."""
    idempotent: int = 2_000
    """Checkouts timed of each kind: without a key, with a new key, repeated with a used key."""


SIZES = {QUICK: Size(200_000, 20_000, 7, 200, 4.0), FULL: Size(2_000_000, 20_000, 5, 500, 10.0),
         TINY: Size(400, 40, 3, 10, 0.2, 40)}
QUICK_SIZE = SIZES[QUICK]


class Disagreement(AssertionError):
    """The two implementations answered a read differently: nothing they would time is comparable."""


@attrs.define
class Both:
    """The two shops over the same data, and what loading them has cost so far."""

    data: shopdata.Catalog
    crud: CrudShop
    shop: Shop
    loader: shopdata.CqrsLoader
    orders: list[shopdata.Order] = attrs.Factory(list)
    customers: list[str] = attrs.Factory(list)
    seconds: dict[str, float] = attrs.Factory(lambda: {"crud": 0.0, "write": 0.0, "projections": 0.0})

    def load(self, part: shopdata.Block, first: bool) -> None:
        """Load one block into both, timing each side and the cqrs projections apart."""
        started = time.perf_counter()
        if first:
            self.crud.load_catalog(self.data)
        self.crud.load(self.data, part)
        self.seconds["crud"] += time.perf_counter() - started
        started = time.perf_counter()
        if first:
            self.loader.load_catalog()
        self.loader.load(part)
        self.seconds["write"] += time.perf_counter() - started
        started = time.perf_counter()
        settle(self.shop.engine)
        self.seconds["projections"] += time.perf_counter() - started
        self.orders += part.orders
        self.customers += [c.customer_id for c in part.customers]


# -- reads --------------------------------------------------------------------------------------------------


def read_calls(both: Both) -> dict[str, tuple[Callable[[Any], object], Callable[[Any], object]]]:
    """For each read: (crud, cqrs), each taking the read's argument."""
    crud, ask = both.crud, both.shop.mediator.ask
    return {
        "order_details": (crud.order_details, lambda order_id: ask(GetOrderDetails(order_id=order_id))),
        "customer_orders": (crud.customer_orders,
                            lambda customer_id: ask(GetCustomerOrders(customer_id=customer_id))),
        "products_by_category": (lambda page: crud.products_by_category(*page),
                                 lambda page: ask(ListProductsByCategory(category_id=page[0], page=page[1]))),
        "dashboard": (lambda _: crud.sales_dashboard(), lambda _: ask(GetSalesDashboard())),
        "daily_sales": (lambda _: crud.daily_sales(), lambda _: ask(GetDailySales())),
    }


def arguments(both: Both, count: int, rng: random.Random) -> dict[str, list[Any]]:
    """``count`` arguments per read, drawn from what is loaded."""
    categories = [c.category_id for c in both.data.categories]
    pages = len(both.data.products) // len(categories) // 20
    return {
        "order_details": [rng.choice(both.orders).order_id for _ in range(count)],
        "customer_orders": [rng.choice(both.customers) for _ in range(count)],
        "products_by_category": [(rng.choice(categories), rng.randint(1, pages)) for _ in range(count)],
        "dashboard": [None] * count,
        "daily_sales": [None] * count,
    }


def check_agreement(both: Both, rng: random.Random, samples: int = 50) -> None:
    """Raise :class:`Disagreement` unless both shops answer every sampled read alike, and the dashboard adds up."""
    sampled = arguments(both, samples, rng)
    pages = len(both.data.products) // len(both.data.categories) // 20
    sampled["products_by_category"] = [(c.category_id, p) for c in both.data.categories for p in (1, pages, pages + 1)]
    for read, (crud, cqrs) in read_calls(both).items():
        for argument in sampled[read] if read not in AGGREGATES else ():
            if crud(argument) != cqrs(argument):
                raise Disagreement(f"{read}({argument!r}) differs between crud and cqrs")
    ask, middle = both.shop.mediator.ask, shopdata.START.date() + dt.timedelta(days=shopdata.DAYS // 2)
    for since in (None, middle):
        if both.crud.sales_dashboard(since) != ask(GetSalesDashboard(since=since)):
            raise Disagreement(f"the dashboard since {since} differs between crud and cqrs")
        if both.crud.daily_sales(since) != ask(GetDailySales(since=since)):
            raise Disagreement(f"the daily sales since {since} differ between crud and cqrs")
    dashboard = both.crud.sales_dashboard()
    units = sum(quantity for order in both.orders for _product, quantity in order.items)
    if (dashboard.units, dashboard.orders) != (units, len(both.orders)) or sum(
            row.units for row in both.crud.daily_sales()) != units:
        raise Disagreement(f"the dashboard does not add up to the {len(both.orders):,} orders loaded")
    if both.shop.engine.dead_letters():
        raise Disagreement(f"the projections parked events: {both.shop.engine.dead_letters()}")


def timed(call: Callable[[Any], object], args: Sequence[Any]) -> list[float]:
    """Seconds per call, one per argument."""
    clock, out = time.perf_counter, []
    for argument in args:
        started = clock()
        call(argument)
        out.append(clock() - started)
    return out


def alternating(first: Callable[[Any], object], second: Callable[[Any], object],
                args: Sequence[Any]) -> tuple[list[float], list[float]]:
    """Seconds per call of each, called in turn on each argument, so drift on a shared machine hits both alike."""
    ones: list[float] = []
    twos: list[float] = []
    for argument in args:
        ones += timed(first, (argument,))
        twos += timed(second, (argument,))
    return ones, twos


def measure_reads(both: Both, size: Size, rng: random.Random) -> dict[tuple[str, str], list[float]]:
    """Latencies of every read, by (read, implementation), after one warm-up call of each."""
    calls, args = read_calls(both), arguments(both, size.lookups, rng)
    out: dict[tuple[str, str], list[float]] = {}
    for read, (crud, cqrs) in calls.items():
        crud(args[read][0])
        cqrs(args[read][0])
        if read in AGGREGATES:
            out[read, "crud"] = timed(crud, args[read][:size.crud_dashboards])
            out[read, "cqrs"] = timed(cqrs, args[read][:size.cqrs_dashboards])
        else:
            out[read, "crud"], out[read, "cqrs"] = alternating(crud, cqrs, args[read])
    return out


# -- checkouts ----------------------------------------------------------------------------------------------


def carts(both: Both, count: int, rng: random.Random) -> list[Cart]:
    """Checkouts to send: a customer and one to three distinct products, one of each."""
    ids = [p.product_id for p in both.data.products]
    return [(rng.choice(both.customers), tuple((p, 1) for p in rng.sample(ids, rng.randint(1, 3))))
            for _ in range(count)]


def checkout_calls(both: Both) -> dict[str, Place]:
    send = both.shop.mediator.send

    def place(customer_id: str, items: tuple[tuple[str, int], ...]) -> object:
        return send(PlaceOrder(customer_id=customer_id, items=tuple(OrderItem(product_id=p, quantity=q)
                                                                    for p, q in items)))

    return {"crud": both.crud.checkout, "cqrs": place}


def measure_idempotent(both: Both, orders: Sequence[Cart], progress: Callable[[str], None]) -> dict[str, float]:
    """Median seconds per checkout without a key, with a new key, and repeated with a used key (answered from its
    record), one of each in turn per cart, so drift on a shared machine hits all three alike."""
    send = both.shop.mediator.send
    progress(f"scenario: cqrs checkout with and without an idempotency key, {len(orders):,} of each in turn")

    def order(customer_id: str, items: tuple[tuple[str, int], ...], key: str | None) -> PlaceOrder:
        return PlaceOrder(customer_id=customer_id, items=tuple(OrderItem(product_id=p, quantity=q) for p, q in items),
                          idempotency_key=key)

    plain = [order(c, items, None) for c, items in orders]
    run = new_event_id()  # keys of their own each run
    keyed = [order(c, items, f"{run}-{i}") for i, (c, items) in enumerate(orders)]
    for command in plain[:20]:  # warm up
        send(command)
    times: dict[str, list[float]] = {"plain": [], "keyed": [], "repeat": []}
    clock = time.perf_counter
    for first, second in zip(plain, keyed, strict=True):
        for name, command in (("plain", first), ("keyed", second), ("repeat", second)):
            started = clock()
            send(command)
            times[name].append(clock() - started)
    return {name: statistics.median(spent) for name, spent in times.items()}


def throughput(place: Place, orders: Sequence[Cart], seconds: float) -> float:
    """Seconds per checkout, sending ``orders`` (round and round) back to back for ``seconds``."""
    clock = time.perf_counter
    started = clock()
    deadline, done = started + seconds, 0
    while clock() < deadline:
        customer_id, items = orders[done % len(orders)]
        place(customer_id, items)
        done += 1
    return (clock() - started) / done


def on_schedule(act: Callable[[int], object], rate: float, going: Callable[[], bool],
                wait: Callable[[float], object]) -> float:
    """Call ``act(0)``, ``act(1)``, ... ``rate`` times a second on a fixed schedule while ``going()``; return the
    seconds per call. A call that is due starts at once, however late (a caller slower than the rate calls back to
    back); one that is not yet due waits (``wait(seconds)``). With a ``rate`` of 0, back to back from the start."""
    clock, interval = time.perf_counter, 1 / rate if rate else 0.0
    began, done = clock(), 0
    while going():
        early = began + done * interval - clock()
        if early > 0:
            wait(early)
            continue
        act(done)
        done += 1
    return (clock() - began) / max(done, 1)


def paced(place: Place, orders: Sequence[Cart], seconds: float, rate: float) -> float:
    """Seconds per checkout, offering ``rate`` checkouts a second for ``seconds`` (:func:`on_schedule`)."""
    deadline = time.perf_counter() + seconds

    def send(n: int) -> None:
        customer_id, items = orders[n % len(orders)]
        place(customer_id, items)

    return on_schedule(send, rate, lambda: time.perf_counter() < deadline,
                       lambda early: time.sleep(min(early, deadline - time.perf_counter())))


class LagProbe:
    """An ``on_batch`` listener: when the last projection committed each event stamped since :meth:`arm`."""

    def __init__(self) -> None:
        self.since = float("inf")
        self.recorded: dict[int, float] = {}
        self.committed: dict[int, float] = {}

    def arm(self) -> None:
        self.recorded, self.committed, self.since = {}, {}, time.time()

    def __call__(self, _name: str, events: list[StoredEvent]) -> None:
        now = time.time()
        for event in events:
            if event.recorded_at >= self.since:
                self.recorded[event.position] = event.recorded_at
                self.committed[event.position] = now  # the last projection's batch overwrites the others'

    def lags(self) -> list[float]:
        return [self.committed[p] - self.recorded[p] for p in self.committed]


READER = "import sys; from benchmarks.scenario import reader; reader(sys.argv[1], sys.argv[2], int(sys.argv[3]))"
ROOT = Path(__file__).resolve().parents[1]


CRUD_DB, CQRS_DB, CQRS_READ_DB = "crud.db", "cqrs.db", "cqrs-read.db"
DATABASES = (CRUD_DB, CQRS_DB, CQRS_READ_DB)
"""The scenario's SQLite files, in its folder: the baseline's, the cqrs log and write model, the cqrs read models."""


def _child_env() -> dict[str, str]:
    """The environment of a reader or worker process: this one's, with the repository on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def cqrs_shop(folder: Path) -> Shop:
    """The cqrs shop in ``folder`` as the README recommends running it on one machine: the log and the write model
    in ``cqrs.db``, the read models in ``cqrs-read.db`` (a file of their own: a smaller file the page cache keeps),
    and the projections delivered to a worker process (:func:`projection_worker`), not to a thread of the writer.
    Without the order fulfilment process (payment timeouts): the CRUD shop has none to set against it."""
    return build_shop(folder / CQRS_DB, folder / CQRS_READ_DB, logging=False, delivery=Delivery.WORKER,
                      fulfilment=False)


def reader(kind: str, folder: str, rate: int = 0) -> None:
    """The reader process: say ``ready``, read the dashboard until a line (or EOF) comes on stdin, then print
    the seconds per read served.

    With ``rate`` it offers that many reads a second, on a fixed schedule (:func:`on_schedule`); with 0 it reads
    back to back.
    """
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    closing: Callable[[], None]
    read: Callable[[], object]
    with quiet_logging():
        if kind == "crud":
            crud = CrudShop(Path(folder) / CRUD_DB)
            read, closing = crud.sales_dashboard, crud.close
        else:
            shop = cqrs_shop(Path(folder))
            ask = shop.mediator.ask
            read, closing = (lambda: ask(GetSalesDashboard())), shop.close
        try:
            read()
            print("ready", flush=True)
            print(on_schedule(lambda _n: read(), rate, lambda: not stop.is_set(), stop.wait), flush=True)
        finally:
            closing()


def under_load(kind: str, folder: Path, run: Callable[[], float], rate: int | None) -> tuple[float, float]:
    """``run()`` while another process reads the dashboard, ``rate`` times a second or flat out (``None``): its
    result, and the seconds per dashboard read served."""
    with subprocess.Popen([sys.executable, "-c", READER, kind, str(folder), str(rate or 0)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=_child_env()) as child:
        assert child.stdout is not None
        try:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"The {kind} dashboard reader did not start (see its error above).")
            result = run()
            said, _ = child.communicate("stop\n", timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    if child.returncode != 0:
        raise RuntimeError(f"The {kind} dashboard reader failed (exit code {child.returncode}).")
    return result, float(said.split()[-1])


WORKER = ("import sys; from benchmarks.scenario import projection_worker; "
          "projection_worker(sys.argv[1])")


def projection_worker(folder: str) -> None:
    """The cqrs shop's projection worker process: what ``python -m mediator.readmodels --app
    adapters.shop_app:engine_from_env worker`` runs with ``SHOP_DELIVERY=worker`` (``engine.start(Delivery.WORKER)``
    on the shop's files, :func:`cqrs_shop`), plus a :class:`LagProbe` driven over stdin: ``arm`` (answers
    ``armed``), ``lags`` (answers the p50 and p99 in seconds of what it saw since), anything else (or EOF) stops
    it."""
    with quiet_logging():
        shop = cqrs_shop(Path(folder))
        probe = LagProbe()
        shop.engine.on_batch.append(probe)
        shop.engine.start(Delivery.WORKER)
        try:
            print("ready", flush=True)
            for line in sys.stdin:
                command = line.strip()
                if command == "arm":
                    probe.arm()
                    print("armed", flush=True)
                elif command == "lags":
                    lags = probe.lags()
                    print(percentile(lags, 0.5), percentile(lags, 0.99), flush=True)
                else:
                    break
        finally:
            shop.engine.stop()
            shop.close()


class ProjectionWorker:
    """A :func:`projection_worker` process on the cqrs shop in ``folder``, for as long as the ``with`` block runs."""

    def __init__(self, folder: Path) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", WORKER, str(folder)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, env=_child_env())
        if self._read() != "ready":
            self.close()
            raise RuntimeError("The projection worker did not start (see its error above).")

    def _read(self) -> str:
        assert self.child.stdout is not None
        return self.child.stdout.readline().strip()

    def ask(self, command: str) -> str:
        assert self.child.stdin is not None
        self.child.stdin.write(command + "\n")
        self.child.stdin.flush()
        answer = self._read()
        if not answer:
            raise RuntimeError(f"The projection worker stopped (exit code {self.child.poll()}).")
        return answer

    def arm(self) -> None:
        self.ask("arm")

    def lags(self) -> tuple[float, float]:
        p50, p99 = self.ask("lags").split()
        return float(p50), float(p99)

    def close(self) -> None:
        try:
            self.child.communicate("stop\n", timeout=60)
        finally:
            if self.child.poll() is None:
                self.child.kill()
                self.child.wait()

    def __enter__(self) -> ProjectionWorker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def measure_checkouts(both: Both, folder: Path, size: Size, rng: random.Random,
                      progress: Callable[[str], None]) -> dict[str, float]:
    """Seconds per checkout alone and under load for each side, the reader's seconds per read, cqrs lag.

    The cqrs projections run in a worker process (:class:`ProjectionWorker`), as the README recommends on one
    machine: on the second core, not in the writer's GIL."""
    orders, engine = carts(both, 5_000, rng), both.shop.engine
    out: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        for kind, place in checkout_calls(both).items():
            for customer_id, items in orders[:20]:  # warm up
                place(customer_id, items)
            worker = None
            if kind == "cqrs":
                progress(f"scenario: cqrs checkout with the projection worker stopped, {size.checkout_seconds:g} s")
                quiesce(folder)
                out["cqrs runner stopped"] = throughput(place, orders, size.checkout_seconds)
                settle(engine)
                worker = stack.enter_context(ProjectionWorker(folder))
            for family in FAMILIES:
                progress(f"scenario: {kind} checkout {family}, {size.checkout_seconds:g} s")
                quiesce(folder)
                if worker is not None:
                    worker.arm()
                run = functools.partial(throughput, place, orders, size.checkout_seconds)
                if family == "alone":
                    out[f"{kind} alone"] = run()
                else:
                    out[f"{kind} {family}"], out[f"{kind} reader {family}"] = under_load(
                        kind, folder, run, LOADS[family])
                if worker is not None:
                    out.update(lag_of(engine, worker, family))
            if worker is not None:
                rate = PACE / out["crud alone"]
                for family, reads in PACED.items():
                    progress(f"scenario: cqrs checkout {family}, {rate:,.0f}/s offered for {size.checkout_seconds:g} s")
                    quiesce(folder)
                    worker.arm()
                    run = functools.partial(paced, place, orders, size.checkout_seconds, rate)
                    if reads:
                        out[f"cqrs {family}"], out[f"cqrs reader {family}"] = under_load(kind, folder, run, reads)
                    else:
                        out[f"cqrs {family}"] = run()
                    out.update(lag_of(engine, worker, family))
    return out


def quiesce(folder: Path) -> None:
    """Copy every WAL back into its database and have the next commit start it over (``RESTART`` checkpoints), so
    a timed run starts with no run's backlog: a flat-out reader keeps a WAL from being reset, and the checkpoints that
    copy what piled up then hold the next run's first commits (measured: the paced lag p99 at 200,000 orders 67 ms
    right after the flat-out reader, 24 ms in the next run). The WAL keeps its size, as a running service's does:
    a file emptied (``TRUNCATE``) would have to grow again during the run."""
    for name in DATABASES:
        with contextlib.closing(sqlite3.connect(folder / name, timeout=60)) as connection:
            connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()


def lag_of(engine: ReadModels, worker: ProjectionWorker, family: str) -> dict[str, float]:
    """Once every projection has caught up: the p50 and p99 lag of the events the worker's probe saw."""
    if not engine.wait(engine.storage.head(), timeout=120):
        raise RuntimeError("The projections did not catch up within 120 s of the checkouts.")
    p50, p99 = worker.lags()
    return {f"lag p50 {family}": p50, f"lag p99 {family}": p99}


# -- the run ------------------------------------------------------------------------------------------------


def read_results(results: list[Result], family: str, latencies: dict[tuple[str, str], list[float]]) -> None:
    for read in READS:
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            reference = percentile(latencies[read, "crud"], q)
            for kind in ("crud", "cqrs"):
                seconds = percentile(latencies[read, kind], q)
                results.append(Result("scenario", f"{read}_{name}", family, kind, seconds * 1e9, seconds / reference))


def growth_results(results: list[Result], small: dict[tuple[str, str], list[float]],
                   big: dict[tuple[str, str], list[float]]) -> None:
    for read in READS:
        for kind in ("crud", "cqrs"):
            before, after = percentile(small[read, kind], 0.5), percentile(big[read, kind], 0.5)
            results.append(Result("scenario", f"{read}_growth", "x4 orders", kind, after * 1e9, after / before))


def log_floor(both: Both, folder: Path) -> dict[str, float]:
    """Seconds the loaded log costs by itself, the least any cqrs load pays: reading every event back in batches
    of 500 and decoding each into its class (what the projections do before applying anything), and appending
    them again, encoded already, in transactions of 5,000 to a log of its own (what the write side does besides
    its rows and its domain code)."""
    storage, decode = both.shop.storage, both.loader.types.decode
    clock = time.perf_counter
    started, after = clock(), 0
    while chunk := storage.read(after, 500):
        for event in chunk:
            decode(event.type_name, event.version, event.data)
        after = chunk[-1].position
    reading = clock() - started
    copy = SqliteStorage(folder / "floor-log.db")
    appending, after = 0.0, 0
    try:
        while chunk := storage.read(after, 5_000):
            after = chunk[-1].position
            started = clock()
            session = copy.begin()
            session.append([NewEvent(new_event_id(), e.type_name, e.version, e.data, e.key, e.recorded_at, e.meta)
                            for e in chunk])
            session.commit()
            appending += clock() - started
    finally:
        copy.close()
        for path in folder.glob("floor-log.db*"):
            path.unlink()
    return {"read": reading, "append": appending}


def load_results(results: list[Result], both: Both, floor: dict[str, float]) -> None:
    family, orders, seconds = f"{len(both.orders):,} orders", len(both.orders), both.seconds
    crud = seconds["crud"] / orders
    for scenario, kind, spent in (("load", "crud", seconds["crud"]),
                                  ("load", "cqrs", seconds["write"] + seconds["projections"]),
                                  ("load_write", "cqrs", seconds["write"]),
                                  ("load_projections", "cqrs", seconds["projections"]),
                                  ("load_floor_append", "cqrs", floor["append"]),
                                  ("load_floor_read", "cqrs", floor["read"])):
        results.append(Result("scenario", scenario, family, kind, spent / orders * 1e9, spent / orders / crud))


def idempotent_results(results: list[Result], measured: dict[str, float]) -> None:
    plain = measured["plain"]
    for name in ("plain", "keyed", "repeat"):
        results.append(Result("scenario", "checkout_idempotency", name, "cqrs", measured[name] * 1e9,
                              measured[name] / plain))


def checkout_results(results: list[Result], measured: dict[str, float]) -> None:
    crud = measured["crud alone"]
    stopped = measured["cqrs runner stopped"]
    results.append(Result("scenario", "checkout", "runner stopped", "cqrs", stopped * 1e9, stopped / crud))
    for kind in ("crud", "cqrs"):
        alone = measured[f"{kind} alone"]
        results.append(Result("scenario", "checkout", "alone", kind, alone * 1e9, alone / crud))
        for family in LOADS:
            loaded, reader = measured[f"{kind} {family}"], measured[f"{kind} reader {family}"]
            results.append(Result("scenario", "checkout_loaded", family, kind, loaded * 1e9, loaded / alone))
            results.append(Result("scenario", "dashboard_reader", family, kind, reader * 1e9,
                                  reader / measured[f"crud reader {family}"]))
    for family in PACED:
        offered = measured[f"cqrs {family}"]
        results.append(Result("scenario", "checkout_paced", family, "cqrs", offered * 1e9, offered / crud))
    for family in (*FAMILIES, *PACED):
        for q in ("p50", "p99"):
            lag = measured[f"lag {q} {family}"]
            results.append(Result("scenario", f"projection_lag_{q}", family, "cqrs", lag * 1e9, 1.0))


@contextlib.contextmanager
def shops(folder: Path, data: shopdata.Catalog) -> Iterator[Both]:
    """Both shops, empty, in ``folder``; closed at the end."""
    shop = cqrs_shop(folder)
    try:
        crud = CrudShop(folder / CRUD_DB)
        try:
            yield Both(data, crud, shop, shopdata.CqrsLoader(shop, data))
        finally:
            crud.close()
    finally:
        shop.close()


def run(settings: Settings, *, with_peers: bool = True, progress: Callable[[str], None] = print) -> list[Result]:
    """Load both shops, check they agree, and measure every scenario at the size that matches ``settings``."""
    size = SIZES.get(settings, QUICK_SIZE)
    rng = random.Random(SEED)
    progress(f"scenario: generating {size.orders:,} orders (seed {SEED})")
    data = shopdata.catalog(SEED)
    blocks = shopdata.history(data, SEED, orders=size.orders, parts=(1, 3))
    try:
        return _run(size, rng, data, blocks, progress)
    finally:
        gc.unfreeze()


def _run(size: Size, rng: random.Random, data: shopdata.Catalog, blocks: list[shopdata.Block],
         progress: Callable[[str], None]) -> list[Result]:
    results: list[Result] = []
    # The generated orders stay in memory (millions of objects at --full): out of the collector's reach, or
    # every full collection walks them all, in the middle of whichever load, read or checkout is timed.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="mediator-scenario-") as tmp, quiet_logging(), \
            shops(Path(tmp), data) as both:
        latencies = []
        for index, part in enumerate(blocks):
            total = len(both.orders) + len(part.orders)
            progress(f"scenario: loading {len(part.orders):,} orders into both shops (to {total:,})")
            both.load(part, first=index == 0)
            gc.collect()
            gc.freeze()  # and what loading kept (the shops' lists of orders and customers)
            progress(f"scenario: checking both shops agree, then timing the reads at {total:,} orders")
            check_agreement(both, rng)
            latencies.append(measure_reads(both, size, rng))
            read_results(results, f"{total:,} orders", latencies[-1])
        growth_results(results, latencies[0], latencies[-1])
        read_store_results(results, both, Path(tmp), size, rng, progress)
        progress("scenario: the log alone, the floor under the cqrs load: appending it again, reading it back")
        load_results(results, both, log_floor(both, Path(tmp)))
        checkout_results(results, measure_checkouts(both, Path(tmp), size, rng, progress))
        idempotent_results(results, measure_idempotent(both, carts(both, size.idempotent, rng), progress))
    return results


REDIS = os.environ.get("MEDIATOR_BENCH_REDIS", "redis://127.0.0.1:6379/0")
"""The Redis the read-store comparison serves the inventory read model from (skipped when it does not answer)."""


def read_store_results(results: list[Result], both: Both, folder: Path, size: Size, rng: random.Random,
                       progress: Callable[[str], None]) -> None:
    """``GetProductInventory`` served from the read model in SQLite (the cqrs shop) and from the same read model
    in Redis (a second shop whose ``inventory`` projection keeps it there, fed the same catalogue): p50 and p99,
    called in turn; reference: SQLite."""
    try:
        from mediator.readmodels.redis import RedisReadStore

        store = RedisReadStore(REDIS, prefix=f"bench-{os.getpid()}")
    except Exception as exc:  # the redis extra not installed, or no server: the comparison is left out, said why
        progress(f"scenario: no Redis read store ({type(exc).__name__}: {exc}); its comparison is left out")
        return
    progress("scenario: the inventory read model served from SQLite and from Redis")
    on_redis = build_shop(folder / "redis-log.db", logging=False, read_stores={"inventory": store}, fulfilment=False)
    try:
        shopdata.CqrsLoader(on_redis, both.data).load_catalog()
        settle(on_redis.engine)
        products = [rng.choice(both.data.products).product_id for _ in range(size.lookups)]
        ask_sqlite, ask_redis = both.shop.mediator.ask, on_redis.mediator.ask
        sqlite, redis = alternating(lambda p: ask_sqlite(GetProductInventory(product_id=p)),
                                    lambda p: ask_redis(GetProductInventory(product_id=p)), products)
        if ask_redis(GetProductInventory(product_id=products[0])) is None:
            raise Disagreement("the inventory read model in Redis has no row for a loaded product")
    finally:
        store.drop_all()
        on_redis.close()
    for q, at in (("p50", 0.5), ("p99", 0.99)):
        reference = percentile(sqlite, at)
        results.append(Result("scenario", f"inventory_{q}", "read store", "sqlite", reference * 1e9, 1.0))
        results.append(Result("scenario", f"inventory_{q}", "read store", "redis", percentile(redis, at) * 1e9,
                              percentile(redis, at) / reference))


Found = dict[tuple[str, str, str], Result]


def summary(results: list[Result]) -> str:
    """The targets, as measured: cqrs beside crud at the run's size, how reads grow, checkouts, lag and loading."""
    by = {(r.scenario, r.family, r.implementation): r for r in results}
    sizes = list(dict.fromkeys(r.family for r in results if r.scenario == "dashboard_p50"))
    lines = ["| measure | crud | cqrs | cqrs vs crud | target |", "|---|---:|---:|---|---|"]
    lines += _read_rows(by, sizes[0], sizes[-1])
    lines += _checkout_rows(by)
    for q in ("p50", "p99"):
        if (f"inventory_{q}", "read store", "redis") in by:
            sqlite, redis = (by[(f"inventory_{q}", "read store", k)].median_ns / 1e6 for k in ("sqlite", "redis"))
            lines.append(f"| inventory lookup {q}, its read model in SQLite vs in Redis | - | {sqlite:,.3f} ms / "
                         f"{redis:,.3f} ms | Redis {_versus(sqlite / redis)} than SQLite | as measured |")
    load = {k: by[("load", sizes[-1], k)].median_ns / 1e3 for k in ("crud", "cqrs")}
    write, project = (by[(s, sizes[-1], "cqrs")].median_ns / 1e3 for s in ("load_write", "load_projections"))
    lines.append(f"| bulk load per order, {sizes[-1]} | {load['crud']:,.0f} µs | {load['cqrs']:,.0f} µs "
                 f"({write:,.0f} rows and log + {project:,.0f} projections) | "
                 f"{load['cqrs'] / load['crud']:,.1f}x the time | - |")
    append, read = (by[(s, sizes[-1], "cqrs")].median_ns / 1e3 for s in ("load_floor_append", "load_floor_read"))
    lines.append(f"| the log alone per order: append it (encoded), read it back and decode it | - | {append:,.1f} + "
                 f"{read:,.1f} µs | {(append + read) / load['crud']:,.1f}x crud's whole load | the floor under the "
                 "load |")
    return "\n".join(lines)


def _read_rows(by: Found, small: str, big: str) -> list[str]:
    lines = []
    for read in READS:
        for q in ("p50", "p99"):
            crud, cqrs = (by[(f"{read}_{q}", big, kind)].median_ns / 1e6 for kind in ("crud", "cqrs"))
            target = f">= 1000x faster ({_verdict(crud / cqrs >= 1000)})" if read == "dashboard" else "as measured"
            lines.append(f"| {read.replace('_', ' ')} {q}, {big} | {crud:,.3f} ms | {cqrs:,.3f} ms | "
                         f"{_versus(crud / cqrs)} | {target} |")
    for read in READS:
        crud, cqrs = (by[(f"{read}_growth", "x4 orders", kind)].ratio for kind in ("crud", "cqrs"))
        lines.append(f"| {read.replace('_', ' ')} p50 growth, {small} to {big} | {crud:.2f}x | {cqrs:.2f}x | - | - |")
    return lines


def _checkout_rows(by: Found) -> list[str]:
    def per_second(scenario: str, family: str, kind: str) -> float:
        return 1e9 / by[(scenario, family, kind)].median_ns

    alone = {k: per_second("checkout", "alone", k) for k in ("crud", "cqrs")}
    stopped = per_second("checkout", "runner stopped", "cqrs")
    lines = [
        f"| checkout alone | {alone['crud']:,.0f}/s | {alone['cqrs']:,.0f}/s | "
        f"{_versus(alone['cqrs'] / alone['crud'], 'more', 'fewer')} | - |",
        f"| checkout alone, cqrs projection worker stopped | - | {stopped:,.0f}/s | "
        f"{_versus(stopped / alone['crud'], 'more', 'fewer')} | - |",
    ]
    for family, rate in LOADS.items():
        loaded = {k: per_second("checkout_loaded", family, k) for k in ("crud", "cqrs")}
        reads = {k: per_second("dashboard_reader", family, k) for k in ("crud", "cqrs")}
        kept = {k: loaded[k] / alone[k] for k in ("crud", "cqrs")}
        offered = f"{rate} dashboard reads a second offered" if rate else "the reader keeps a core busy"
        target = f"cqrs >= 0.9x ({_verdict(kept['cqrs'] >= 0.9)})" if rate else "- (a core taken, whatever it reads)"
        lines += [
            f"| checkout {family} ({offered}) | {loaded['crud']:,.0f}/s | {loaded['cqrs']:,.0f}/s | "
            f"{_versus(loaded['cqrs'] / loaded['crud'], 'more', 'fewer')} | - |",
            f"| throughput kept {family} | {kept['crud']:.2f}x | {kept['cqrs']:.2f}x | - | {target} |",
            f"| dashboard reads served meanwhile | {reads['crud']:,.1f}/s | {reads['cqrs']:,.1f}/s | "
            f"{_versus(reads['cqrs'] / reads['crud'], 'more', 'fewer')} | - |",
        ]
    for family in FAMILIES:
        lag50, lag99 = (by[(f"projection_lag_{q}", family, "cqrs")].median_ns / 1e6 for q in ("p50", "p99"))
        lines.append(f"| projection lag p50 / p99, checkout {family} (back to back) | - | {lag50:,.1f} / "
                     f"{lag99:,.1f} ms | - | - (the writer flat out: see the paced rows) |")
    for family, offered_reads in PACED.items():
        achieved = per_second("checkout_paced", family, "cqrs")
        lag50, lag99 = (by[(f"projection_lag_{q}", family, "cqrs")].median_ns / 1e6 for q in ("p50", "p99"))
        limit = 250 if offered_reads else 100
        beside = f", {offered_reads} dashboard reads a second offered" if offered_reads else ""
        lines += [
            f"| checkout {family} ({PACE:g}x crud's rate alone offered{beside}) | - | {achieved:,.0f}/s | "
            f"{_versus(achieved / alone['crud'], 'more', 'fewer')} | cqrs >= {PACE:g}x "
            f"({_verdict(achieved / alone['crud'] >= PACE * 0.98)}) |",
            f"| projection lag p50 / p99, checkout {family} | - | {lag50:,.1f} / {lag99:,.1f} ms | - | "
            f"p99 <= {limit} ms ({_verdict(lag99 <= limit)}) |",
        ]
    if ("checkout_idempotency", "keyed", "cqrs") in by:
        plain, keyed, repeat = (by[("checkout_idempotency", name, "cqrs")] for name in ("plain", "keyed", "repeat"))
        lines += [
            f"| checkout with an idempotency key vs without (p50, in turn) | - | {keyed.median_ns / 1e3:,.0f} µs vs "
            f"{plain.median_ns / 1e3:,.0f} µs | {keyed.ratio:.3f}x the time | "
            f"<= 1.10x ({_verdict(keyed.ratio <= 1.10)}) |",
            f"| checkout repeated with its key (answered from the record) vs a checkout without | - | "
            f"{repeat.median_ns / 1e3:,.0f} µs | {repeat.ratio:.3f}x the time | as measured |",
        ]
    return lines


def _versus(factor: float, better: str = "faster", worse: str = "slower") -> str:
    """``factor`` (cqrs's advantage; below 1 a disadvantage) in words."""
    return f"{factor:,.1f}x {better}" if factor >= 1 else f"{1 / factor:,.2f}x {worse}"


def _verdict(met: bool) -> str:
    return "met" if met else "missed"
