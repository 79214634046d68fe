"""The one code generator: small functions compiled from source once, when something is built, never per call.

As attrs does for ``__init__``: the source is registered with ``linecache``, so a traceback through generated
code shows its lines, and the names inside it are derived from what they stand for (``make_orders``,
``handle``), so the source reads like code a person wrote.

>>> namespace = Namespace({"greeting": "hello"})
>>> who = namespace.add("name of", str.upper)
>>> say = function("say", ["name"], [f"return greeting + ' ' + {who}(name)"], namespace, about="a doctest")
>>> say("ada")
'hello ADA'
>>> print("".join(linecache.getlines(say.__code__.co_filename)), end="")
def say(name):
    return greeting + ' ' + name_of(name)
"""

from __future__ import annotations

import builtins
import itertools
import keyword
import linecache
import re
from collections.abc import Callable, Iterable
from typing import Any

_counter = itertools.count(1)
_NOT_NAME = re.compile(r"\W+")
_TAKEN = frozenset({
    # parameters and locals of generated functions, which would hide a global of the same name
    "message", "event", "scope", "instance", "data", "extra", "v",
    "found", "problems", "collection", "mapping", "index", "key",
    # the generated functions themselves, defined in the same globals
    "call", "make", "get", "publish", "convert", "encode", "read_fields", "check",
    # builtins the generated code calls
    *dir(builtins),
})
"""Names :meth:`Namespace.add` never hands out."""


class Namespace(dict[str, Any]):
    """The globals of a generated function: each value added under a readable name, unique within it."""

    def add(self, hint: str, value: Any) -> str:
        """Put ``value`` in the namespace under a name made from ``hint`` (suffixed if taken); return the name.

        The same value added twice gets the same name.
        """
        for name, present in self.items():
            if present is value and not name.startswith("__"):
                return name
        base = _NOT_NAME.sub("_", hint).strip("_").lower() or "value"
        if base[0].isdigit() or keyword.iskeyword(base):
            base = f"_{base}"
        name, suffix = base, 2
        while name in self or name in _TAKEN:
            name, suffix = f"{base}_{suffix}", suffix + 1
        self[name] = value
        return name


def function(name: str, params: Iterable[str], lines: Iterable[str], namespace: dict[str, Any], *,
             about: str, is_async: bool = False) -> Callable[..., Any]:
    """Compile ``def name(params): lines`` with ``namespace`` as its globals, and return it.

    ``about`` names what it was generated for, in the file name tracebacks show
    (``<mediator say for a doctest #3>``).
    """
    if name in namespace:
        raise ValueError(f"The generated function {name!r} would replace a global of the same name.")
    body = "".join(f"    {line}\n" for line in lines) or "    pass\n"
    source = f"{'async ' if is_async else ''}def {name}({', '.join(params)}):\n{body}"
    filename = f"<mediator {name} for {about} #{next(_counter)}>"
    # A plain dict as the globals, never the Namespace itself: CPython caches global lookups only in exact dicts,
    # and a generated function runs on every dispatch.
    globals_ = dict(namespace)
    exec(compile(source, filename, "exec"), globals_)  # build-time code generation, never per call
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    generated: Callable[..., Any] = globals_[name]
    return generated
