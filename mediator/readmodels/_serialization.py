"""Events to JSON and back, by registered, versioned type names: no pickle, no eval.

An event class is registered under a stable name and a version. Stored data
carries both; reading data of an older version runs the registered upcasters,
one version step at a time, before the class is built. Unknown names and data
that no longer fits raise :class:`UndecodableEventError`, which the projection runner
parks with its reason instead of crashing; decoding raises nothing else, whatever a row holds.

Nothing is stored that cannot be read back: before an event is encoded, its fields are checked against their
annotations (the checker ``Validation(check_types=True)`` runs on messages), and an event that fails is refused
with :class:`EventFieldError`, so the command recording it fails and writes nothing. The decoder holds numbers to
the same rules (whole numbers within 64 bits, finite floats and decimals).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import json.scanner
import math
import reprlib
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .. import _codegen
from .._fields import INT_MAX, INT_MIN, Problems, field_checker
from .._messages import Event, qualname
from ._errors import EventFieldError, EventRegistrationError, UndecodableEventError, UnregisteredEventError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@attrs.frozen
class EventType:
    """One registered event class: its stable name, current version and upcasters by from-version."""

    cls: type
    name: str
    version: int
    upcasters: Mapping[int, Upcaster]


class EventTypes:
    """The registry of event classes that may be stored, by stable name.

    >>> import attrs
    >>> from mediator import Event
    >>> @attrs.frozen(kw_only=True)
    ... class Renamed(Event):
    ...     customer_id: str
    ...     name: str
    >>> types = EventTypes()
    >>> types.register(Renamed, name="customer.renamed", version=2,
    ...                upcasters={1: lambda d: {"customer_id": d["id"], "name": d["name"]}})
    >>> types.decode("customer.renamed", 1, '{"id": "c1", "name": "Ada"}')
    Renamed(customer_id='c1', name='Ada')
    """

    def __init__(self) -> None:
        self._by_class: dict[type, EventType] = {}
        self._by_name: dict[str, EventType] = {}
        self.classes = self._by_class.keys()
        """The registered classes (a live view: ``cls in types.classes`` is one lookup, for hot paths)."""

    def register(
        self, cls: type, *, name: str | None = None, version: int = 1, upcasters: Mapping[int, Upcaster] | None = None
    ) -> None:
        """Register ``cls`` (an attrs ``Event``) under ``name`` (its qualified name by default)."""
        if not (isinstance(cls, type) and issubclass(cls, Event) and attrs.has(cls)):
            raise EventRegistrationError(f"{qualname(cls)} is not an attrs Event class; only those can be stored.")
        entry = EventType(cls, name or qualname(cls), version, dict(upcasters or {}))
        missing = [v for v in range(1, version) if v not in entry.upcasters]
        if missing:
            raise EventRegistrationError(
                f"{qualname(cls)} is at version {version} but has no upcaster from version(s) {missing}; "
                "register one per older version (each returns the next version's data)."
            )
        known = self._by_name.get(entry.name)
        if known is not None and known.cls is not cls:
            raise EventRegistrationError(f"The event name {entry.name!r} is already used by {qualname(known.cls)}.")
        self._by_class[cls] = entry
        self._by_name[entry.name] = entry

    def __contains__(self, cls: object) -> bool:
        return cls in self._by_class

    def entry(self, cls: type) -> EventType:
        """The registration of ``cls``.

        Raises:
            UnregisteredEventError: naming the fix, if there is none.
        """
        try:
            return self._by_class[cls]
        except KeyError:
            raise UnregisteredEventError(cls) from None

    def entries(self) -> Mapping[str, EventType]:
        """Every registration by name (read-only view, for hot loops)."""
        return types.MappingProxyType(self._by_name)

    def decoder(self, entry: EventType) -> Callable[[str], Any]:
        """A function decoding data stored at ``entry``'s current version (no upcasting).

        Whatever the data, it returns the event or raises :class:`UndecodableEventError`, never anything else.
        """
        convert = _CONVERTERS.get(entry.cls) or _CONVERTERS.setdefault(entry.cls, _converter(entry.cls))
        loads = json.loads
        scan = _SCAN
        # Stored data is what encode wrote: one JSON object, no surrounding whitespace. The C scanner reads it
        # without json.loads's wrapping (about half its cost for a small event); anything else takes loads.

        def decode(data: str) -> Any:
            fields = None
            try:
                try:
                    fields, end = scan(data, 0)
                except StopIteration:
                    fields, end = loads(data), len(data)
                if end != len(data):
                    fields = loads(data)  # raises for trailing data, or skips trailing whitespace
                return convert(fields)
            except Exception as exc:
                raise UndecodableEventError(entry.name, entry.version, _reason(exc, fields)) from exc

        return decode

    def named(self, name: str) -> type | None:
        """The class registered under ``name``, if any."""
        entry = self._by_name.get(name)
        return entry.cls if entry else None

    def encode(self, event: object) -> tuple[str, int, str]:
        """Return ``(name, version, json)`` for an event.

        The event's fields are checked against their annotations first (as ``Validation(check_types=True)``
        checks a message's), so nothing is stored that :meth:`decode` would refuse.

        Raises:
            UnregisteredEventError: if the event's class is not registered.
            EventFieldError: naming each field whose value does not fit its declared type.
        """
        entry = self.entry(type(event))
        try:
            return entry.name, entry.version, _dumps(_encoder(entry.cls)(event))
        except RecursionError:  # a field not checked (``Any``) holding something nested too deep for JSON
            raise EventFieldError(event, _too_deep(event)) from None

    def decode(self, name: str, version: int, data: str) -> Any:
        """Rebuild the event stored as ``(name, version, data)``, upcasting old versions.

        Whatever the row holds, it returns the event or raises :class:`UndecodableEventError`, never anything else.
        """
        entry = self._by_name.get(name) if isinstance(name, str) else None
        if entry is None:
            raise UndecodableEventError(name, version, "no event type is registered under this name")
        if type(version) is not int:
            raise UndecodableEventError(name, version, f"its version {_short.repr(version)} is not a whole number")
        if version > entry.version:
            raise UndecodableEventError(name, version, f"newer than the registered version {entry.version}")
        if version < 1:
            raise UndecodableEventError(name, version, "versions start at 1")
        fields = None
        try:
            fields = json.loads(data)
            for step in range(version, entry.version):
                fields = entry.upcasters[step](fields)
            return from_data(entry.cls, fields)
        except UndecodableEventError:
            raise
        except Exception as exc:
            raise UndecodableEventError(name, version, _reason(exc, fields)) from exc


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_ENCODERS: dict[type, Callable[[Any], Any]] = {}
_PLAIN = (str, int, float, bool, type(None))
_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 2, 40, 40


def _encoder(cls: type) -> Callable[[Any], Any]:
    """``to_data`` for one attrs class, generated once: the fields checked, plain ones copied, the rest converted."""
    encode = _ENCODERS.get(cls)
    if encode is None:
        check = field_checker(cls)  # resolves the annotations as get_type_hints does, or raises naming them
        hints = typing.get_type_hints(cls)
        parts = []
        for field in attrs.fields(cls):
            plain = hints.get(field.name) in _PLAIN
            value = f"event.{field.name}"
            parts.append(f"{field.name!r}: {value if plain else f'to_data({value})'}")
        namespace = _codegen.Namespace(to_data=to_data)
        lines = []
        if check is not None:  # checked first: a plain field is copied as it is, so it must be what it says
            checked, refuse = namespace.add("check fields", check), namespace.add("refuse", _refuse)
            lines += [f"if problems := {checked}(event):", f"    {refuse}(event, problems)"]
        lines.append(f"return {{{', '.join(parts)}}}")
        encode = _ENCODERS[cls] = _codegen.function("encode", ["event"], lines, namespace,
                                                    about=f"event {qualname(cls)}")
    return encode


def _refuse(event: object, problems: Problems) -> None:
    errors: dict[str, list[str]] = {}
    for field, problem in problems:
        errors.setdefault(field, []).append(problem)
    raise EventFieldError(event, errors)


def _too_deep(event: object) -> dict[str, list[str]]:
    """The fields of ``event`` too deeply nested to store (found again one by one, as the event failed)."""
    found: dict[str, list[str]] = {}
    for field in attrs.fields(typing.cast(Any, type(event))):
        try:
            _dumps(to_data(getattr(event, field.name)))
        except RecursionError:
            found[field.name] = ["is nested too deeply to store"]
        except Exception:  # another problem of this field (the one looked for is depth)
            continue
    return found or {"": ["is nested too deeply to store"]}


def _reason(exc: BaseException, fields: Any) -> str:
    """Why stored data could not be decoded, for the dead letter: the error, or that it is no JSON object."""
    if fields is not None and not isinstance(fields, dict):
        return f"the data is a JSON {type(fields).__name__}, not an object"
    return f"{type(exc).__name__}: {exc}"


def to_data(value: Any) -> Any:
    """Turn a value of a supported type into JSON-compatible data.

    Dispatched on the value's exact class, each class's conversion worked out once (an attrs class gets a
    generated function reading its fields by name): nested rows and event fields are converted per value written.
    """
    convert = _TO_DATA.get(type(value))
    if convert is None:
        convert = _to_data_for(type(value))
    return convert(value)


def _same(value: Any) -> Any:
    return value


def _items(value: Any) -> list[Any]:
    return [to_data(v) for v in value]


def _mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): to_data(v) for k, v in value.items()}


def _enum_data(member: enum.Enum) -> Any:
    return to_data(member.value)


def _to_data_for(cls: type) -> Callable[[Any], Any]:
    """How :func:`to_data` converts instances of ``cls``, cached (the checks in the order of the original chain, so
    a ``bool`` or an ``IntEnum`` is kept as it is and a ``str`` enum is a ``str``)."""
    convert: Callable[[Any], Any]
    if cls is type(None) or issubclass(cls, bool | int | float | str):
        convert = _same
    elif attrs.has(cls):
        namespace = _codegen.Namespace()
        dump = namespace.add("to_data", to_data)
        parts = ", ".join(f"{f.name!r}: {dump}(value.{f.name})" for f in attrs.fields(cls))
        convert = _codegen.function("convert", ["value"], [f"return {{{parts}}}"], namespace,
                                    about=f"data of {qualname(cls)}")
    elif issubclass(cls, decimal.Decimal | uuid.UUID):
        convert = str
    elif issubclass(cls, dt.datetime | dt.date):
        convert = cls.isoformat
    elif issubclass(cls, enum.Enum):
        convert = _enum_data
    elif issubclass(cls, list | tuple | frozenset | set):
        convert = _items
    elif issubclass(cls, Mapping):
        convert = _mapping
    else:
        raise TypeError(f"Cannot store a {qualname(cls)} in an event; use a JSON-friendly type.")
    _TO_DATA[cls] = convert
    return convert


_TO_DATA: dict[type, Callable[[Any], Any]] = {}
"""How each class's values turn into JSON-compatible data: a cache of generated code, not a registry."""


def _finite_decimal(data: Any) -> decimal.Decimal:
    value = decimal.Decimal(data)
    if not value.is_finite():
        raise ValueError(f"{_short.repr(data)} is not a finite decimal number")
    return value


_PARSERS: dict[Any, Callable[[Any], Any]] = {
    decimal.Decimal: _finite_decimal,
    uuid.UUID: uuid.UUID,
    dt.datetime: dt.datetime.fromisoformat,
    dt.date: dt.date.fromisoformat,
}

_CONVERTERS: dict[Any, Callable[[Any], Any]] = {}


def _converter_of(tp: Any) -> Callable[[Any], Any]:
    """The cached conversion of JSON-compatible data into a ``tp``, worked out on first use."""
    convert = _CONVERTERS.get(tp)
    if convert is None:
        convert = _CONVERTERS[tp] = _converter(tp)
    return convert


def from_data(tp: Any, data: Any) -> Any:
    """Build a value of type ``tp`` from JSON-compatible data (the inverse of :func:`to_data`).

    The conversion for each type is worked out once and cached, so decoding an
    event is a few plain calls per field rather than an inspection of its type.
    """
    convert = _CONVERTERS.get(tp)
    if convert is None:
        convert = _CONVERTERS[tp] = _converter(tp)
    return convert(data)


_SCAN: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: the C scanner


def _identity(data: Any) -> Any:
    return data


def _converter(tp: Any) -> Callable[[Any], Any]:  # one branch per kind of type
    if tp is Any or tp is object:
        return _identity
    origin = typing.get_origin(tp)
    if origin is typing.Union or isinstance(tp, types.UnionType):
        return lambda data: _from_union(tp, data)
    if origin is typing.Literal:
        return _identity
    if origin in (tuple, list, set, frozenset) or tp in (tuple, list, set, frozenset):
        args = typing.get_args(tp)
        if not (origin is tuple and args and args[-1] is not Ellipsis):
            return _homogeneous(origin or tp, args[0] if args else Any)
        return lambda data: _from_collection(tp, origin, data)
    if origin in (dict, Mapping) or tp is dict:
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return lambda data: {from_data(key_type, k): from_data(value_type, v) for k, v in data.items()}
    if isinstance(tp, type) and attrs.has(tp):
        return _attrs_converter(tp)
    if tp in _PARSERS:
        return _PARSERS[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if tp in (str, int, float, bool):
        return _checker(tp)
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    return _identity if supertype is None else (lambda data: from_data(supertype, data))


def _attrs_converter(cls: type) -> Callable[[Any], Any]:
    """Generate ``convert(data) -> cls(field=convert_field(data["field"]), ...)`` once per class."""
    hints = typing.get_type_hints(cls)
    namespace = _codegen.Namespace()
    build = namespace.add(cls.__name__, cls)
    required, optional = [], []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        hint = hints.get(field.name, Any)
        convert = namespace.add(f"convert_{field.name}", _CONVERTERS.get(hint) or _converter(hint))
        name = field.alias or field.name
        value = f"data[{field.name!r}]"
        if hint in (str, int, float, bool):  # the common case inline: no call when the JSON value is already right
            value = f"(v if {_INLINE[hint].format(first=f'v := {value}')} else {convert}(v))"
        else:
            value = f"{convert}({value})"
        if field.default is attrs.NOTHING:
            required.append(f"{name}={value}")
        else:
            optional.append(f"if {field.name!r} in data: extra[{name!r}] = {value}")
    lines = ["extra = {}", *optional, f"return {build}({', '.join(required)}, **extra)"]
    return _codegen.function("convert", ["data"], lines, namespace, about=f"event {qualname(cls)}")


_INLINE = {
    str: "type({first}) is str",
    bool: "type({first}) is bool",
    int: f"type({{first}}) is int and {INT_MIN} <= v <= {INT_MAX}",
    float: "type({first}) is float and -1e999 < v < 1e999",  # 1e999 is infinity: NaN and infinities go to the call
}
"""A value of these types decodes with no call when this holds: what the encoder's field check lets through."""


def _checker(tp: type) -> Callable[[Any], Any]:
    """Decode a JSON value of type ``tp`` exactly, numbers within what the encoder stores (64 bits, finite)."""
    def check(data: Any) -> Any:
        if tp in (int, float) and type(data) is int:
            if not INT_MIN <= data <= INT_MAX:
                raise ValueError(f"{_short.repr(data)} is beyond the 64-bit range")
            return float(data) if tp is float else data
        if tp is float and type(data) is float:
            if not math.isfinite(data):
                raise ValueError(f"{data} is not a finite number")
            return data
        if type(data) is tp and tp in (str, bool):
            return data
        raise TypeError(f"expected {tp.__name__}, got {_short.repr(data)}")

    return check


def _from_union(tp: Any, data: Any) -> Any:
    options = typing.get_args(tp)
    if data is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return from_data(option, data)
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            errors.append(exc)
    raise ValueError(f"{_short.repr(data)} fits none of {tp}: {errors}")


def _homogeneous(build: Callable[[Any], Any], item_type: Any) -> Callable[[Any], Any]:
    """Convert a JSON array into ``build`` (``tuple``, ``list``, ...) of ``item_type`` items, the items' converter
    looked up on first use (a class may hold a collection of itself)."""
    found: list[Callable[[Any], Any]] = []

    def convert(data: Any) -> Any:
        if not found:
            found.append(_converter_of(item_type))
        if type(data) is not list and type(data) is not tuple:  # text or an object is no array (not its letters)
            raise TypeError(f"expected an array, got {_short.repr(data)}")
        return build(map(found[0], data))

    return convert


def json_converter(tp: Any) -> Callable[[str], Any]:
    """Decode JSON text written by ``dumps(to_data(value))`` into a value of type ``tp``: the C scanner for the
    compact text the encoder writes (``json.loads`` for anything else), then the type's cached converter."""
    convert = _converter_of(tp)
    loads, scan = json.loads, _SCAN

    def decode(data: str) -> Any:
        try:
            value, end = scan(data, 0)
        except StopIteration:
            return convert(loads(data))
        return convert(value if end == len(data) else loads(data))

    return decode


def _from_collection(tp: Any, origin: Any, data: Any) -> Any:
    args = typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
        items = [from_data(a, d) for a, d in zip(args, data, strict=True)]
    else:
        item_type = args[0] if args else Any
        items = [from_data(item_type, d) for d in data]
    return (origin or tp)(items)
