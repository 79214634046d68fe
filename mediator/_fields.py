"""Typed-field checks: each field of an attrs class holds what its annotation says, as stored JSON will carry it.

A checker is generated once per class (by :mod:`._codegen`, from the class's resolved type hints) and returns the
``(field, problem)`` pairs validators yield, ``()`` when every field is fine. It accepts what the event decoder of
:mod:`mediator.readmodels` reads back: ``int`` is not ``bool`` and fits in 64 bits (SQLite's INTEGER, PostgreSQL's
BIGINT), ``float`` and ``Decimal`` are finite, text has no NUL character and no lone surrogate. Collections and
nested attrs classes are checked item by item, as deep as the annotation goes and no deeper; ``Any`` and types
it does not know are not checked. :class:`~mediator.Validation` runs it with ``check_types=True``; the read-model
engine runs it on every event before storing it.

>>> import attrs
>>> @attrs.frozen(kw_only=True)
... class Item:
...     sku: str
...     quantity: int
>>> @attrs.frozen(kw_only=True)
... class Basket:
...     items: tuple[Item, ...]
...     note: str | None = None
>>> check = field_checker(Basket)
>>> check(Basket(items=(Item(sku="a", quantity=1),)))
()
>>> for field, problem in check(Basket(items=(Item(sku="a\\x00", quantity=True),), note=3)):
...     print(f"{field}: {problem}")
items[0].sku: must not contain NUL characters
items[0].quantity: must be a whole number
note: must be text
"""

# No ``from __future__ import annotations``: the doctest above defines classes whose annotations must resolve.
import datetime as dt
import decimal
import enum
import math
import re
import reprlib
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import _codegen
from ._errors import UnresolvedAnnotationsError

Problems = tuple[tuple[str, str], ...]
"""``(field, problem)`` pairs; the field is a dotted path (``items[0].quantity``), ``""`` for the value itself."""

FieldChecker = Callable[[Any], Problems]
"""A generated checker: the problems of one value (``()`` when it is fine)."""

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""The integers every storage holds: a signed 64-bit range."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_NUL = (("", "must not contain NUL characters"),)
_LONE_SURROGATE = (("", "must not contain lone surrogate characters"),)
_OUT_OF_RANGE = (("", f"must be between {INT_MIN} and {INT_MAX}"),)
_NOT_FINITE = (("", "must be finite"),)
_TOO_DEEP = (("", "is nested too deeply"),)
_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 2, 40, 40


def field_checker(cls: type) -> FieldChecker | None:
    """The checker of ``cls``'s fields (an attrs class), generated on first use; ``None`` if nothing is checked.

    Raises:
        UnresolvedAnnotationsError: if the annotations of ``cls`` (or of a class they nest) cannot be resolved.
    """
    if cls in _CHECKERS:
        return _CHECKERS[cls]
    checker = _CHECKERS[cls] = _class_checker(cls, nested=False) if attrs.has(cls) else None
    return checker


def value_checker(tp: Any) -> FieldChecker | None:
    """The check of one value annotated ``tp`` (its problems' paths relative to the value); ``None`` if nothing is
    checked. For a field given alone, as ``ProjectionSession.patch`` gives them."""
    rule = _rule(tp)
    return None if rule is None else rule.check


_CHECKERS: dict[type, FieldChecker | None] = {}
"""Compiled once per class, as the event encoders are: a cache of generated code, not a registry."""


@attrs.frozen
class _Rule:
    """How values of one annotation are checked."""

    noun: str
    """What a value must be, after "must be"."""
    check: FieldChecker
    """The full check of one value; its problems' paths are relative to it."""
    fast: Callable[[_codegen.Namespace], str] | None = None
    """An expression in ``v``, true when the value is surely fine (``check`` is then skipped), put in generated
    code; it may be false for a value that is fine (text that is not ASCII): ``check`` then decides."""


def _must_be(noun: str) -> Problems:
    return (("", f"must be {noun}"),)


def within(at: str | int, problems: Problems) -> Problems:
    """``problems`` of a field or item, their paths prefixed with where it is (``items`` + ``[0].sku``)."""
    prefix = f"[{at}]" if isinstance(at, int) else at
    return tuple((prefix + ("" if not path else path if path[0] == "[" else f".{path}"), text)
                 for path, text in problems)


def _key_of(key: Any) -> str:
    return f"[{_short.repr(key)}]"


def _keyed(problems: Problems) -> Problems:
    return tuple((path, f"key {text}") for path, text in problems)


# -- scalars: the full checks, run when the fast expression in generated code is not enough ---------------------


def _text(value: Any) -> Problems:
    if not isinstance(value, str):
        return _must_be("text")
    found: Problems = _NUL if "\x00" in value else ()
    if not value.isascii() and _SURROGATE.search(value):
        found += _LONE_SURROGATE
    return found


def _whole(value: Any) -> Problems:
    if isinstance(value, bool) or not isinstance(value, int):
        return _must_be("a whole number")
    return () if INT_MIN <= value <= INT_MAX else _OUT_OF_RANGE


def _number(value: Any) -> Problems:
    if isinstance(value, int) and not isinstance(value, bool):
        return () if INT_MIN <= value <= INT_MAX else _OUT_OF_RANGE
    if not isinstance(value, float):
        return _must_be("a number")
    return () if math.isfinite(value) else _NOT_FINITE


def _decimal(value: Any) -> Problems:
    if not isinstance(value, decimal.Decimal):
        return _must_be("a decimal number")
    return () if value.is_finite() else _NOT_FINITE


def _instance_of(cls: type, noun: str, but_not: type | None = None) -> FieldChecker:
    problems = _must_be(noun)

    def check(value: Any) -> Problems:
        return () if isinstance(value, cls) and not (but_not and isinstance(value, but_not)) else problems

    return check


def _of_type(cls: type) -> Callable[[_codegen.Namespace], str]:
    return lambda namespace: f"type(v) is {namespace.add(cls.__name__, cls)}"


_SCALARS: dict[Any, _Rule] = {
    str: _Rule("text", _text, lambda _: "type(v) is str and v.isascii() and '\\x00' not in v"),
    int: _Rule("a whole number", _whole, lambda _: f"type(v) is int and {INT_MIN} <= v <= {INT_MAX}"),
    # 1e999 is the float infinity: a NaN or an infinity fails the comparison and goes to the full check.
    float: _Rule("a number", _number, lambda _: "type(v) is float and -1e999 < v < 1e999"),
    bool: _Rule("true or false", _instance_of(bool, "true or false"), lambda _: "type(v) is bool"),
    decimal.Decimal: _Rule("a decimal number", _decimal,
                           lambda ns: f"type(v) is {ns.add('Decimal', decimal.Decimal)} and v.is_finite()"),
    dt.datetime: _Rule("a date and time", _instance_of(dt.datetime, "a date and time"), _of_type(dt.datetime)),
    dt.date: _Rule("a date", _instance_of(dt.date, "a date", but_not=dt.datetime), _of_type(dt.date)),
    uuid.UUID: _Rule("a UUID", _instance_of(uuid.UUID, "a UUID"), _of_type(uuid.UUID)),
    type(None): _Rule("None", _instance_of(type(None), "None"), lambda _: "v is None"),
}


# -- compiling rules from annotations ---------------------------------------------------------------------------


_RULES: dict[Any, _Rule | None] = {}


def _rule(tp: Any) -> _Rule | None:
    """The rule for values annotated ``tp``, made once per annotation; ``None`` if they are not checked."""
    try:
        if tp in _RULES:
            return _RULES[tp]
    except TypeError:  # an annotation that cannot be hashed: made again, at build only
        return _make_rule(tp)
    rule = _make_rule(tp)
    _RULES.setdefault(tp, rule)
    return _RULES[tp]


def _make_rule(tp: Any) -> _Rule | None:  # one branch per kind of annotation
    if tp in _SCALARS:
        return _SCALARS[tp]
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _rule(supertype)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or isinstance(tp, types.UnionType):
        return _union_rule(args)
    if origin is typing.Literal:
        return _literal_rule(args)
    if origin in (tuple, list, set, frozenset) or tp in (tuple, list, set, frozenset):
        return _collection_rule(origin or tp, args)
    if origin in (dict, Mapping) or tp is dict:
        return _mapping_rule(origin or tp, args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = ", ".join(repr(member.value) for member in list(tp)[:10])
        noun = f"a {tp.__name__} ({members})" if len(tp) <= 10 else f"a {tp.__name__}"
        return _Rule(noun, _instance_of(tp, noun), _of_type(tp))
    if isinstance(tp, type) and attrs.has(tp):
        return _attrs_rule(tp)
    return None  # Any, object, a TypeVar, a class this does not know: not checked


def _union_rule(options: tuple[Any, ...]) -> _Rule | None:
    rules = [_rule(option) for option in options]
    if any(rule is None for rule in rules):
        return None  # one option takes anything
    known = typing.cast(list[_Rule], rules)
    noun = " or ".join(rule.noun for rule in known)
    fast = None
    if all(rule.fast is not None for rule in known):
        def fast(namespace: _codegen.Namespace) -> str:
            first = sorted(known, key=lambda rule: rule is not _SCALARS[type(None)])  # None: the cheapest test
            return " or ".join(f"({rule.fast(namespace)})" for rule in first if rule.fast is not None)
    others = [rule for rule in known if rule is not _SCALARS[type(None)]]
    if len(others) == 1:  # ``X | None``: X's own problems, which say more than "must be X or None"
        only = others[0].check
        return _Rule(noun, lambda value: () if value is None else only(value), fast)
    problems = _must_be(noun)

    def check(value: Any) -> Problems:
        return () if any(not rule.check(value) for rule in known) else problems

    return _Rule(noun, check, fast)


def _literal_rule(values: tuple[Any, ...]) -> _Rule:
    noun = "one of " + ", ".join(repr(value) for value in values)
    problems = _must_be(noun)

    def check(value: Any) -> Problems:
        return () if any(type(value) is type(allowed) and value == allowed for allowed in values) else problems

    return _Rule(noun, check)


_NOUNS: dict[Any, str] = {tuple: "a tuple", list: "a list", set: "a set", frozenset: "a frozenset", dict: "a dict",
          Mapping: "a mapping"}


def _item_lines(rule: _Rule, namespace: _codegen.Namespace, at: str) -> list[str]:
    """Generated lines checking ``v`` (one field or item) with ``rule``, adding problems found at ``at``."""
    check = namespace.add(f"check {rule.noun}", rule.check)
    prefix = namespace.add("within", within)
    if rule.fast is not None:
        return [f"if not ({rule.fast(namespace)}):", f"    found += {prefix}({at}, {check}(v))"]
    return [f"if problems := {check}(v):", f"    found += {prefix}({at}, problems)"]


def _collection_rule(origin: type, args: tuple[Any, ...]) -> _Rule:
    noun = _NOUNS[origin]
    namespace = _codegen.Namespace(kind=origin, not_one=_must_be(noun))
    if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed shape: tuple[int, str]
        noun = f"a tuple of {len(args)} item{'s' if len(args) != 1 else ''}"
        namespace["not_one"] = _must_be(noun)
        lines = ["if not isinstance(collection, kind) or len(collection) != " f"{len(args)}:",
                 "    return not_one", "found = ()"]
        for index, arg in enumerate(args):
            item = _rule(arg)
            if item is not None:
                lines += [f"v = collection[{index}]", *_item_lines(item, namespace, str(index))]
        lines.append("return found")
    else:
        item = _rule(args[0]) if args and args[0] is not Ellipsis else None
        lines = ["if not isinstance(collection, kind):", "    return not_one"]
        if item is None:
            lines.append("return ()")
        else:
            body = _item_lines(item, namespace, "index")
            lines += ["found = ()", "for index, v in enumerate(collection):", *(f"    {line}" for line in body),
                      "return found"]
    check = _codegen.function("check", ["collection"], lines, namespace, about=f"checking {noun}")
    return _Rule(noun, typing.cast(FieldChecker, check))


def _mapping_rule(origin: Any, args: tuple[Any, ...]) -> _Rule:
    noun = _NOUNS[origin]
    keys, values = (_rule(args[0]), _rule(args[1])) if len(args) == 2 else (None, None)
    namespace = _codegen.Namespace(kind=origin, not_one=_must_be(noun), key_of=_key_of, keyed=_keyed)
    lines = ["if not isinstance(mapping, kind):", "    return not_one", "found = ()"]
    loop = []
    if keys is not None:
        check_key, prefix = namespace.add("check key", keys.check), namespace.add("within", within)
        loop += [f"if problems := {check_key}(key):", f"    found += {prefix}(key_of(key), keyed(problems))"]
    if values is not None:
        loop += _item_lines(values, namespace, "key_of(key)")
    if loop:
        lines += ["for key, v in mapping.items():", *(f"    {line}" for line in loop)]
    lines.append("return found")
    check = _codegen.function("check", ["mapping"], lines, namespace, about=f"checking {noun}")
    return _Rule(noun, typing.cast(FieldChecker, check))


class _Later:
    """The check of a class whose fields are still being compiled: a class that contains itself."""

    def __init__(self) -> None:
        self.check: FieldChecker = lambda value: ()

    def __call__(self, value: Any) -> Problems:
        return self.check(value)


def _attrs_rule(cls: type) -> _Rule:
    name = cls.__name__
    noun = f"{'an' if name[:1] in 'AEIOUaeiou' else 'a'} {name}"
    later = _Later()
    _RULES[cls] = _Rule(noun, later)  # what a field of its own type uses while its checker is generated
    try:
        later.check = _class_checker(cls, nested=True, noun=noun) or _instance_of(cls, noun)
    except BaseException:
        del _RULES[cls]
        raise
    rule = _RULES[cls] = _Rule(noun, later.check)
    return rule


def _class_checker(cls: type, *, nested: bool, noun: str = "") -> FieldChecker | None:
    """Generate ``check(instance)``: every field of ``cls`` checked in turn, straight-line.

    ``nested``, it first checks that the value is a ``cls`` at all (a field's value may be anything); at the
    top, the caller knows it (the message's type is the one compiled for). ``None`` if no field is checked.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise UnresolvedAnnotationsError(cls, exc) from exc
    namespace = _codegen.Namespace()
    body: list[str] = []
    for field in attrs.fields(cls):
        if field.name not in hints:
            continue
        rule = _rule(hints[field.name])
        if rule is not None:
            body += [f"v = instance.{field.name}", *_item_lines(rule, namespace, repr(field.name))]
    if not body:
        return None
    lines = []
    if nested:
        not_one = namespace.add(f"not {noun}", _must_be(noun))
        lines += [f"if not isinstance(instance, {namespace.add(cls.__name__, cls)}):", f"    return {not_one}"]
    # Only a class that contains itself can nest deep enough to reach the recursion limit; a try costs nothing.
    too_deep = namespace.add("too deep", _TOO_DEEP)
    lines += ["try:", "    found = ()", *(f"    {line}" for line in body), "    return found",
              "except RecursionError:", f"    return {too_deep}"]
    return typing.cast(FieldChecker, _codegen.function(
        "check", ["instance"], lines, namespace, about=f"the fields of {cls.__module__}.{cls.__qualname__}"))
