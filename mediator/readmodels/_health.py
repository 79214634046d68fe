"""Readiness: whether the read models are fresh enough to serve, by rules an operator sets per projection.

A service is *ready* while every projection it reads is

- behind the log by no more than ``max_lag`` seconds: the age of the oldest event its checkpoint has not reached
  (what the runner has yet to do, parked events apart);
- holding no parked or blocked event older than ``max_parked`` seconds (what failed, and waits for a retry or
  an operator);
- built by this code's version (a read model being rebuilt for a new version answers no query until it is
  swapped in).

``engine.health.ready_when(Readiness(...), projection=...)`` sets the rule, for one projection or (without a
name) for every one without its own. The FastAPI embedding's ``health_routes`` answers a readiness probe from it,
and ``python -m mediator.readmodels status --check`` exits non-zero under the same rule.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import ProjectionConfigError

if TYPE_CHECKING:
    from ._engine import ReadModels


def _seconds(value: float | None) -> float | None:
    if value is not None and not (isinstance(value, int | float) and value >= 0):
        raise ProjectionConfigError(f"{value!r}: a number of seconds from 0, or None for no limit.")
    return value


@attrs.frozen(kw_only=True)
class Readiness:
    """A projection's readiness rule (``None``: no limit)."""

    max_lag: float | None = attrs.field(default=30.0, converter=_seconds)
    """Seconds the oldest event past the projection's checkpoint may wait."""
    max_parked: float | None = attrs.field(default=300.0, converter=_seconds)
    """Seconds the oldest parked (or blocked) event may wait."""


@attrs.frozen
class ProjectionHealth:
    """One projection measured against its rule."""

    projection: str
    lag_seconds: float
    oldest_parked_seconds: float
    rule: Readiness
    reasons: tuple[str, ...]
    """Why it is not ready (empty when it is)."""

    @property
    def ready(self) -> bool:
        return not self.reasons


@attrs.frozen
class HealthReport:
    """Every projection measured against its rule: ready when all are."""

    projections: tuple[ProjectionHealth, ...]

    @property
    def ready(self) -> bool:
        return all(p.ready for p in self.projections)

    @property
    def problems(self) -> list[str]:
        """One line per reason a projection is not ready."""
        return [f"{p.projection}: {reason}" for p in self.projections for reason in p.reasons]

    def body(self) -> dict[str, Any]:
        """As JSON for a readiness endpoint."""
        return {"status": "ready" if self.ready else "not ready",
                "projections": {p.projection: {"ready": p.ready, "lag_seconds": p.lag_seconds,
                                               "oldest_parked_seconds": p.oldest_parked_seconds,
                                               "max_lag": p.rule.max_lag, "max_parked": p.rule.max_parked,
                                               "reasons": list(p.reasons)} for p in self.projections}}


class Health:
    """The readiness rules of one engine, and the check by them (``engine.health``)."""

    def __init__(self, engine: ReadModels) -> None:
        self.engine = engine
        self.rules: dict[str | None, Readiness] = {None: Readiness()}
        """The rule of each projection named, and (under ``None``) of the others."""

    def ready_when(self, rule: Readiness, *, projection: str | None = None) -> Health:
        """Set the rule of ``projection``, or of every projection without one of its own."""
        if projection is not None:
            self.engine._track(projection)  # raises UnknownProjectionError
        self.rules[projection] = rule
        return self

    def rule(self, projection: str) -> Readiness:
        return self.rules.get(projection, self.rules[None])

    def check(self) -> HealthReport:
        """Measure every projection against its rule, now (reads the storage: call it off an event loop)."""
        engine, storage = self.engine, self.engine.storage
        head = storage.head()
        now = time.time()
        found = []
        for name, track in engine._tracks.items():
            rule = self.rule(name)
            current = storage.current_generation(name)
            checkpoint = engine.checkpoint(name, current)  # a partitioned one: its furthest behind partition's
            lag = engine._age(checkpoint + 1, now) if checkpoint < head else 0.0
            letters = engine.dead_letters(name)
            parked = engine._age(letters[0].position, now) if letters else 0.0
            reasons = []
            built_by = engine.built_by(name, current, record=False)
            if built_by != track.version:
                reasons.append(f"its read model was built by version {built_by}, not this code's {track.version} "
                               "(a rebuild replaces it)")
            if rule.max_lag is not None and lag > rule.max_lag:
                reasons.append(f"{lag:.1f} s behind the log, over {rule.max_lag:g} s")
            if rule.max_parked is not None and parked > rule.max_parked:
                reasons.append(f"an event parked {parked:.1f} s ago, over {rule.max_parked:g} s")
            found.append(ProjectionHealth(name, lag, parked, rule, tuple(reasons)))
        return HealthReport(tuple(found))
