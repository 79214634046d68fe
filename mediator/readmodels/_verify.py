"""Checked rebuilds: a rebuild's generation compared with the live one, at the same position of the log.

A projection that sets ``verify_rebuilds = True`` has each rebuild compared with the generation queries read
before it is swapped in, table by typed table: the rows of each, a digest of each (independent of row order),
and the keys whose rows differ (the first few shown, with what differs).

- A rebuild by the same version (repairing drift) is swapped in whatever it finds: the differences are the report
  of what was wrong, logged and kept (:attr:`Rebuilds.checks`).
- A rebuild by a new version (an upgrade) is held at the live generation's checkpoint until it has been compared
  there, and swapped in only if every difference is one the new version declares
  (``expected_changes = {"table": ("column", ...)}``, or ``"*"`` for a whole table, its rows and shape); any
  other difference keeps the live generation and holds the rebuild, logged as an error, until an operator
  accepts it (``engine.rebuilds.accept(name)``, ``rebuild NAME --accept-differences``) or cancels it.

Typed tables only: the raw tables a projection makes in ``setup`` are not compared. Each table is compared in
memory (one generation's rows kept by key while the other's are read), about the size of the table once.
"""

from __future__ import annotations

import hashlib
import marshal
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import StorageError
from ._tables import Query, Table

if TYPE_CHECKING:
    from ._engine import ReadModels
    from ._projections import Projection

EXAMPLES = 5
"""Differing keys shown per table."""
WHOLE = "*"
"""In ``expected_changes``: the whole table may differ (its rows, and its columns)."""


@attrs.frozen
class TableDiff:
    """How one typed table of a rebuild compares with the live generation's."""

    table: str
    live_rows: int
    new_rows: int
    live_digest: str
    new_digest: str
    differing: int
    """Keys whose rows differ, those in one generation only included."""
    examples: tuple[str, ...]
    """The first few differing keys, each with what differs."""
    unexpected: int
    """Of :attr:`differing`, those the projection's ``expected_changes`` do not allow."""
    note: str = ""
    """Why the table could not be compared row by row, if it could not."""

    @property
    def same(self) -> bool:
        return self.differing == 0 and not self.note


@attrs.frozen
class RebuildCheck:
    """A rebuild compared with the live generation (:class:`~mediator.readmodels.Rebuilds`)."""

    projection: str
    live_generation: int
    new_generation: int
    position: int
    """The position of the log both generations had reached."""
    upgrade: bool
    """Whether the rebuild is by a newer version of the projection (else it repairs the same version)."""
    tables: tuple[TableDiff, ...]

    @property
    def same(self) -> bool:
        """Whether the generations hold the same rows."""
        return all(t.same for t in self.tables)

    @property
    def unexpected(self) -> bool:
        """Whether an upgrade differs where its version does not say it changes (a repair never does)."""
        return self.upgrade and any(t.unexpected for t in self.tables)

    def summary(self) -> str:
        """One line per table, then the examples."""
        lines = [f"{self.projection}: generation {self.new_generation} against {self.live_generation} at position "
                 f"{self.position}: " + ("the same" if self.same else "different"
                                          + (" where the new version does not say it changes" if self.unexpected
                                             else ""))]
        for t in self.tables:
            lines.append(f"  {t.table}: {t.live_rows} rows live, {t.new_rows} rebuilt, {t.differing} differing"
                         + (f" ({t.unexpected} unexpected)" if self.upgrade and t.unexpected else "")
                         + (f"; {t.note}" if t.note else ""))
            lines += [f"    {example}" for example in t.examples]
        return "\n".join(lines)


def compare(engine: ReadModels, name: str, live: int, new: int, upgrade: bool) -> RebuildCheck | None:
    """Compare generation ``new`` of projection ``name`` with ``live``; ``None`` unless both are at the same
    position throughout (read in one snapshot where the storage has them; else checked before and after)."""
    storage = engine.storage
    projection = engine._tracks[name].projection
    with storage.snapshot():
        # Of a partitioned projection: each partition of the rebuild where the same one of the live generation is.
        before = engine.positions(name, live), engine.positions(name, new)
        if before[0] != before[1]:
            return None
        tables = tuple(_compare_table(engine, projection, table, live, new) for table in projection.tables)
        after = engine.positions(name, live), engine.positions(name, new)
    if after != before:
        return None
    return RebuildCheck(name, live, new, min(before[0]), upgrade, tables)


def _rows(engine: ReadModels, table: Table[Any], generation: int) -> list[Sequence[Any]]:
    everything = Query((), tuple((field, False) for field in table.key), None, 0)
    return list(engine.storage.select_rows(table, table.physical(generation), everything))


def _digest(rows: Mapping[tuple[Any, ...], Sequence[Any]]) -> str:
    """A digest of the rows whatever their order: the sum of each row's SHA-256, modulo 2**256."""
    total = 0
    for values in rows.values():
        total += int.from_bytes(hashlib.sha256(marshal.dumps(tuple(values), 2)).digest(), "big")
    return f"{total % (1 << 256):064x}"


def _compare_table(engine: ReadModels, projection: Projection, table: Table[Any], live: int,
                   new: int) -> TableDiff:
    expected: Mapping[str, Collection[str]] = getattr(projection, "expected_changes", {})
    allowed = expected.get(table.name, ())
    whole = WHOLE in allowed
    try:
        live_rows = {table.key_of(values): values for values in _rows(engine, table, live)}
        new_rows = {table.key_of(values): values for values in _rows(engine, table, new)}
    except (StorageError, TypeError, ValueError, KeyError, IndexError) as exc:
        return TableDiff(table.name, 0, 0, "", "", 0, (), 0 if whole else 1,
                         note=f"not comparable with this version's columns ({type(exc).__name__}: {exc})")
    names = table.codec.names
    examples: list[str] = []
    differing = unexpected = 0
    for key in sorted({*live_rows, *new_rows}, key=repr):
        old, fresh = live_rows.get(key), new_rows.get(key)
        if old is not None and fresh is not None and tuple(old) == tuple(fresh):
            continue
        differing += 1
        if old is None or fresh is None:
            what = "only in the rebuild" if old is None else "only in the live generation"
            surprise = not whole
        else:
            changed = [i for i, (a, b) in enumerate(zip(old, fresh, strict=False)) if a != b]
            changed += list(range(min(len(old), len(fresh)), max(len(old), len(fresh))))
            what = ", ".join(f"{names[i] if i < len(names) else i}: {_short(old, i)} -> {_short(fresh, i)}"
                             for i in changed)
            surprise = not whole and any((names[i] if i < len(names) else "") not in allowed for i in changed)
        unexpected += surprise
        if len(examples) < EXAMPLES:
            examples.append(f"{_key_text(key)}: {what}")
    return TableDiff(table.name, len(live_rows), len(new_rows), _digest(live_rows), _digest(new_rows), differing,
                     tuple(examples), unexpected)


def _short(values: Sequence[Any], index: int) -> str:
    if index >= len(values):
        return "(none)"
    text = repr(values[index])
    return text if len(text) <= 40 else text[:37] + "..."


def _key_text(key: tuple[Any, ...]) -> str:
    return repr(key[0]) if len(key) == 1 else repr(key)
