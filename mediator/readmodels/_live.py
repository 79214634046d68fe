"""The engine's change feed: which subscriptions' answers may have changed, in this process or any other.

One :class:`LiveHub` per engine watches the projections that subscribed queries ``read``, from one thread that
runs only while there are subscriptions. Each look reads the projections' checkpoints (one cheap query each); this
process's runner wakes it as soon as it commits a batch, and progress made elsewhere (a worker process, another
service's runner on PostgreSQL) is seen at the next look, ``interval`` seconds later at most.

When a checkpoint has moved, the hub reads the events it moved over, of the types the projection applies only,
and marks a subscription changed if one of them can affect its answer: any of them, or with
:class:`~mediator.DependsOnKeys` only those of its keys. A rebuild swapped in changes every answer. A mark is one
pending token per subscription, never a queue: a slow subscriber is asked once for many changes.

The token of a mark is the position up to which every event of the projections read has been applied
(:meth:`Storage.applied`), so an answer never claims more than its read models hold: with an event parked, the
answer still changes as later events are applied, but its token stays before the parked one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from .._errors import SubscriptionError
from .._messages import qualname
from ._projections import Delivery

if TYPE_CHECKING:
    from ._engine import ReadModels

log = structlog.get_logger("mediator.readmodels")

FAST = 0.00025
"""Seconds between two looks, at first, while a watched projection is behind the head of the log (its progress
is coming): doubled each look, up to ``interval``, as a read-your-writes wait does."""
BIG_GAP = 10_000
"""Events a checkpoint may move over before the hub stops reading which they were and marks every subscription
of that projection changed (asking again costs less than reading them)."""


class LiveWatch:
    """One subscription's watch (see :class:`mediator.Watch`). Nothing holds it but its subscription (the hub keeps
    its watches in a weak set): one dropped unclosed is forgotten when it is collected, no finalizer needed."""

    __slots__ = ("__weakref__", "_closed", "_event", "_loop", "_signal", "after", "hub", "keys", "pending", "reads",
                 "seen", "types")

    def __init__(self, hub: LiveHub, reads: tuple[str, ...], keys: frozenset[str] | None, types: frozenset[str],
                 after: int | None) -> None:
        self.hub = hub
        self.reads = reads
        self.keys = keys
        self.types = types
        self.after = after
        """The token the caller resumes after (``None``: a first answer at once)."""
        self.seen: dict[str, tuple[int, int, int]] | None = None
        """By projection: the (generation, checkpoint, applied position) up to which changes were looked at for
        this watch; ``None`` until the hub's first look at it (the subscriber's thread reads no storage)."""
        self.pending: int | None = None
        self._closed = False
        self._event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signal: asyncio.Event | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def mark(self, token: int) -> None:
        """A change is pending, up to ``token`` (called under the hub's lock)."""
        self.pending = token if self.pending is None else max(self.pending, token)
        self._wake()

    def _wake(self) -> None:
        self._event.set()
        loop, signal = self._loop, self._signal
        if loop is not None and signal is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits there any more
                loop.call_soon_threadsafe(signal.set)

    def _take(self) -> int | None:
        """The pending token (``None`` if none); the wake-up cleared only while the watch is open, under the lock
        :meth:`close` takes, so a close between the caller's look and its wait still wakes it."""
        with self.hub.lock:
            token, self.pending = self.pending, None
            if token is None and not self._closed:
                self._event.clear()
                if self._signal is not None:
                    self._signal.clear()
            return token

    def next(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            token = self._take()
            if token is not None:
                return token
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._event.wait(left)
        return None

    async def next_async(self) -> int | None:
        if self._signal is None:
            self._loop = asyncio.get_running_loop()
            self._signal = asyncio.Event()
            if self._closed or self.pending is not None:
                self._signal.set()
        while not self._closed:
            token = self._take()
            if token is not None:
                return token
            await self._signal.wait()
        return None

    def close(self) -> None:
        with self.hub.lock:
            if self._closed:
                return
            self._closed = True
        self.hub.forget(self)
        self._wake()


class LiveHub:
    """The engine's :class:`~mediator.ChangeFeed` (``engine.live``).

    Args:
        engine: the engine whose projections are watched.
        interval: the longest time between two looks at the checkpoints (progress made by other processes is
            seen within it; this process's runner wakes the hub at once).
    """

    def __init__(self, engine: ReadModels, interval: float = 0.01) -> None:
        self.engine = engine
        self.interval = interval
        self.lock = threading.RLock()
        self._watches: weakref.WeakSet[LiveWatch] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self.active = False
        """Whether the hub's thread runs (read without the lock on every commit: a commit in this process then
        wakes it, so it looks quickly until the projections have applied it)."""
        self._closed = False
        self._type_names: dict[str, frozenset[str]] = {}
        self._next_warning = 0.0
        self.looks = 0
        """Looks at the checkpoints so far (for tests and metrics)."""

    # -- the feed --------------------------------------------------------------------------------

    def watch(self, query: Any, after: int | None) -> LiveWatch:
        """Register a watch for ``query`` (no storage read here: the hub's thread makes the first look, so an
        async subscriber's event loop never waits on the database).

        Raises:
            SubscriptionError: for a query naming no read models, unknown ones, or keys that are not text; once
                the feed has closed.
        """
        query_type = type(query)
        reads = getattr(query_type, "reads", ())
        if isinstance(reads, str) or not all(isinstance(name, str) for name in reads):
            raise SubscriptionError(query_type, f"its `reads` is {reads!r}; give a tuple of projection names, "
                                    "`reads = (\"orders\",)`.")
        reads = tuple(reads)
        if not reads:
            raise SubscriptionError(query_type, "it names no read models; give its class `reads = (...)`, the "
                                    "projections its handler reads, so the engine knows when to ask it again.")
        unknown = [name for name in reads if name not in self.engine._tracks]
        if unknown:
            raise SubscriptionError(query_type, f"it reads unknown projection(s) {unknown}.")
        keys = None
        depends_on = getattr(query, "depends_on", None)
        if depends_on is not None:
            found = depends_on()
            if isinstance(found, str) or not all(isinstance(key, str) for key in found):
                raise SubscriptionError(query_type, f"its depends_on() answered {found!r}; answer the events' "
                                        "ordering keys as a tuple of text, `(self.order_id,)`.")
            keys = frozenset(found)
        if after is not None and (type(after) is not int or after < 0):
            raise SubscriptionError(query_type, f"after={after!r}: a consistency token is a whole number from 0.")
        types = frozenset().union(*(self._applies(name) for name in reads))
        watch = LiveWatch(self, reads, keys, types, after)
        with self.lock:
            if self._closed:
                raise SubscriptionError(query_type, "the engine's change feed has closed (it is shutting down).")
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mediator-live", daemon=True)
                self.active = True
                self._thread.start()
        self.engine.progress.notify()  # look now rather than after the interval
        return watch

    def forget(self, watch: LiveWatch) -> None:
        with self.lock:
            self._watches.discard(watch)
        self.engine.progress.notify()  # the hub's thread ends at once if that was the last one

    @property
    def watching(self) -> int:
        """Subscriptions open now."""
        with self.lock:
            return len(self._watches)

    @property
    def running(self) -> bool:
        """Whether the hub's thread runs (only while there are subscriptions)."""
        with self.lock:
            return self._thread is not None and self.active

    def close(self, timeout: float = 5.0) -> None:
        """End every subscription (their iterators stop) and the hub's thread; no new one may start."""
        with self.lock:
            self._closed = True
            watches, thread = list(self._watches), self._thread
        for watch in watches:
            watch.close()
        self.engine.progress.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- looking ---------------------------------------------------------------------------------

    def _look(self, names: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """(generation, checkpoint, applied) of each projection of ``names``: an inline one is at the head."""
        storage = self.engine.storage
        found = {}
        head = None
        for name in names:
            generation = storage.current_generation(name)
            if self.engine._tracks[name].delivery is Delivery.INLINE:
                head = storage.head() if head is None else head
                found[name] = (generation, head, head)
            else:
                found[name] = (generation, self.engine.checkpoint(name, generation),
                               self.engine.applied(name, generation))
        return found

    def _applies(self, name: str) -> frozenset[str]:
        """The stored names of the event types projection ``name`` applies (worked out once per projection)."""
        found = self._type_names.get(name)
        if found is None:
            track = self.engine._tracks[name]
            found = self._type_names[name] = frozenset(self.engine.types.entry(cls).name
                                                       for cls in track.projection.handlers)
        return found

    @staticmethod
    def _token(looked: dict[str, tuple[int, int, int]]) -> int:
        return min(applied for _, _, applied in looked.values())

    def _run(self) -> None:
        progress = self.engine.progress
        pause: float | None = None
        while True:
            with self.lock:
                watches = [watch for watch in self._watches if not watch.closed]
                if self._closed or not watches:
                    self._thread = None
                    self.active = False
                    return
            changes = progress.changes
            try:
                behind = self._round(watches)
            except Exception as exc:  # the storage failed: look again later (answers are asked by subscribers)
                behind = False
                if time.monotonic() >= self._next_warning:  # once a minute at most
                    self._next_warning = time.monotonic() + 60.0
                    log.warning("change feed could not look at the read models; looking again",
                                error=f"{type(exc).__name__}: {exc}", subscriptions=len(watches))
            del watches  # a subscription dropped meanwhile is collected, and leaves the weak set
            # Behind the head: progress is coming, look again soon (backing off); else at the interval, unless
            # this process's runner or a commit here says something moved.
            pause = None if not behind else FAST if pause is None else min(pause * 2, self.interval)
            with progress.condition:
                if progress.changes == changes:
                    progress.condition.wait(pause or self.interval)

    def _round(self, watches: list[LiveWatch]) -> bool:
        """Look once, mark the subscriptions whose answers may have changed; whether a watched projection is
        behind the head of the log."""
        self.looks += 1
        names = {name for watch in watches for name in watch.reads}
        head = self.engine.storage.head()
        looked = self._look(names)
        for watch in watches:
            if watch.seen is None:
                self._first_look(watch, looked, head)
        # By projection: the stretch of the log to read, (after, up to): what the checkpoint moved over, and what
        # the applied position did (a parked event healed behind the checkpoint).
        stretches: dict[str, tuple[int, int]] = {}
        for watch in watches:
            for name, (after, upto) in self._to_read(watch, looked).items():
                low, high = stretches.get(name, (after, upto))
                stretches[name] = (min(low, after), max(high, upto))
        events = {name: self._events(name, after, upto) for name, (after, upto) in stretches.items()}
        with self.lock:
            for watch in watches:
                if watch.closed or watch.seen is None:
                    continue
                changed = False
                for name, (after, upto) in self._to_read(watch, looked).items():
                    changed = changed or self._affects(watch, events[name], after, upto)
                for name in watch.reads:
                    if watch.seen[name][0] != looked[name][0]:  # a rebuild swapped in: every answer may differ
                        changed = True
                    watch.seen[name] = looked[name]
                if changed:
                    watch.mark(self._token({name: looked[name] for name in watch.reads}))
        return any(checkpoint < head for _, checkpoint, _ in looked.values())

    def _first_look(self, watch: LiveWatch, looked: dict[str, tuple[int, int, int]], head: int) -> None:
        mine = {name: looked[name] for name in watch.reads}
        after = watch.after
        with self.lock:
            if after is None or after > head:  # a first answer at once (a token this log never gave included)
                watch.seen = mine
                watch.mark(self._token(mine))
            else:  # resuming: what came after the caller's token is looked at below, as any change
                watch.seen = {name: (generation, min(checkpoint, after), min(applied, after))
                              for name, (generation, checkpoint, applied) in mine.items()}

    @staticmethod
    def _to_read(watch: LiveWatch, looked: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int]]:
        """For ``watch``, by projection read in the same generation: the stretch of the log whose events may have
        changed its answer since it last looked."""
        found = {}
        assert watch.seen is not None
        for name in watch.reads:
            generation, checkpoint, applied = looked[name]
            seen_generation, seen_checkpoint, seen_applied = watch.seen[name]
            if seen_generation != generation:
                continue
            starts = ([seen_checkpoint] if checkpoint > seen_checkpoint else []) + (
                [seen_applied] if applied > seen_applied else [])
            if starts:
                found[name] = (min(starts), checkpoint)
        return found

    def _events(self, name: str, after: int, upto: int) -> list[tuple[int, str, str | None]] | None:
        """(position, type, key) of the events in ``(after, upto]`` that ``name`` applies; ``None`` if too many."""
        if upto - after > BIG_GAP:
            return None
        types = self._applies(name)
        found = []
        while after < upto:
            batch = self.engine.storage.read(after, min(upto - after, 1000), types)
            for event in batch:
                if event.position > upto:
                    break
                found.append((event.position, event.type_name, event.key))
            if not batch or batch[-1].position >= upto:
                break
            after = batch[-1].position
        return found

    @staticmethod
    def _affects(watch: LiveWatch, events: list[tuple[int, str, str | None]] | None, after: int,
                 upto: int) -> bool:
        if events is None:
            return True
        keys = watch.keys
        return any(after < position <= upto and type_name in watch.types and (keys is None or key in keys)
                   for position, type_name, key in events)

    def __repr__(self) -> str:
        return f"<LiveHub of {qualname(type(self.engine))}: {self.watching} subscription(s)>"
