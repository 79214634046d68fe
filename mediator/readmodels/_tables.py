"""Typed read models: tables of attrs rows that projections write and queries read, the same on every backend.

A projection declares each table as a class attribute, with the row class, the key and the lookups its queries
need::

    class OrderDetails(Projection):
        name = "order_details"
        orders = Table(OrderRow, key="order_id", lookups=["customer_id"])

and writes rows through its session (``session.put(self.orders, row)``, ``get``, ``update``, ``delete``,
``find``, ``count``); queries read them through the engine (``engine.get(OrderDetails.orders, order_id)``,
``engine.find(...)``). Every backend stores a row as one value per field (:class:`Codec`): plain fields as they
are, decimals, dates, UUIDs as text, anything else as JSON (never pickled). Lookups compare and order those
stored values, so every backend answers a query alike: text in code-point order, numbers as numbers, dates and
datetimes as ISO text (so in time order when they share a time zone), decimals as text (keep money that must be
ordered as whole cents).

The engine creates a projection's tables in a generation before its first event and drops them when a rebuild
retires it. Raw SQL through ``session.handle`` stays available beside them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import json
import operator
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

import attrs

from .. import _codegen
from .._fields import FieldChecker, Problems, field_checker, value_checker, within
from .._messages import qualname
from ._errors import ProjectionConfigError, RowFieldError, TableQueryError
from ._serialization import json_converter, to_data

R = TypeVar("R")

TEXT, INTEGER, REAL, BOOLEAN, JSON = "text", "integer", "real", "boolean", "json"
"""The kinds of stored value a field becomes; each backend maps them to its own types."""

@functools.lru_cache(maxsize=4096)  # called per event by projections: the same few names, over and over
def table_name(projection: str, table: str, generation: int) -> str:
    """The storage name of a read-model table: one set of tables per projection generation."""
    return f"{projection}__{table}__g{generation}"


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode


@attrs.frozen
class Range:
    """Bounds on a lookup field, for :meth:`~mediator.readmodels.ReadModels.find`: ``low <= value < high`` by
    default; leave a bound ``None`` for none. Values are compared as stored (see the module)."""

    low: Any = None
    high: Any = None
    include_low: bool = True
    include_high: bool = False


def Prefix(text: str) -> Range:  # reads as a value, like Range
    """The text values starting with ``text`` (as a :class:`Range`: code points from ``text`` on, below the next)."""
    return Range(low=text, high=text + "\U0010ffff", include_high=True)


@attrs.frozen
class Column:
    """One field of a row class as stored: its name, kind, and how its value is encoded and decoded."""

    name: str
    kind: str
    nullable: bool
    encode: Callable[[Any], Any] | None
    """``None`` when the value is stored as it is."""
    decode: Callable[[Any], Any] | None


class Codec:
    """A row class's columns, and the functions (generated once per class) that turn a row into its stored values
    and back. The values are plain: ``str``, ``int``, ``float``, ``bool`` or ``None``."""

    def __init__(self, row: type) -> None:
        if not (isinstance(row, type) and attrs.has(row)):
            raise ProjectionConfigError(f"{qualname(row)} is not an attrs class; a table's rows must be.")
        self.row = row
        hints = typing.get_type_hints(row)
        fields = [f for f in attrs.fields(row) if f.init]
        if len(fields) != len(attrs.fields(row)):
            raise ProjectionConfigError(f"{qualname(row)} has fields outside __init__; a row is built from its values.")
        self.hints = {f.name: hints.get(f.name, Any) for f in fields}
        self.columns = tuple(_column(f.name, hints.get(f.name, Any)) for f in fields)
        self.patchable = not hasattr(row, "__attrs_post_init__") and not any(
            f.validator is not None or f.converter is not None for f in fields)
        """Whether fields can be set alone (``patch``): not if the class validates, converts or derives values."""
        self.names = tuple(c.name for c in self.columns)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.check: FieldChecker | None = field_checker(row)
        self.encode: Callable[[Any], tuple[Any, ...]] = self._encoder()
        self.decode: Callable[[Sequence[Any]], Any] = self._decoder()

    def _encoder(self) -> Callable[[Any], tuple[Any, ...]]:
        namespace = _codegen.Namespace()
        parts = []
        for column in self.columns:
            value = f"row.{column.name}"
            if column.encode is not None:
                convert = namespace.add(f"encode {column.name}", column.encode)
                value = f"{convert}({value})" if not column.nullable else \
                    f"(None if (v := {value}) is None else {convert}(v))"
            parts.append(value)
        lines = []
        if self.check is not None:
            checked, refuse = namespace.add("check fields", self.check), namespace.add("refuse", _refuse)
            lines += [f"if problems := {checked}(row):", f"    {refuse}(row, problems)"]
        lines.append(f"return ({', '.join(parts)},)")
        return _codegen.function("encode", ["row"], lines, namespace, about=f"row {qualname(self.row)}")

    def _decoder(self) -> Callable[[Sequence[Any]], Any]:
        namespace = _codegen.Namespace()
        build = namespace.add(self.row.__name__, self.row)
        parts = []
        for i, column in enumerate(self.columns):
            value = f"data[{i}]"
            if column.decode is not None:
                convert = namespace.add(f"decode {column.name}", column.decode)
                value = f"{convert}({value})" if not column.nullable else \
                    f"(None if (v := {value}) is None else {convert}(v))"
            parts.append(f"{column.name}={value}")
        return _codegen.function("convert", ["data"], [f"return {build}({', '.join(parts)})"], namespace,
                                 about=f"row {qualname(self.row)}")

    def value(self, name: str, value: Any) -> Any:
        """``value`` of field ``name`` as stored, for comparing with stored values."""
        column = self.columns[self.index[name]]
        if value is None or column.encode is None:
            return value
        return column.encode(value)


def _refuse(row: object, problems: Problems) -> None:
    errors: dict[str, list[str]] = {}
    for field, problem in problems:
        errors.setdefault(field, []).append(problem)
    raise RowFieldError(row, errors)


def _to_json(value: Any) -> str:
    return _dumps(to_data(value))


def _column(name: str, hint: Any) -> Column:
    nullable = False
    options = typing.get_args(hint)
    if (typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)) and type(None) in options:
        rest = [o for o in options if o is not type(None)]
        if len(rest) == 1:
            hint, nullable = rest[0], True
    supertype = getattr(hint, "__supertype__", None)  # typing.NewType
    while supertype is not None:
        hint, supertype = supertype, getattr(supertype, "__supertype__", None)
    plain = _PLAIN_COLUMNS.get(hint)
    if plain is not None:
        kind, encode, decode = plain
        return Column(name, kind, nullable, encode, decode)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = {type(member.value) for member in hint}
        kind = INTEGER if values == {int} else TEXT if values == {str} else JSON
        if kind == JSON:
            return Column(name, JSON, nullable, _to_json, lambda data: hint(json.loads(data)))
        return Column(name, kind, nullable, _enum_value, hint)
    return Column(name, JSON, nullable, _to_json, json_converter(hint))


_PLAIN_COLUMNS: dict[Any, tuple[str, Callable[[Any], Any] | None, Callable[[Any], Any] | None]] = {
    str: (TEXT, None, None),
    bool: (BOOLEAN, None, bool),  # SQLite gives back 0 and 1
    int: (INTEGER, None, None),
    float: (REAL, float, float),
    decimal.Decimal: (TEXT, str, decimal.Decimal),
    dt.datetime: (TEXT, dt.datetime.isoformat, dt.datetime.fromisoformat),
    dt.date: (TEXT, dt.date.isoformat, dt.date.fromisoformat),
    uuid.UUID: (TEXT, str, uuid.UUID),
}
"""How a field of each plain type is stored: its kind, and how it is encoded and decoded (``None``: as it is)."""


def _enum_value(member: enum.Enum) -> Any:
    return member.value


_CODECS: dict[type, Codec] = {}


def codec(row: type) -> Codec:
    """The codec of a row class, generated on first use."""
    found = _CODECS.get(row)
    if found is None:
        found = _CODECS[row] = Codec(row)
    return found


@attrs.frozen
class Query:
    """A validated query on one table, in stored values: ``where`` as ``(column, operator, value)``, ``order`` as
    ``(column, descending)`` ending with the key (so pages are stable), ``limit`` ``None`` for all."""

    where: tuple[tuple[str, str, Any], ...] = ()
    order: tuple[tuple[str, bool], ...] = ()
    limit: int | None = None
    offset: int = 0

    @property
    def shape(self) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, bool], ...], bool, bool]:
        """What a statement for this query depends on (the same for every value)."""
        return (tuple((c, op) for c, op, _ in self.where), self.order, self.limit is None, self.offset > 0)

    def params(self) -> tuple[Any, ...]:
        """The values of the statement's markers: the where values, then the limit and offset given."""
        values = tuple(v for _c, _op, v in self.where)
        if self.limit is not None:
            values += (self.limit,)
        if self.offset:
            values += (self.offset,)
        return values

    def matches(self, codec: Codec) -> Callable[[Sequence[Any]], bool]:
        """A test of stored values against ``where``, for backends that filter in Python."""
        tests = [(codec.index[column], _OPERATORS[op], value) for column, op, value in self.where]

        def test(values: Sequence[Any]) -> bool:
            for i, compare, value in tests:
                found = values[i]
                if found is None or not compare(found, value):
                    return False
            return True

        return test

    def run(self, codec: Codec, rows: Iterable[Sequence[Any]]) -> list[Sequence[Any]]:
        """This query over ``rows`` of stored values, in Python: filtered, ordered, paged."""
        found = [values for values in rows if self.matches(codec)(values)] if self.where else list(rows)
        for column, descending in reversed(self.order):  # a stable sort per column, the last key first
            i = codec.index[column]
            found.sort(key=lambda values: _sortable(values[i]), reverse=descending)
        end = None if self.limit is None else self.offset + self.limit
        return found[self.offset:end]


@attrs.frozen(slots=True)
class Adding:
    """A row written with ``put(..., add=fields)`` and not yet stored: inserted as it is if its key is new, else its
    ``at`` columns (numbers) are added to the stored row's and its other columns replace the stored row's."""

    values: tuple[Any, ...]
    at: tuple[int, ...]

    def onto(self, stored: Sequence[Any] | None) -> tuple[Any, ...]:
        """The row this makes of ``stored`` (the row with its key, or ``None``)."""
        if stored is None:
            return self.values
        values = list(self.values)
        for i in self.at:
            if stored[i] is not None:
                values[i] = stored[i] + values[i]
        return tuple(values)

    def then(self, later: Adding) -> Adding:
        """This, and then ``later`` (adding the same columns)."""
        values = list(later.values)
        for i in self.at:
            values[i] = self.values[i] + values[i]
        return Adding(tuple(values), self.at)


@attrs.frozen(slots=True)
class Patching:
    """Fields set with ``patch(...)`` and not yet stored: the values of columns ``at`` (in that order), replacing the
    stored row's; nothing if no row has the key."""

    values: tuple[Any, ...]
    at: tuple[int, ...]

    def onto(self, stored: Sequence[Any] | None) -> tuple[Any, ...] | None:
        """The row this makes of ``stored`` (the row with its key, or ``None``: then there is still none)."""
        if stored is None:
            return None
        values = list(stored)
        for i, value in zip(self.at, self.values, strict=True):
            values[i] = value
        return tuple(values)

    def then(self, later: Patching) -> Patching:
        """This, and then ``later`` (its values win where both set a column)."""
        merged = dict(zip(self.at, self.values, strict=True))
        merged.update(zip(later.at, later.values, strict=True))
        at = tuple(sorted(merged))
        return Patching(tuple(merged[i] for i in at), at)


@attrs.frozen
class Patcher:
    """How ``patch`` stores the fields it was given (the same names, in the same order, each time)."""

    at: tuple[int, ...]
    checks: tuple[tuple[str, FieldChecker | None, Callable[[Any], Any] | None, bool], ...]
    """Per field, in column order: its name, its check, its encoder and whether it may be ``None``."""
    row: type

    def encode(self, changes: Mapping[str, Any]) -> tuple[Any, ...]:
        """The stored values of ``changes``, in column order.

        Raises:
            RowFieldError: if a value does not hold its field's declared type.
        """
        out = []
        found: Problems = ()
        for name, check, encode, nullable in self.checks:
            value = changes[name]
            if check is not None and (problems := check(value)):
                found += within(name, problems)
                continue
            out.append(value if encode is None or (nullable and value is None) else encode(value))
        if found:
            _refuse(self.row, found)
        return tuple(out)


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, 0) if value is None else (1, value)  # NULLs first, as SQLite and PostgreSQL's NULLS FIRST


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b, "<": lambda a, b: a < b,
}


class Table(Generic[R]):
    """A read-model table of ``row`` (an attrs class), declared as a class attribute of a projection.

    ``key`` names the field (or fields) identifying a row; ``lookups`` the fields (or tuples of fields) that
    queries find rows by, which every backend indexes. ``name`` is the table's stable storage name (the
    attribute's name by default). Read through the projection class (``Orders.orders``), a table belongs to
    that projection: a subclass with its own ``name`` gets tables of its own.
    """

    def __init__(self, row: type[R], *, key: str | Sequence[str],
                 lookups: Iterable[str | Sequence[str]] = (), name: str | None = None) -> None:
        self.row = row
        self.codec = codec(row)
        self.key: tuple[str, ...] = (key,) if isinstance(key, str) else tuple(key)
        self.lookups: tuple[tuple[str, ...], ...] = tuple(
            (lookup,) if isinstance(lookup, str) else tuple(lookup) for lookup in lookups)
        self.name = name or ""
        self.projection: str | None = None
        self._bound: dict[str, Table[R]] = {}
        for field in {*self.key, *(f for lookup in self.lookups for f in lookup)}:
            if field not in self.codec.index:
                raise ProjectionConfigError(f"{qualname(row)} has no field {field!r} to key or look rows up by.")
            if self.codec.columns[self.codec.index[field]].kind == JSON:
                raise ProjectionConfigError(
                    f"{qualname(row)}.{field} is stored as JSON; a key or lookup must be text, a number, a bool, "
                    "a date, a decimal, a UUID or an enum.")
        if not self.key:
            raise ProjectionConfigError(f"A table of {qualname(row)} needs a key.")
        self.searchable = frozenset({*self.key, *(f for lookup in self.lookups for f in lookup)})
        self._adding: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._patchers: dict[tuple[str, ...], Patcher | None] = {}
        at = [self.codec.index[f] for f in self.key]
        self.key_of: Callable[[Sequence[Any]], tuple[Any, ...]] = (
            (lambda values, i=at[0]: (values[i],)) if len(at) == 1 else operator.itemgetter(*at))  # type: ignore[misc]
        """The key of a row's stored values (called per row written: a plain function)."""
        single = self.codec.columns[at[0]]
        if len(at) == 1 and single.encode is None:
            self.stored_key: Callable[[Any], tuple[Any, ...]] = _as_key
            """``key`` (a value, or a tuple for a key of several fields) as stored (called per row read)."""
        elif len(at) == 1 and single.encode is not None:
            encode = single.encode
            self.stored_key = lambda key: (encode(key),)
        else:
            self.stored_key = self._stored_key

    def __set_name__(self, owner: type, name: str) -> None:
        if not self.name:
            self.name = name
        if not self.name.isidentifier():
            raise ProjectionConfigError(f"A table's name must be an identifier, not {self.name!r}.")

    @overload
    def __get__(self, instance: None, owner: type) -> Table[R]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Table[R]: ...

    def __get__(self, instance: object, owner: type | None = None) -> Table[R]:
        projection = getattr(owner if owner is not None else type(instance), "name", None)
        if not isinstance(projection, str) or not projection:
            return self
        bound = self._bound.get(projection)
        if bound is None:
            bound = self._bound[projection] = self._copy_for(projection)
        return bound

    def _copy_for(self, projection: str) -> Table[R]:
        bound = object.__new__(type(self))
        bound.__dict__.update(self.__dict__)
        bound.projection = projection
        bound._bound = {}
        bound._adding = {}
        return bound

    def __repr__(self) -> str:
        return f"Table({qualname(self.row)}, projection={self.projection!r}, name={self.name!r}, key={self.key!r})"

    def physical(self, generation: int) -> str:
        """The storage name of this table in ``generation`` of its projection."""
        if self.projection is None:
            raise ProjectionConfigError(
                f"{self!r} is not bound to a projection: declare it as a class attribute of a Projection and use "
                "it through the class (Orders.orders) or the projection (self.orders).")
        return table_name(self.projection, self.name, generation)

    def adding_at(self, fields: Sequence[str]) -> tuple[int, ...]:
        """The columns of ``fields``, checked to be numbers outside the key (for ``put(..., add=fields)``)."""
        fields = tuple(fields)
        found = self._adding.get(fields)
        if found is None:
            for field in fields:
                column = self.codec.columns[self.codec.index[field]] if field in self.codec.index else None
                if column is None or column.kind not in (INTEGER, REAL) or field in self.key:
                    raise TableQueryError(
                        f"{qualname(self.row)}.{field} cannot be added to: only number fields outside the key can.")
            found = self._adding[fields] = tuple(sorted(self.codec.index[f] for f in fields))
        return found

    def patcher(self, fields: Iterable[str]) -> Patcher | None:
        """How to store ``fields`` set alone (``patch``); ``None`` if the row class validates, converts or derives
        values (then a patch reads the row and puts it back).

        Raises:
            TableQueryError: for a field the row does not have, a field of the key, or no field at all.
        """
        names = tuple(fields)
        if names in self._patchers:
            return self._patchers[names]
        codec = self.codec
        if not names:
            raise TableQueryError(f"A patch of {self!r} needs at least one field to set.")
        for name in names:
            if name not in codec.index:
                raise TableQueryError(f"{qualname(self.row)} has no field {name!r} to set.")
            if name in self.key:
                raise TableQueryError(
                    f"{qualname(self.row)}.{name} is part of the key of {self!r}: a patch cannot move a row; delete "
                    "it and put the new one.")
        patcher = None
        if codec.patchable:
            ordered = sorted(names, key=codec.index.__getitem__)
            columns = [codec.columns[codec.index[name]] for name in ordered]
            patcher = Patcher(tuple(codec.index[name] for name in ordered), tuple(
                (c.name, value_checker(codec.hints[c.name]), c.encode, c.nullable) for c in columns), self.row)
        self._patchers[names] = patcher
        return patcher

    def _stored_key(self, key: Any) -> tuple[Any, ...]:
        if not isinstance(key, tuple) or len(key) != len(self.key):
            raise TableQueryError(f"The key of {self!r} is {self.key}: give a tuple of {len(self.key)} values.")
        return tuple(self.codec.value(f, v) for f, v in zip(self.key, key, strict=True))

    def query(self, where: Mapping[str, Any] | None = None, order_by: str | Sequence[str] = (),
              limit: int | None = None, offset: int = 0) -> Query:
        """A :class:`Query` of this table; fields are checked against the key and the lookups."""
        conditions: list[tuple[str, str, Any]] = []
        for field, wanted in (where or {}).items():
            if field not in self.searchable:
                raise TableQueryError(
                    f"{qualname(self.row)}.{field} is not a key or a lookup of {self!r}; add it to the table's "
                    "lookups, so every backend can find rows by it.")
            if isinstance(wanted, Range):
                if wanted.low is not None:
                    conditions.append((field, ">=" if wanted.include_low else ">", self.codec.value(field, wanted.low)))
                if wanted.high is not None:
                    conditions.append((field, "<=" if wanted.include_high else "<",
                                       self.codec.value(field, wanted.high)))
            elif wanted is None:
                raise TableQueryError(f"Finding {field} = None is not supported; a lookup matches values.")
            else:
                conditions.append((field, "=", self.codec.value(field, wanted)))
        order: list[tuple[str, bool]] = []
        for spec in (order_by,) if isinstance(order_by, str) else order_by:
            field = spec.lstrip("-")
            if field not in self.codec.index:
                raise TableQueryError(f"{qualname(self.row)} has no field {field!r} to order by.")
            order.append((field, spec.startswith("-")))
        order += [(f, False) for f in self.key if f not in {o for o, _ in order}]
        if limit is not None and (type(limit) is not int or limit < 0):
            raise TableQueryError(f"limit must be a whole number from 0, not {limit!r}")
        if type(offset) is not int or offset < 0:
            raise TableQueryError(f"offset must be a whole number from 0, not {offset!r}")
        return Query(tuple(conditions), tuple(order), limit, offset)


def _as_key(key: Any) -> tuple[Any, ...]:
    return (key,)


def tables_by_attribute(projection: type) -> dict[str, Table[Any]]:
    """The tables a projection class declares (its own and inherited), bound to it, by attribute name."""
    found: dict[str, Table[Any]] = {}
    for klass in reversed(projection.__mro__):
        for attribute, value in vars(klass).items():
            if isinstance(value, Table):
                found[attribute] = getattr(projection, attribute)
    return found


def tables_of(projection: type) -> list[Table[Any]]:
    """The tables a projection class declares, bound to it, in declaration order."""
    return list(tables_by_attribute(projection).values())


__all__ = ["Adding", "Codec", "Patcher", "Patching", "Prefix", "Query", "Range", "Table", "codec",
           "tables_by_attribute", "tables_of"]
