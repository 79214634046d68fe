"""Redis as a read store: projections' read models, checkpoints and dead letters in Redis, their log elsewhere.

Needs the ``redis`` extra (redis-py). A :class:`RedisReadStore` keeps what projections keep in a
:class:`~mediator.readmodels.ReadStore`, for the projections a :class:`~mediator.readmodels.RoutedStorage` routes
to it; the event log and the write model stay in SQLite or PostgreSQL::

    storage = RoutedStorage(PostgresStorage(dsn), {"inventory": RedisReadStore("redis://127.0.0.1:6379/0")})

**Exactly once.** A projection session reads as it goes and writes nothing until it commits; then one
``MULTI``/``EXEC`` applies every row, index and dead-letter change with the new checkpoint, and only if no other
session of that generation committed since this one began (``WATCH`` on the generation's record, whose commit
count every commit moves). A session that lost the race (a runner that lost its lease while paused, say) fails
with a :class:`~mediator.readmodels.StorageError`, which the runner treats as the store failing: the batch is read
again from the new checkpoint, and no event takes effect twice.

**Layout.** Keys start with ``prefix`` and the projection's name in braces, ``mediator:{inventory}:...``, so a
Redis Cluster keeps each projection in one slot. A typed table is a hash of rows (the key as JSON to the stored
values as JSON) and a sorted set per lookup (and one for the key) whose members sort as the values do
(``ZRANGEBYLEX``): finding rows by a lookup reads the index, then the rows. Leases (``SET NX PX``) make one runner
per projection across processes; a lease not renewed for ``lease_seconds`` (a process that died) passes on.

**Reads.** Each read sees the latest commit; :meth:`~RedisReadStore.snapshot` is no snapshot here (reads of two
tables may straddle a commit).
"""

from __future__ import annotations

import contextlib
import json
import struct
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import attrs

from .._errors import MissingExtraError
from ._errors import StorageDataError, StorageError
from ._ports import DeadLetter, Generations, ProjectionSession, ReadStore
from ._tables import BOOLEAN, INTEGER, REAL, Adding, Patching, Query, Table

try:
    import redis
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised by the wheel test
    raise MissingExtraError(__name__, "redis", _missing.name) from _missing

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SEPARATOR = "\x00"  # between the fields of an index entry: no stored text holds a NUL (rows are checked)
_TOP = b"\xff"  # above every byte of UTF-8 text: closes a range of index entries

_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not owner then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_GIVE_UP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (UnicodeEncodeError, redis.DataError) as exc:
        raise StorageDataError(f"Redis refused a value to {action}: {exc}") from exc
    except redis.RedisError as exc:
        raise StorageError(f"Redis failed to {action}: {str(exc).splitlines()[0] if str(exc) else type(exc)}") \
            from exc


def _lex(kind: str, value: Any) -> str:
    """A stored value as text that sorts (byte by byte) as the value does, for index entries."""
    if value is None:
        return ""
    if kind == INTEGER:
        return format(value + 2**63, "020d")
    if kind == BOOLEAN:
        return "1" if value else "0"
    if kind == REAL:
        bits: int = struct.unpack(">Q", struct.pack(">d", value))[0]
        return format(bits ^ (1 << 63) if not bits >> 63 else ~bits & (2**64 - 1), "016x")
    return str(value)


def _key_json(key: Sequence[Any]) -> str:
    return _dumps(list(key))


class _Indexes:
    """The index entries of one typed table's rows: one sorted set for the key, one per lookup."""

    def __init__(self, store: RedisReadStore, table: Table[Any], physical: str) -> None:
        name = str(table.projection)
        codec = table.codec
        self.rows = store._key(name, "t", physical)
        self.sets: list[tuple[str, tuple[int, ...]]] = [(store._key(name, "k", physical),
                                                         tuple(codec.index[f] for f in table.key))]
        for n, lookup in enumerate(table.lookups):
            self.sets.append((store._key(name, f"i{n}", physical), tuple(codec.index[f] for f in lookup)))
        self.fields = [tuple(codec.names[i] for i in at) for _key, at in self.sets]
        self.kinds = [c.kind for c in codec.columns]

    def entry(self, at: tuple[int, ...], values: Sequence[Any], key_json: str) -> str:
        return _SEPARATOR.join([*(_lex(self.kinds[i], values[i]) for i in at), key_json])

    def changes(self, key_json: str, old: Sequence[Any] | None, new: Sequence[Any] | None) -> list[tuple[str, ...]]:
        """The operations that take a row from ``old`` to ``new`` (either ``None``: absent)."""
        ops: list[tuple[str, ...]] = []
        for key, at in self.sets:
            before = None if old is None else self.entry(at, old, key_json)
            after = None if new is None else self.entry(at, new, key_json)
            if before != after:
                if before is not None:
                    ops.append(("zrem", key, before))
                if after is not None:
                    ops.append(("zadd", key, after))
        if new is not None:
            ops.append(("hset", self.rows, key_json, _dumps(list(new))))
        else:
            ops.append(("hdel", self.rows, key_json))
        return ops

    def keys_for(self, client: Any, query: Query, codec: Any) -> list[str] | None:
        """The keys (as JSON) of the rows an index narrows ``query`` to, or ``None`` to read every row.

        The index whose leading fields the query fixes the most is used: equal values for its first fields, then
        a range on the next; the query still checks every row it returns.
        """
        conditions: dict[str, list[tuple[str, Any]]] = {}
        for column, op, value in query.where:
            conditions.setdefault(column, []).append((op, value))
        best: tuple[int, int, bytes, bytes] | None = None  # fixed fields, index, min, max
        for n, fields in enumerate(self.fields):
            prefix: list[str] = []
            for field in fields:
                equal = [v for op, v in conditions.get(field, ()) if op == "="]
                if not equal:
                    break
                prefix.append(_lex(self.kinds[codec.index[field]], equal[0]))
            low = high = _SEPARATOR.join(prefix) + (_SEPARATOR if prefix else "")
            lower, upper = b"[" + low.encode(), b"[" + high.encode() + _TOP
            score = len(prefix) * 2
            if len(prefix) < len(fields):
                field = fields[len(prefix)]
                kind = self.kinds[codec.index[field]]
                for op, value in conditions.get(field, ()):
                    text = (low + _lex(kind, value)).encode()
                    if op == ">=":
                        lower, score = b"[" + text, score + 1
                    elif op == ">":
                        lower, score = b"[" + text + _SEPARATOR.encode() + _TOP, score + 1
                    elif op == "<=":
                        upper, score = b"[" + text + _SEPARATOR.encode() + _TOP, score + 1
                    elif op == "<":
                        upper, score = b"(" + text, score + 1
            if score and (best is None or score > best[0]):
                best = (score, n, lower, upper)
        if best is None:
            return None
        entries = client.zrangebylex(self.sets[best[1]][0], best[2], best[3])
        return [entry.rsplit(_SEPARATOR, 1)[1] for entry in entries]


@attrs.define
class _Saved:
    rows: dict[str, dict[str, Any]]
    letters: dict[int, DeadLetter | None]
    ops: int
    position: int


class RedisProjectionSession(ProjectionSession):
    """A projection's transaction on Redis: reads as it goes, every change kept until one ``MULTI``/``EXEC``.

    ``handle`` is the redis-py client, for reading keys of your own; changes made through it are not part of the
    session's transaction (write typed tables instead).
    """

    def __init__(self, store: RedisReadStore, name: str, generation: int) -> None:
        self.name = name
        self.generation = generation
        self._store = store
        self.handle = store.client
        self._record = store._key(name, "gen")
        record = store.client.hmget(self._record, [f"cp:{generation}", f"commits:{generation}"])
        self._position = int(record[0] or 0)
        self._commits = int(record[1] or 0)
        self._moved = False
        self._rows: dict[str, dict[str, Any]] = {}  # storage key of a table: key JSON to stored values (None: gone)
        self._letters: dict[int, DeadLetter | None] = {}
        self._ops: list[tuple[str, ...]] = []

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> None:
        self._position = position
        self._moved = True

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self.flush_rows()
        saved = _Saved({k: dict(v) for k, v in self._rows.items()}, dict(self._letters), len(self._ops),
                       self._position)
        try:
            yield
        except BaseException:
            self.discard_rows()
            self._rows, self._letters, self._position = saved.rows, saved.letters, saved.position
            del self._ops[saved.ops:]
            raise

    # -- dead letters -------------------------------------------------------------------------------

    def park(self, letter: DeadLetter) -> None:
        self._letters[letter.position] = letter
        self._ops.append(("hset", self._store._letters_key(self.name, self.generation), str(letter.position),
                          _dumps(attrs.astuple(letter))))

    def dead_letters(self) -> list[DeadLetter]:
        found = self._store._letters(self.name, self.generation)
        for position, letter in self._letters.items():
            if letter is None:
                found.pop(position, None)
            else:
                found[position] = letter
        return [found[p] for p in sorted(found)]

    def release(self, position: int) -> None:
        self._letters[position] = None
        self._ops.append(("hdel", self._store._letters_key(self.name, self.generation), str(position)))

    # -- typed tables -------------------------------------------------------------------------------

    def create_table(self, table: Table[Any], physical: str) -> None:
        """Nothing to make: Redis makes keys as they are written."""

    def drop_table(self, table: Table[Any], physical: str) -> None:
        indexes = self._store._indexes(table, physical)
        self._rows.pop(indexes.rows, None)
        self._ops += [("delete", key) for key in (indexes.rows, *(key for key, _at in indexes.sets))]

    def _seen(self, indexes: _Indexes, keys: list[str]) -> dict[str, Any]:
        """The stored values of ``keys`` as this session sees them (``None``: absent), in one round trip."""
        mine = self._rows.get(indexes.rows, {})
        seen = {key: mine[key] for key in keys if key in mine}
        missing = [key for key in keys if key not in seen]
        if missing:
            with _translated("read rows"):
                found = self._store.client.hmget(indexes.rows, missing)
            seen.update({key: None if data is None else json.loads(data) for key, data in zip(missing, found,
                                                                                               strict=True)})
        return seen

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        indexes = self._store._indexes(table, physical)
        found: Sequence[Any] | None = self._seen(indexes, [_key_json(key)])[_key_json(key)]
        return found

    def write_rows(self, table: Table[Any], physical: str, puts: list[tuple[Any, ...]],
                   deletes: list[tuple[Any, ...]]) -> None:
        indexes = self._store._indexes(table, physical)
        new: dict[str, Any] = {_key_json(key): None for key in deletes}
        new.update({_key_json(table.key_of(values)): values for values in puts})
        old = self._seen(indexes, list(new))
        mine = self._rows.setdefault(indexes.rows, {})
        for key_json, values in new.items():
            self._ops += indexes.changes(key_json, old[key_json], values)
            mine[key_json] = values

    def add_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        indexes = self._store._indexes(table, physical)
        old = self._seen(indexes, [_key_json(table.key_of(values)) for values in rows])
        self.write_rows(table, physical, [Adding(values, at).onto(old[_key_json(table.key_of(values))])
                                          for values in rows], [])

    def patch_rows(self, table: Table[Any], physical: str, at: tuple[int, ...], rows: list[tuple[Any, ...]]) -> None:
        indexes = self._store._indexes(table, physical)
        count = len(at)
        keys = [_key_json(row[count:]) for row in rows]
        old = self._seen(indexes, keys)  # one round trip for the batch
        patched = (Patching(row[:count], at).onto(old[key]) for row, key in zip(rows, keys, strict=True))
        self.write_rows(table, physical, [values for values in patched if values is not None], [])

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        indexes = self._store._indexes(table, physical)
        committed = dict(self._store._candidates(table, indexes, query))
        for key_json, values in self._rows.get(indexes.rows, {}).items():
            committed[key_json] = values  # what this session changed, over what was committed
        return query.run(table.codec, [values for values in committed.values() if values is not None])

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        return len(self.select_rows(table, physical, Query(query.where)))

    def commit(self) -> None:
        """Apply every change with the checkpoint, unless another session of the generation committed first."""
        self.flush_rows()
        if not (self._ops or self._moved):
            return
        store, generation = self._store, self.generation
        try:
            with store.client.pipeline() as pipe:
                pipe.watch(self._record)
                if int(pipe.hget(self._record, f"commits:{generation}") or 0) != self._commits:
                    raise StorageError(
                        f"Redis: another session of {self.name!r} generation {generation} committed first; "
                        "this batch is read again")
                pipe.multi()
                for op, key, *args in self._ops:
                    if op == "hset":
                        pipe.hset(key, args[0], args[1])
                    elif op == "hdel":
                        pipe.hdel(key, args[0])
                    elif op == "zadd":
                        pipe.zadd(key, {args[0]: 0})
                    elif op == "zrem":
                        pipe.zrem(key, args[0])
                    else:
                        pipe.delete(key)
                pipe.hset(self._record, mapping={f"cp:{generation}": self._position,
                                                 f"commits:{generation}": self._commits + 1})
                pipe.sadd(store._projections, self.name)
                pipe.execute()
        except redis.WatchError as lost:
            raise StorageError(f"Redis: another session of {self.name!r} committed first; this batch is read "
                               "again") from lost
        except (UnicodeEncodeError, redis.RedisError) as exc:
            with _translated("commit a projection session"):
                raise exc


class RedisGenerations(Generations):
    """A projection's generation records in Redis, read under the store's lock and written on success."""

    def __init__(self, store: RedisReadStore, name: str) -> None:
        self.name = name
        self._store = store
        with _translated("read generation records"):
            self._record: dict[str, str] = store.client.hgetall(store._key(name, "gen"))
        self._changes: dict[str, str | None] = {}

    def _get(self, field: str) -> str | None:
        return self._changes[field] if field in self._changes else self._record.get(field)

    def current(self) -> int:
        return int(self._get("current") or 1)

    def rebuilding(self) -> int | None:
        found = self._get("rebuilding")
        return None if found is None else int(found)

    def version(self, generation: int) -> int | None:
        found = self._get(f"v:{generation}")
        return None if found is None else int(found)

    def known(self) -> Collection[int]:
        fields = {**self._record, **{k: v for k, v in self._changes.items() if v is not None}}
        found = {int(field.split(":", 1)[1]) for field in fields if field.startswith(("cp:", "v:"))}
        return found | ({int(fields["current"])} if "current" in fields else set())

    def checkpoint(self, generation: int) -> int:
        return int(self._get(f"cp:{generation}") or 0)

    def set_current(self, generation: int) -> None:
        self._changes["current"] = str(generation)

    def set_rebuilding(self, generation: int | None) -> None:
        self._changes["rebuilding"] = None if generation is None else str(generation)

    def add_version(self, generation: int, version: int) -> None:
        if self.version(generation) is None:
            self._changes[f"v:{generation}"] = str(version)

    def save(self) -> None:
        key = self._store._key(self.name, "gen")
        with _translated("change generation records"), self._store.client.pipeline() as pipe:
            for field, value in self._changes.items():
                if value is None:
                    pipe.hdel(key, field)
                else:
                    pipe.hset(key, field, value)
            pipe.execute()


class RedisReadStore(ReadStore):
    """Projections' read models in Redis (see the module). ``url`` is a redis-py URL; ``prefix`` starts every key,
    so several applications can share a database; ``lease_seconds`` is how long a runner's hold on a projection
    lasts without being renewed (runners renew it before each batch)."""

    leases = True

    def partitioned_for(self, name: str) -> bool:
        # A session commits whole rows, checked against its own projection's commit count: two partitions adding
        # to one shared row at once would lose an addition. Partitioned projections need a SQL store.
        return False

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "mediator",
                 lease_seconds: float = 10.0, lock_timeout: float = 30.0) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.lock_timeout = lock_timeout
        self.client: Any = redis.Redis.from_url(url, decode_responses=True)
        self._owner = uuid.uuid4().hex
        self._held: dict[str, float] = {}  # projection: when its lease runs out (monotonic), as renewed here
        self._held_lock = threading.Lock()
        self._projections = f"{prefix}:projections"
        self._index_cache: dict[tuple[int, str], _Indexes] = {}
        self._session_locks: dict[tuple[str, int], threading.Lock] = {}
        with _translated("connect"):
            self.client.ping()

    def _key(self, name: str, *parts: str) -> str:
        return ":".join((f"{self.prefix}:{{{name}}}", *parts))

    def _letters_key(self, name: str, generation: int) -> str:
        return self._key(name, "dl", str(generation))

    def _indexes(self, table: Table[Any], physical: str) -> _Indexes:
        cache_key = (id(table), physical)
        found = self._index_cache.get(cache_key)
        if found is None:
            found = self._index_cache[cache_key] = _Indexes(self, table, physical)
        return found

    def _letters(self, name: str, generation: int) -> dict[int, DeadLetter]:
        with _translated("read dead letters"):
            stored = self.client.hgetall(self._letters_key(name, generation))
        return {int(position): DeadLetter(*json.loads(data)) for position, data in stored.items()}

    def _candidates(self, table: Table[Any], indexes: _Indexes, query: Query) -> list[tuple[str, Any]]:
        """Committed rows (key JSON, stored values) that may match ``query``: those an index narrows it to."""
        with _translated("read rows"):
            keys = indexes.keys_for(self.client, query, table.codec)
            if keys is None:
                return [(key, json.loads(data)) for key, data in self.client.hgetall(indexes.rows).items()]
            if not keys:
                return []
            found = self.client.hmget(indexes.rows, keys)
        return [(key, json.loads(data)) for key, data in zip(keys, found, strict=True) if data is not None]

    # -- sessions -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, name: str, generation: int) -> Iterator[ProjectionSession]:
        # Sessions of one generation in this process take turns, as a SQL backend's row lock makes them: the second
        # reads what the first committed. Across processes, leases keep one runner per projection, and the commit's
        # WATCH refuses a session that began before another's commit.
        with self._session_lock(name, generation):
            with _translated("begin a projection session"):
                session = RedisProjectionSession(self, name, generation)
            yield session
            session.commit()

    def _session_lock(self, name: str, generation: int) -> threading.Lock:
        with self._held_lock:
            return self._session_locks.setdefault((name, generation), threading.Lock())

    @contextlib.contextmanager
    def generations(self, name: str) -> Iterator[Generations]:
        lock, token = self._key(name, "lock"), uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.001
        with _translated("lock generation records"):
            while not self.client.set(lock, token, nx=True, px=int(self.lock_timeout * 1000)):
                if time.monotonic() > deadline:
                    raise StorageError(f"Redis: the generation records of {name!r} stayed locked")
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
        try:
            records = RedisGenerations(self, name)
            yield records
            records.save()
        finally:
            with contextlib.suppress(redis.RedisError):
                self.client.eval(_GIVE_UP, 1, lock, token)

    # -- reads outside sessions -----------------------------------------------------------------------

    def _field(self, name: str, field: str) -> str | None:
        with _translated("read generation records"):
            found: str | None = self.client.hget(self._key(name, "gen"), field)
        return found

    def checkpoint(self, name: str, generation: int) -> int:
        return int(self._field(name, f"cp:{generation}") or 0)

    def current_generation(self, name: str) -> int:
        return int(self._field(name, "current") or 1)

    def rebuilding(self, name: str) -> int | None:
        found = self._field(name, "rebuilding")
        return None if found is None else int(found)

    def recorded_version(self, name: str, generation: int) -> int | None:
        found = self._field(name, f"v:{generation}")
        return None if found is None else int(found)

    def applied(self, name: str, generation: int) -> int:
        checkpoint = self.checkpoint(name, generation)
        with _translated("read dead letters"):
            positions = [int(p) for p in self.client.hkeys(self._letters_key(name, generation))]
        return min([checkpoint, *(p - 1 for p in positions)])

    def all_dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        if name is None:
            with _translated("read projections"):
                names = sorted(self.client.smembers(self._projections))
        else:
            names = [name]
        found: list[DeadLetter] = []
        for projection in names:
            letters = self._letters(projection, self.current_generation(projection))
            found += [letters[p] for p in sorted(letters)]
        return found

    def load_row(self, table: Table[Any], physical: str, key: tuple[Any, ...]) -> Sequence[Any] | None:
        with _translated("read a row"):
            data = self.client.hget(self._indexes(table, physical).rows, _key_json(key))
        return None if data is None else json.loads(data)

    def select_rows(self, table: Table[Any], physical: str, query: Query) -> Sequence[Sequence[Any]]:
        rows = self._candidates(table, self._indexes(table, physical), query)
        return query.run(table.codec, [values for _key, values in rows])

    def count_rows(self, table: Table[Any], physical: str, query: Query) -> int:
        return len(self.select_rows(table, physical, Query(query.where)))

    # -- leases ---------------------------------------------------------------------------------------

    def acquire(self, name: str) -> bool:
        """Hold projection ``name`` for ``lease_seconds`` more (``True``), unless another runner holds it."""
        ttl = int(self.lease_seconds * 1000)
        started = time.monotonic()
        try:
            held = bool(self.client.eval(_RENEW, 1, self._key(name, "lease"), self._owner, ttl))
        except redis.RedisError:
            held = False
        with self._held_lock:
            if held:
                self._held[name] = started + self.lease_seconds
            else:
                self._held.pop(name, None)
        return held

    def holds(self, name: str) -> bool:
        until = self._held.get(name)
        return until is not None and time.monotonic() < until

    def release(self, name: str) -> None:
        with self._held_lock:
            self._held.pop(name, None)
        with contextlib.suppress(redis.RedisError):
            self.client.eval(_GIVE_UP, 1, self._key(name, "lease"), self._owner)

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)

    def transient(self, exc: BaseException) -> bool:
        if isinstance(exc, StorageError):
            return super().transient(exc)
        return isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError)

    def drop_all(self) -> None:
        """Delete every key under this store's prefix (for tests and benchmarks)."""
        with _translated("drop the store"):
            for key in self.client.scan_iter(match=f"{self.prefix}:*", count=1000):
                self.client.delete(key)

    def close(self) -> None:
        self.release_all()
        self.client.close()


__all__ = ["RedisGenerations", "RedisProjectionSession", "RedisReadStore"]
