"""``ProjectionSession.patch``: fields set without reading the row (the contract runs it on every backend; here
what is particular: no read on SQL, and the read-and-put-back way for row classes with rules of their own)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mediator.readmodels import RowFieldError, Table
from mediator.readmodels.memory import MemoryStorage
from mediator.readmodels.sqlite import SqliteStorage


@attrs.frozen(kw_only=True)
class Plain:
    key: str
    count: int
    label: str


def _upper(text: str) -> str:
    return text.upper()


def _positive(_instance: object, _attribute: object, value: int) -> None:
    if value <= 0:
        raise ValueError(f"count must be positive, not {value}")


@attrs.frozen(kw_only=True)
class Ruled:
    key: str
    count: int = attrs.field(validator=_positive)
    label: str = attrs.field(converter=_upper)


class Owner:
    name = "patched"
    plain = Table(Plain, key="key")
    ruled = Table(Ruled, key="key")


def test_a_patch_on_sqlite_writes_without_reading_the_row(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "app.db", checkpoint_every=None)
    try:
        with storage.session("patched", 1) as s:
            s.create_tables([Owner.plain])
            s.put(Owner.plain, Plain(key="a", count=1, label="x"))
        statements: list[str] = []
        with storage.session("patched", 1) as s:
            s.handle.set_trace_callback(statements.append)
            s.patch(Owner.plain, "a", count=2)
            s.patch(Owner.plain, "b", count=5)
        physical = Owner.plain.physical(1)
        touching = [st for st in statements if physical in st]
        assert touching
        assert all(st.startswith("UPDATE") for st in touching), touching
        assert storage.load_row(Owner.plain, physical, ("a",)) == ("a", 2, "x")
        assert storage.load_row(Owner.plain, physical, ("b",)) is None
    finally:
        storage.close()


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryStorage | SqliteStorage:
    return MemoryStorage() if request.param == "memory" else SqliteStorage(tmp_path / "app.db")


def test_a_row_class_with_rules_is_read_and_put_back_so_they_run(storage: MemoryStorage | SqliteStorage) -> None:
    with storage.session("patched", 1) as s:
        s.create_tables([Owner.ruled])
        s.put(Owner.ruled, Ruled(key="a", count=1, label="x"))
    with storage.session("patched", 1) as s:
        s.patch(Owner.ruled, "a", label="quiet")  # the converter runs
        s.patch(Owner.ruled, "missing", label="none")
        assert s.get(Owner.ruled, "a") == Ruled(key="a", count=1, label="QUIET")
        with pytest.raises(ValueError, match="count must be positive"):  # the validator runs
            s.patch(Owner.ruled, "a", count=0)
        assert s.get(Owner.ruled, "missing") is None
    with storage.session("patched", 1) as s:
        assert s.get(Owner.ruled, "a") == Ruled(key="a", count=1, label="QUIET")


def test_a_refused_patch_names_the_row_class_and_the_field(storage: MemoryStorage | SqliteStorage) -> None:
    with storage.session("patched", 1) as s:
        s.create_tables([Owner.plain])
        with pytest.raises(RowFieldError, match=r"Row .*Plain cannot be stored: count: must be") as refused:
            s.patch(Owner.plain, "a", count="two")
        assert refused.value.row is Plain
        assert set(refused.value.errors) == {"count"}
