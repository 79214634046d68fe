"""Peer mediators measured beside this project in the dispatch suite.

Each peer module exposes ``NAME`` (the PyPI distribution name) and
``build(scenario, family) -> Case | None``. A ``Case`` holds a zero-argument
callable doing one dispatch of a pre-built message (for ``async`` it returns an
awaitable), and a ``verify(result)`` that says whether one call computed the
right thing; the harness makes one call, awaits it for ``async``, and passes its
result to ``verify`` before it times anything. ``None`` means the peer cannot express the scenario
in that family (for example a sync-only library asked for ``async``).

Scenarios (the message carries ``value=41``):

- ``send``: one command, its handler returns ``value + 1``.
- ``send_2_behaviours``: the same through two no-op pipeline behaviours.
- ``publish_3``: one event, three handlers, each adds 1 to a counter.
- ``transient_1_dep``: a handler built per dispatch by the peer's container,
  with one singleton dependency ``offset = 1``; returns ``value + offset``.
- ``scoped``: a handler with a dependency that lives for one dispatch scope;
  returns ``value + 1``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

SCENARIOS = ("send", "send_2_behaviours", "publish_3", "transient_1_dep", "scoped")
FAMILIES = ("sync", "async")
PEERS = ("python_cqrs", "lato", "mediatr", "py_mediatr", "kerux")
VALUE = 41


@attrs.frozen
class Case:
    """One timed operation and the check that it computes the right result."""

    call: Callable[[], Any] | Callable[[], Awaitable[Any]]
    verify: Callable[[Any], bool]


def load(module: str) -> Any | None:
    """Import the adapter for one peer, or ``None`` when the peer is not installed."""
    try:
        return importlib.import_module(f"benchmarks.peers.{module}")
    except ImportError:
        return None
