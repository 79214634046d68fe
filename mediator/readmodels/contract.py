"""The storage contract: the cases every backend of the read-model engine passes, shipped for third parties.

Subclass :class:`StorageContract` once per backend, name the subclass ``Test...`` so pytest collects it, and
make a fresh, empty storage in :meth:`~StorageContract.create_storage`; the in-memory, SQLite and PostgreSQL
backends run exactly these cases::

    from mediator.readmodels.contract import StorageContract

    class TestMyStorage(StorageContract):
        def create_storage(self):
            return MyStorage(...)

        def dispose_storage(self, storage):  # optional: the default closes it
            storage.close()

A read store that keeps projections apart from the log (see :class:`~mediator.readmodels.RoutedStorage`) subclasses
:class:`ReadStoreContract` instead: the same cases but the log's.

Each case uses :attr:`~StorageContract.storage`, made on first use and disposed of after the case. Plain
classes with ``assert``: pytest runs them as they are (so does ``unittest`` with a ``TestCase`` mixed in), and
nothing here needs pytest installed.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing
from decimal import Decimal
from typing import Any

import attrs

from ._errors import ReadModelUnavailableError, RowFieldError, StorageError, TableQueryError
from ._ports import (
    BLOCKED,
    PARKED,
    PENDING,
    DeadLetter,
    IdempotencyRecord,
    NewEvent,
    ProjectionSession,
    ReadStore,
    ScheduledCommand,
    Storage,
)
from ._tables import Prefix, Range, Table
from ._versions import claim, claim_rebuild, finish, finish_rebuild, record, record_version, swap


@attrs.frozen(kw_only=True)
class Item:
    """The row of the contract's typed table: one field of each kind a row can hold."""

    sku: str
    shelf: str
    count: int
    price: Decimal
    since: dt.date
    weight: float = 0.0
    fragile: bool = False
    tags: tuple[str, ...] = ()
    note: str | None = None


@attrs.frozen(kw_only=True)
class Slot:
    """A row keyed by two fields."""

    shelf: str
    slot: int
    sku: str


class Shelves:
    """The owner of the contract's tables, as a projection would be (tables bind to the ``name`` of their class)."""

    name = "p"
    items = Table(Item, key="sku", lookups=["shelf", ("shelf", "count"), "since"])
    slots = Table(Slot, key=("shelf", "slot"))


def item(sku: str, shelf: str = "a", count: int = 1, **more: Any) -> Item:
    """An item with the contract's defaults."""
    return Item(sku=sku, shelf=shelf, count=count, price=more.pop("price", Decimal("9.99")),
                since=more.pop("since", dt.date(2026, 1, 1)), **more)


def event(n: int, key: str | None = "k") -> NewEvent:
    """A new event ``n`` of key ``key``, its data ``{"n": n}``."""
    return NewEvent(f"id-{n}-{time.monotonic_ns()}", "t.happened", 1, f'{{"n": {n}}}', key, 1000.0 + n)


class _raises:
    """Expect the block to raise ``error`` saying ``match`` (``pytest.raises``, without needing pytest)."""

    def __init__(self, error: type[BaseException], match: str = "") -> None:
        self.error = error
        self.match = match

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            raise AssertionError(f"{self.error.__name__} was not raised")
        if not isinstance(exc, self.error):
            return False
        assert self.match in str(exc), f"{exc!r} does not say {self.match!r}"
        return True


class ReadStoreContract:
    """The cases every read store passes (and so every storage): projection sessions, checkpoints, dead letters,
    typed tables, generation records and the engine's rules on them. A read store alone (one a
    :class:`~mediator.readmodels.RoutedStorage` routes projections to) subclasses this; a storage subclasses
    :class:`StorageContract`, which adds the log's cases."""

    _storage: Any = None

    def create_storage(self) -> ReadStore:
        """A fresh, empty store for one case."""
        raise NotImplementedError("Subclass ReadStoreContract and make your store in create_storage().")

    def dispose_storage(self, storage: ReadStore) -> None:
        """Release what :meth:`create_storage` made (the default closes it)."""
        storage.close()

    @property
    def storage(self) -> ReadStore:
        """The case's store, made on first use."""
        if self._storage is None:
            self._storage = self.create_storage()
        return typing.cast(ReadStore, self._storage)

    def teardown_method(self, method: object = None) -> None:
        """Dispose of the case's storage, if it made one."""
        if self._storage is not None:
            storage, self._storage = self._storage, None
            self.dispose_storage(storage)

    # -- projection sessions: checkpoints and dead letters ----------------------------------------------

    def test_checkpoint_commits_with_the_session_and_rolls_back_with_it(self) -> None:
        storage = self.storage
        with storage.session("p", 1) as s:
            s.advance(5)
        assert storage.checkpoint("p", 1) == 5
        with _raises(RuntimeError), storage.session("p", 1) as s:
            s.advance(9)
            raise RuntimeError("projection failed")
        assert storage.checkpoint("p", 1) == 5
        assert storage.checkpoint("p", 2) == 0

    def test_dead_letters_are_kept_listed_and_released(self) -> None:
        storage = self.storage
        parked = DeadLetter("p", 1, 3, "e3", "t", "k", "boom", 5, PARKED)
        blocked = DeadLetter("p", 1, 4, "e4", "t", "k", "waits", 0, BLOCKED)
        with storage.session("p", 1) as s:
            s.park(blocked)
            s.park(parked)
        assert storage.all_dead_letters("p") == [parked, blocked]
        with storage.session("p", 1) as s:
            assert s.dead_letters() == [parked, blocked]
            s.park(attrs.evolve(parked, attempts=6))  # parking a position again replaces its letter
        assert storage.all_dead_letters("p")[0].attempts == 6
        with storage.session("p", 1) as s:
            s.release(3)
        assert storage.all_dead_letters() == [blocked]

    def test_a_partitions_session_writes_its_projections_tables_under_its_own_checkpoint(self) -> None:
        storage = self.storage
        if not storage.partitioned_for("p"):
            return  # this store refuses partitioned projections (the engine says so when one is added)
        with storage.session("p#1", 1) as s:  # partition 1 of projection p
            assert s.owner == "p"
            s.create_tables([Shelves.items])
            s.put(Shelves.items, item("s1", count=2))
            s.advance(7)
            s.park(DeadLetter("p#1", 1, 5, "e5", "t", "k", "boom", 1, PARKED))
        with storage.session("p#0", 1) as s:
            s.put(Shelves.items, item("s1", count=3), add=("count",))  # another partition adds to a shared row
            s.advance(4)
        assert storage.checkpoint("p#1", 1) == 7
        assert storage.checkpoint("p#0", 1) == 4
        assert storage.checkpoint("p", 1) == 0
        assert [letter.position for letter in storage.all_dead_letters("p#1")] == [5]
        assert storage.all_dead_letters("p#0") == []
        assert storage.applied("p#1", 1) == 4
        assert self._committed() == ["s1"]
        stored = storage.load_row(Shelves.items, Shelves.items.physical(1), ("s1",))
        assert stored is not None
        assert Shelves.items.codec.decode(stored).count == 5

    # -- typed tables ------------------------------------------------------------------------------------

    def _rows(self, *rows: Item) -> None:
        with self.storage.session("p", 1) as s:
            s.create_tables([Shelves.items, Shelves.slots])
            for row in rows:
                s.put(Shelves.items, row)

    def _committed(self, **query: Any) -> list[str]:
        table = Shelves.items
        found = self.storage.select_rows(table, table.physical(1), table.query(**query))
        return [table.codec.decode(values).sku for values in found]

    def test_rows_read_back_as_written_in_the_session_and_after_it(self) -> None:
        storage = self.storage
        full = item("s1", weight=1.5, fragile=True, tags=("x", "y"), note="handle with care",
                    price=Decimal("12.50"), since=dt.date(2025, 12, 31))
        with storage.session("p", 1) as s:
            s.create_tables([Shelves.items])
            s.put(Shelves.items, full)
            s.put(Shelves.items, item("s2"))
            assert s.get(Shelves.items, "s1") == full  # before anything is written to the database
            assert s.get(Shelves.items, "nope") is None
            assert [i.sku for i in s.find(Shelves.items)] == ["s1", "s2"]  # after the rows are flushed
        table = Shelves.items
        stored = storage.load_row(table, table.physical(1), ("s1",))
        assert stored is not None
        assert table.codec.decode(stored) == full
        assert storage.count_rows(table, table.physical(1), table.query()) == 2

    def test_rows_roll_back_with_their_session(self) -> None:
        self._rows(item("kept"))
        with _raises(RuntimeError), self.storage.session("p", 1) as s:
            s.put(Shelves.items, item("lost"))
            s.delete(Shelves.items, "kept")
            assert [i.sku for i in s.find(Shelves.items)] == ["lost"]  # flushed inside the transaction
            raise RuntimeError("projection failed")
        assert self._committed() == ["kept"]

    def test_a_savepoint_undoes_the_rows_written_inside_it_only(self) -> None:
        self._rows()
        with self.storage.session("p", 1) as s:
            s.put(Shelves.items, item("before"))
            with _raises(RuntimeError), s.savepoint():
                s.put(Shelves.items, item("inside"))
                s.put(Shelves.items, item("before", count=99))
                raise RuntimeError("one event failed")
            assert s.get(Shelves.items, "before") == item("before")
            assert s.get(Shelves.items, "inside") is None
            with _raises(RuntimeError), s.savepoint():
                assert [i.sku for i in s.find(Shelves.items)] == ["before"]
                s.put(Shelves.items, item("flushed inside"))
                s.find(Shelves.items)  # written to the database inside the savepoint, then undone with it
                raise RuntimeError("another failed")
            with s.savepoint():
                s.put(Shelves.items, item("after"))
        assert self._committed() == ["after", "before"]

    def test_a_row_read_again_in_the_session_is_what_it_holds_now(self) -> None:
        # A session reads a row from storage once and keeps it: whatever it writes, flushes or rolls back after,
        # a later read must still answer the row as it stands.
        self._rows(item("s1", count=1), item("s2", count=1))
        with self.storage.session("p", 1) as s:
            assert s.get(Shelves.items, "s1") == item("s1", count=1)
            s.put(Shelves.items, item("s1", count=2))
            assert s.get(Shelves.items, "s1") == item("s1", count=2)
            s.find(Shelves.items)  # flushed
            assert s.get(Shelves.items, "s1") == item("s1", count=2)
            s.put(Shelves.items, item("s1", count=3), add=["count"])
            assert s.get(Shelves.items, "s1") == item("s1", count=5)
            s.delete(Shelves.items, "s2")
            assert s.get(Shelves.items, "s2") is None
            s.count(Shelves.items)  # flushed
            assert s.get(Shelves.items, "s1") == item("s1", count=5)
            assert s.get(Shelves.items, "s2") is None
            with _raises(RuntimeError), s.savepoint():
                s.put(Shelves.items, item("s1", count=9))
                s.put(Shelves.items, item("s2", count=9))
                s.find(Shelves.items)  # written inside the savepoint, then undone with it
                assert s.get(Shelves.items, "s1") == item("s1", count=9)
                raise RuntimeError("one event failed")
            assert s.get(Shelves.items, "s1") == item("s1", count=5)
            assert s.get(Shelves.items, "s2") is None
        assert self._committed() == ["s1"]

    def test_update_delete_and_keys_of_several_fields(self) -> None:
        self._rows(item("s1", count=2))
        with self.storage.session("p", 1) as s:
            assert s.update(Shelves.items, "s1", count=3, note="moved") == item("s1", count=3, note="moved")
            assert s.update(Shelves.items, "missing", count=1) is None
            s.put(Shelves.slots, Slot(shelf="a", slot=1, sku="s1"))
            s.put(Shelves.slots, Slot(shelf="a", slot=2, sku="s2"))
            s.delete(Shelves.slots, ("a", 2))
            assert s.get(Shelves.slots, ("a", 1)) == Slot(shelf="a", slot=1, sku="s1")
            assert s.get(Shelves.slots, ("a", 2)) is None
            with _raises(TableQueryError, "give a tuple of 2 values"):
                s.get(Shelves.slots, "a")
        with self.storage.session("p", 1) as s:
            assert s.get(Shelves.items, "s1") == item("s1", count=3, note="moved")
            assert s.count(Shelves.slots) == 1
            s.delete(Shelves.items, "s1")
            s.delete(Shelves.items, "never there")
        assert self._committed() == []

    def test_numbers_added_to_rows_add_up_without_reading_them(self) -> None:
        self._rows(item("s1", count=5, weight=1.0))
        with self.storage.session("p", 1) as s:
            s.put(Shelves.items, item("s1", count=2, weight=0.5, note="restocked"), add=("count", "weight"))
            s.put(Shelves.items, item("s1", count=3, weight=0.5), add=("count", "weight"))
            s.put(Shelves.items, item("new", count=4), add=("count",))  # a new key is inserted as it is
            assert s.get(Shelves.items, "s1") == item("s1", count=10, weight=2.0)  # the last row's other fields
            s.put(Shelves.items, item("new", count=1), add=("count",))
            s.put(Shelves.items, item("new", count=1, weight=2.0), add=("weight",))  # other fields: settled first
        with self.storage.session("p", 1) as s:
            assert s.get(Shelves.items, "new") == item("new", count=1, weight=2.0)
            s.delete(Shelves.items, "new")
            s.put(Shelves.items, item("new", count=7), add=("count",))  # deleted, then new again
            with _raises(TableQueryError, "only number fields outside the key"):
                s.put(Shelves.items, item("x"), add=("shelf",))
        with self.storage.session("p", 1) as s:
            assert [(i.sku, i.count) for i in s.find(Shelves.items)] == [("new", 7), ("s1", 10)]

    def test_fields_patched_without_reading_the_row(self) -> None:
        self._rows(item("s1", count=2, note="old"), item("s2", count=7))
        with self.storage.session("p", 1) as s:
            s.patch(Shelves.items, "s1", count=3, note=None, price=Decimal("1.25"))
            s.patch(Shelves.items, "missing", count=1)  # no row: nothing happens, nothing is inserted
            s.patch(Shelves.items, "s2", tags=("a", "b"))
        with self.storage.session("p", 1) as s:
            assert s.get(Shelves.items, "s1") == item("s1", count=3, price=Decimal("1.25"))
            assert s.get(Shelves.items, "s2") == item("s2", count=7, tags=("a", "b"))
            assert s.get(Shelves.items, "missing") is None
        assert self._committed(where={"shelf": "a", "count": 3}) == ["s1"]  # a lookup field patched is found anew
        assert self._committed() == ["s1", "s2"]

    def test_a_patch_is_seen_by_the_session_and_composes_with_its_other_writes(self) -> None:
        self._rows(item("s1", count=1), item("s2", count=1), item("s3", count=1))
        with self.storage.session("p", 1) as s:
            s.patch(Shelves.items, "s1", count=2)
            assert s.get(Shelves.items, "s1") == item("s1", count=2)  # before anything is written
            s.patch(Shelves.items, "s1", note="twice")
            s.patch(Shelves.items, "s1", count=4)  # the later value wins, the other field stays
            assert s.get(Shelves.items, "s1") == item("s1", count=4, note="twice")
            s.put(Shelves.items, item("s2", count=5), add=("count",))
            s.patch(Shelves.items, "s2", shelf="b")  # onto the added-up row
            s.patch(Shelves.items, "s3", count=10)
            s.put(Shelves.items, item("s3", count=1), add=("count",))  # onto the patched row
            s.put(Shelves.items, item("new", count=3), add=("count",))
            s.patch(Shelves.items, "new", note="inserted in this session")
            s.patch(Shelves.items, "gone", count=1)
            s.put(Shelves.items, item("gone", count=2), add=("count",))  # patched where there was no row: new
            s.delete(Shelves.items, "s1")
            s.patch(Shelves.items, "s1", count=9)  # deleted in this session: stays deleted
            assert s.get(Shelves.items, "s1") is None
        with self.storage.session("p", 1) as s:
            assert [(i.sku, i.shelf, i.count, i.note) for i in s.find(Shelves.items)] == [
                ("gone", "a", 2, None), ("new", "a", 3, "inserted in this session"), ("s2", "b", 6, None),
                ("s3", "a", 11, None)]

    def test_a_patch_rolls_back_with_its_savepoint(self) -> None:
        self._rows(item("s1", count=1))
        with self.storage.session("p", 1) as s:
            with _raises(RuntimeError), s.savepoint():
                s.patch(Shelves.items, "s1", count=5)
                s.find(Shelves.items)  # written inside the savepoint, then undone with it
                raise RuntimeError("one event failed")
            assert s.get(Shelves.items, "s1") == item("s1", count=1)
            s.patch(Shelves.items, "s1", count=2)
        assert self._committed(where={"shelf": "a", "count": 2}) == ["s1"]

    def test_a_bad_patch_is_refused_and_nothing_is_kept(self) -> None:
        self._rows(item("s1", count=1))
        with self.storage.session("p", 1) as s:
            with _raises(RowFieldError, "count: must be"):
                s.patch(Shelves.items, "s1", count="many", note="kept?")
            with _raises(RowFieldError, "tags[1]"):
                s.patch(Shelves.items, "s1", tags=("ok", 2))
            with _raises(TableQueryError, "no field 'colour'"):
                s.patch(Shelves.items, "s1", colour="red")
            with _raises(TableQueryError, "part of the key"):
                s.patch(Shelves.items, "s1", sku="s9")
            with _raises(TableQueryError, "at least one field"):
                s.patch(Shelves.items, "s1")
            with _raises(TableQueryError, "part of the key"):
                s.patch(Shelves.slots, ("a", 1), slot=2)
        with self.storage.session("p", 1) as s:
            assert s.get(Shelves.items, "s1") == item("s1", count=1)

    def test_lookups_order_and_pages_answer_alike_on_every_backend(self) -> None:
        shelves = ["b", "a", "B", "é", "ab", "a"]
        self._rows(*(item(f"s{n}", shelf=shelf, count=n % 3, since=dt.date(2026, 1, n + 1))
                     for n, shelf in enumerate(shelves)))
        assert self._committed(where={"shelf": "a"}) == ["s1", "s5"]
        assert self._committed(where={"shelf": "a", "count": 2}) == ["s5"]
        assert self._committed(where={"shelf": Prefix("a")}, order_by="shelf") == ["s1", "s5", "s4"]
        assert self._committed(order_by=("shelf", "-count")) == ["s2", "s5", "s1", "s4", "s0", "s3"]  # code points
        assert self._committed(where={"since": Range(dt.date(2026, 1, 2), dt.date(2026, 1, 4))}) == ["s1", "s2"]
        assert self._committed(where={"since": Range(high=dt.date(2026, 1, 2), include_high=True)}) == ["s0", "s1"]
        assert self._committed(order_by="-since", limit=2) == ["s5", "s4"]
        assert self._committed(order_by="-since", limit=2, offset=2) == ["s3", "s2"]
        assert self._committed(offset=4) == ["s4", "s5"]
        table = Shelves.items
        assert self.storage.count_rows(table, table.physical(1), table.query({"shelf": Prefix("a")})) == 3
        with _raises(TableQueryError, "not a key or a lookup"):
            table.query({"weight": 1.0})

    def test_a_table_not_made_yet_has_no_rows(self) -> None:
        table = Shelves.items
        assert self.storage.load_row(table, table.physical(7), ("s1",)) is None
        assert self.storage.select_rows(table, table.physical(7), table.query()) == []
        assert self.storage.count_rows(table, table.physical(7), table.query()) == 0

    def test_uncommitted_rows_are_invisible_to_readers(self) -> None:
        self._rows()
        seen: list[list[str]] = []
        with self.storage.session("p", 1) as s:
            s.put(Shelves.items, item("s1"))
            s.find(Shelves.items)  # flushed into the open transaction
            reader = threading.Thread(target=lambda: seen.append(self._committed()))
            reader.start()
            reader.join()
        assert seen == [[]]
        assert self._committed() == ["s1"]

    def test_a_row_that_would_not_read_back_is_refused_and_nothing_is_written(self) -> None:
        self._rows()
        with self.storage.session("p", 1) as s:
            with _raises(RowFieldError, "count"):
                s.put(Shelves.items, item("bad", count=True))  # a bool is no count, though mypy lets one be an int
            with _raises(RowFieldError, "NUL"):
                s.put(Shelves.items, item("bad\x00"))
        assert self._committed() == []

    def test_dropped_tables_are_gone(self) -> None:
        self._rows(item("s1"))
        with self.storage.session("p", 1) as s:
            s.drop_tables([Shelves.items])
        assert self._committed() == []

    # -- generation records: the primitives ---------------------------------------------------------------

    def test_generation_records_start_empty(self) -> None:
        storage = self.storage
        assert (storage.current_generation("p"), storage.rebuilding("p"), storage.recorded_version("p", 1)) == (
            1, None, None)
        with storage.generations("p") as records:
            assert (records.current(), records.rebuilding(), records.version(1), records.checkpoint(1)) == (
                1, None, None, 0)
            assert set(records.known()) <= {1}

    def test_generation_records_change_together_and_roll_back_together(self) -> None:
        storage = self.storage
        with storage.generations("p") as records:
            records.set_rebuilding(3)
            records.add_version(3, 2)
        assert (storage.rebuilding("p"), storage.recorded_version("p", 3)) == (3, 2)
        with _raises(RuntimeError), storage.generations("p") as records:
            records.set_current(3)
            records.set_rebuilding(None)
            raise RuntimeError("changed my mind")
        assert (storage.current_generation("p"), storage.rebuilding("p")) == (1, 3)
        with storage.generations("p") as records:
            records.set_current(3)
            records.set_rebuilding(None)
        assert (storage.current_generation("p"), storage.rebuilding("p")) == (3, None)
        assert storage.current_generation("q") == 1  # per projection

    def test_the_first_version_recorded_for_a_generation_stays(self) -> None:
        storage = self.storage
        with storage.generations("p") as records:
            records.add_version(1, 3)
            records.add_version(1, 4)
            assert records.version(1) == 3
        assert storage.recorded_version("p", 1) == 3

    def test_every_generation_anything_is_recorded_for_is_known(self) -> None:
        storage = self.storage
        with storage.session("p", 4) as s:  # left behind by an interrupted rebuild: a checkpoint only
            s.advance(1)
        with storage.generations("p") as records:
            records.add_version(6, 1)
            records.set_current(2)
        with storage.generations("p") as records:
            assert {2, 4, 6} <= set(records.known()) <= {1, 2, 4, 6}
            assert records.checkpoint(4) == 1
        with storage.generations("q") as records:
            assert set(records.known()) <= {1}

    def test_transactions_on_one_projections_records_take_turns(self) -> None:
        storage = self.storage
        order: list[str] = []
        inside = threading.Event()

        def second() -> None:
            inside.wait()
            with storage.generations("p") as records:
                order.append(f"second sees {records.rebuilding()}")

        thread = threading.Thread(target=second)
        thread.start()
        with storage.generations("p") as records:
            records.set_rebuilding(2)
            inside.set()
            time.sleep(0.1)
            order.append("first commits")
        thread.join()
        assert order == ["first commits", "second sees 2"]

    # -- the engine's rules, on these primitives -------------------------------------------------------------

    def test_a_rebuild_is_claimed_once_and_finished_only_if_nothing_moved(self) -> None:
        storage = self.storage
        with storage.session("p", 4) as s:  # a generation left behind by an interrupted rebuild
            s.advance(1)
        assert claim_rebuild(storage, "p") == 5
        assert claim_rebuild(storage, "p") == 5  # a second claim joins the first
        assert storage.rebuilding("p") == 5
        assert not finish_rebuild(storage, "p", 5, old=2)  # the current generation is 1, not 2
        assert not finish_rebuild(storage, "p", 6, old=1)  # not the rebuild under way
        assert finish_rebuild(storage, "p", 5, old=1)
        assert (storage.current_generation("p"), storage.rebuilding("p")) == (5, None)
        assert not finish_rebuild(storage, "p", 5, old=1)  # already finished, by someone

    def test_a_rebuild_is_claimed_for_a_version_and_can_replace_one_for_another(self) -> None:
        storage = self.storage
        first = claim_rebuild(storage, "p", 2)
        assert record_version(storage, "p", first, 9) == 2  # recorded with the claim
        assert claim_rebuild(storage, "p", 3) == first  # without replacing, a claim joins whatever is under way
        assert claim_rebuild(storage, "p", 3, replacing=first + 5) == first  # replacing another: joins this one
        second = claim_rebuild(storage, "p", 3, replacing=first)
        assert second > first
        assert (storage.rebuilding("p"), record_version(storage, "p", second, 9)) == (second, 3)
        assert not finish_rebuild(storage, "p", first, old=1)  # the abandoned one can no longer be swapped in

    def test_no_rebuild_is_claimed_for_a_version_older_than_the_current_generations(self) -> None:
        storage = self.storage
        assert record_version(storage, "p", 1, 3) == 3
        with _raises(ReadModelUnavailableError, "built by version 3"):
            claim_rebuild(storage, "p", 2)
        assert storage.rebuilding("p") is None
        assert claim_rebuild(storage, "p", 3) == 2  # the same version may rebuild

    def test_an_upgrade_is_swapped_in_without_waiting_for_the_generation_it_replaces(self) -> None:
        storage = self.storage
        with storage.session("p", 1) as live:
            live.advance(2)
        generation = claim_rebuild(storage, "p", 2)
        with storage.session("p", generation) as replay:
            replay.advance(5)
        assert not finish_rebuild(storage, "p", generation, old=1)  # the live generation is behind the replay
        assert finish_rebuild(storage, "p", generation, old=1, live=False)
        assert (storage.current_generation("p"), storage.rebuilding("p")) == (generation, None)

    def test_a_swap_makes_a_generation_current(self) -> None:
        storage = self.storage
        with storage.session("p", 2) as s:
            s.park(DeadLetter("p", 2, 1, "e", "t", None, "x", 1, PARKED))
        assert storage.all_dead_letters("p") == []  # generation 2 is not current yet
        swap(storage, "p", 2)
        assert storage.current_generation("p") == 2
        assert len(storage.all_dead_letters("p")) == 1


class StorageContract(ReadStoreContract):
    """The cases; a subclass per backend says how to make one (see the module's documentation)."""

    def create_storage(self) -> Storage:
        """A fresh, empty storage for one case."""
        raise NotImplementedError("Subclass StorageContract and make your storage in create_storage().")

    @property
    def storage(self) -> Storage:
        """The case's storage, made on first use."""
        if self._storage is None:
            self._storage = self.create_storage()
        return typing.cast(Storage, self._storage)

    # -- the log ---------------------------------------------------------------------------------------

    def _append(self, *batches: list[NewEvent]) -> None:
        for batch in batches:
            session = self.storage.begin()
            session.append(batch)
            session.commit()

    def test_an_empty_log_has_head_zero(self) -> None:
        assert self.storage.head() == 0
        assert self.storage.read(0, 10) == []

    def test_appended_events_get_consecutive_positions_in_commit_order(self) -> None:
        storage = self.storage
        self._append([event(1), event(2)], [event(3)])
        stored = storage.read(0, 10)
        assert [e.position for e in stored] == [1, 2, 3]
        assert [e.data for e in stored] == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
        assert storage.head() == 3
        assert [e.position for e in storage.read(1, 1)] == [2]
        assert [e.position for e in storage.events(after=1, batch=1)] == [2, 3]

    def test_append_returns_the_last_position(self) -> None:
        session = self.storage.begin()
        assert session.append([event(1), event(2)]) == 2
        session.commit()

    def test_rolled_back_events_are_never_seen(self) -> None:
        storage = self.storage
        session = storage.begin()
        session.append([event(1)])
        session.rollback()
        assert storage.head() == 0
        self._append([event(2)])
        assert [e.position for e in storage.read(0, 10)] == [1]

    def test_uncommitted_events_are_invisible_to_readers(self) -> None:
        storage = self.storage
        session = storage.begin()
        session.append([event(1)])
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.append(storage.head()))
        reader.start()
        reader.join()
        session.commit()
        assert seen == [0]
        assert storage.head() == 1

    def test_read_can_filter_by_type(self) -> None:
        self._append([event(1), NewEvent("other", "t.other", 1, "{}", None, 1.0), event(2)])
        assert [e.position for e in self.storage.read(0, 10, {"t.other"})] == [2]

    def test_event_metadata_is_stored_with_the_event(self) -> None:
        self._append([event(1)._replace(meta='{"traceparent": "00-abc-def-01"}')])
        (stored,) = self.storage.read(0, 1)
        assert stored.meta == '{"traceparent": "00-abc-def-01"}'

    def test_a_second_writer_waits_for_the_first(self) -> None:
        # SQLite makes the second writer wait in begin(), PostgreSQL in append(): either way its events cannot
        # take positions until the first writer's are committed, so commit order is log order.
        storage = self.storage
        first = storage.begin()
        first.append([event(1)])
        order: list[str] = []

        def second_writer() -> None:
            session = storage.begin()
            session.append([event(2)])
            order.append("second appended")
            session.commit()

        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(0.1)
        order.append("first commits")
        first.commit()
        thread.join()
        assert order == ["first commits", "second appended"]
        assert [e.data for e in storage.read(0, 10)] == ['{"n": 1}', '{"n": 2}']

    # -- idempotency records ---------------------------------------------------------------------------

    def _keep(self, record: IdempotencyRecord) -> None:
        session = self.storage.begin()
        assert session.claim_key(record.key) is None
        session.keep_key(record)
        session.commit()

    def test_an_idempotency_record_commits_with_its_transaction(self) -> None:
        record = IdempotencyRecord("k-1", "shop.PlaceOrder", "d1", '"order-1"', 7, 100.0, 200.0)
        self._keep(record)
        session = self.storage.begin()
        assert session.claim_key("k-1") == record
        assert session.claim_key("k-2") is None
        session.rollback()
        assert self.storage.count_keys(150.0) == 1

    def test_a_rolled_back_idempotency_record_is_never_kept(self) -> None:
        session = self.storage.begin()
        session.keep_key(IdempotencyRecord("k-1", "c", "d", "null", 1, 1.0, 2.0))
        session.rollback()
        session = self.storage.begin()
        assert session.claim_key("k-1") is None
        session.rollback()

    def test_an_idempotency_record_is_replaced_by_one_kept_under_its_key(self) -> None:
        self._keep(IdempotencyRecord("k-1", "c", "d", "1", 1, 1.0, 2.0))
        session = self.storage.begin()
        session.keep_key(IdempotencyRecord("k-1", "c", "e", "2", 5, 3.0, 4.0))
        session.commit()
        session = self.storage.begin()
        assert session.claim_key("k-1") == IdempotencyRecord("k-1", "c", "e", "2", 5, 3.0, 4.0)
        session.rollback()

    def test_expired_idempotency_records_are_deleted_and_no_others(self) -> None:
        self._keep(IdempotencyRecord("old", "c", "d", "null", 1, 1.0, 10.0))
        self._keep(IdempotencyRecord("new", "c", "d", "null", 2, 5.0, 20.0))
        assert self.storage.count_keys(10.0) == 1
        assert self.storage.expire_keys(10.0) == 1
        assert self.storage.expire_keys(10.0) == 0
        session = self.storage.begin()
        assert session.claim_key("old") is None
        assert session.claim_key("new") is not None
        session.rollback()

    # -- scheduled commands ------------------------------------------------------------------------------

    def _schedule(self, *rows: ScheduledCommand) -> None:
        session = self.storage.begin()
        for row in rows:
            session.schedule(row)
        session.commit()

    def test_scheduled_commands_commit_with_their_transaction_and_list_due_first(self) -> None:
        later, sooner = (ScheduledCommand(i, "c", "{}", due, 1.0) for i, due in (("s-1", 20.0), ("s-2", 10.0)))
        session = self.storage.begin()
        session.schedule(ScheduledCommand("gone", "c", "{}", 5.0, 1.0))
        session.rollback()
        self._schedule(later, sooner)
        assert self.storage.scheduled() == [sooner, later]
        assert self.storage.next_due() == 10.0
        self._schedule(sooner._replace(status=PARKED, reason="r", attempts=9))
        assert self.storage.scheduled(PARKED) == [sooner._replace(status=PARKED, reason="r", attempts=9)]
        assert self.storage.scheduled(PENDING) == [later]
        assert self.storage.next_due() == 20.0

    def test_the_command_due_first_is_taken_only_once_due(self) -> None:
        self._schedule(*(ScheduledCommand(f"s-{due}", "c", "{}", due, 1.0) for due in (30.0, 10.0, 20.0)))
        session = self.storage.begin()
        assert session.take_due(9.0) is None
        taken = session.take_due(25.0)
        assert taken is not None
        assert taken.schedule_id == "s-10.0"
        assert session.unschedule("s-10.0") is True
        assert session.unschedule("s-10.0") is False
        session.commit()
        assert [row.schedule_id for row in self.storage.scheduled()] == ["s-20.0", "s-30.0"]

    def test_a_command_taken_by_one_transaction_is_not_taken_by_another(self) -> None:
        self._schedule(ScheduledCommand("s-1", "c", "{}", 1.0, 0.0), ScheduledCommand("s-2", "c", "{}", 2.0, 0.0))
        first = self.storage.begin()
        assert first.take_due(10.0) is not None
        taken: list[str | None] = []

        def other() -> None:  # where writers take turns, it waits for the first to commit; where not, it skips
            session = self.storage.begin()
            row = session.take_due(10.0)
            taken.append(None if row is None else row.schedule_id)
            if row is not None:
                session.unschedule(row.schedule_id)
            session.commit()

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.1)
        first.unschedule("s-1")
        first.commit()
        thread.join()
        assert taken == ["s-2"]
        assert self.storage.scheduled() == []

    def test_inline_rows_commit_with_the_command(self) -> None:
        storage = self.storage
        if not storage.inline_for("p"):
            return
        session = storage.begin()
        inline: ProjectionSession = session.projection("p", 1)
        inline.create_tables([Shelves.items])
        inline.put(Shelves.items, item("s1"))
        session.rollback()
        assert self._committed() == []
        session = storage.begin()
        inline = session.projection("p", 1)
        inline.create_tables([Shelves.items])
        inline.put(Shelves.items, item("s2"))
        session.append([event(1)])
        session.commit()
        assert self._committed() == ["s2"]

    def test_the_write_session_changes_generation_records_in_its_own_transaction(self) -> None:
        storage = self.storage
        session = storage.begin()
        try:
            if not storage.inline_for("p"):  # its read models are not in the write transaction's database
                with _raises(StorageError):
                    session.generations("p")
                with _raises(StorageError):
                    session.projection("p", 1)
                return
            session.generations("p").set_current(3)
            session.projection("p", 3).advance(7)
        finally:
            session.rollback()
        assert storage.current_generation("p") == 1
        assert storage.checkpoint("p", 3) == 0
        session = storage.begin()
        session.generations("p").add_version(3, 5)
        session.commit()
        assert storage.recorded_version("p", 3) == 5

    def test_the_rules_run_inside_a_write_session_for_inline_projections(self) -> None:
        storage = self.storage
        if not storage.inline_for("p"):
            return
        session = storage.begin()
        assert record(session.generations("p"), 3, 5) == 5
        session.rollback()
        session = storage.begin()
        records = session.generations("p")
        assert record(records, 3, 6) == 6  # the rolled-back one was never recorded
        generation = claim(records, 6)
        assert finish(records, generation, 1, live=False)
        session.commit()
        assert (record_version(storage, "p", 3, 7), storage.current_generation("p")) == (6, generation)
