"""The runner thread: work until stopped, wait when there is nothing to do, back off when it fails.

The read-model engine runs its projections on one (:meth:`ReadModels.start`), and the outbox relay
(:class:`mediator.relay.Relay`) relays on one; each gives it its own work, idle wait and failure policy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("mediator.readmodels")


class Runner:
    """A daemon thread that calls ``work()`` until stopped.

    Args:
        name: the thread's name.
        work: does one round of work; returns whether it did anything. When it did not, ``idle()`` runs.
        idle: waits for more work (it should return early once :attr:`wakeup` or :attr:`stopping` is set).
        failed: called with what ``work`` raised; returns the seconds to wait before the next round. A runner
            never dies of a failure: storage outages and broker outages are waited out.
        finished: called in the thread as it ends, however it ends (to give up leases).
    """

    def __init__(self, name: str, work: Callable[[], bool], idle: Callable[[], None],
                 failed: Callable[[Exception], float], finished: Callable[[], None] | None = None) -> None:
        self.name = name
        self.work = work
        self.idle = idle
        self.failed = failed
        self.finished = finished
        self.stopping = threading.Event()
        """Set by :meth:`stop`: the current round is the last."""
        self.wakeup = threading.Event()
        """Set by :meth:`wake`: an idle wait should end now (something was committed in this process)."""
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread.

        Raises:
            RuntimeError: if it is already started.
        """
        if self._thread is not None:
            raise RuntimeError(f"The runner {self.name!r} is already started; stop() it first.")
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current round; wait up to ``timeout`` seconds for it to end."""
        self.stopping.set()
        self.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # in a round longer than the timeout: `finished` runs as it ends
                log.warning("runner still finishing its round", runner=self.name, timeout=timeout)
            self._thread = None

    def wake(self) -> None:
        """End the current idle wait (if any) and work now."""
        self.wakeup.set()

    def idle_until(self, moved: Callable[[], bool], longest: float, every: float) -> None:
        """Wait until woken, stopped, ``moved()`` is true (asked every ``every`` s), or ``longest`` s have passed.

        ``moved`` failing (the storage is down) ends the wait too: the next round reports the failure.
        """
        deadline = time.monotonic() + longest
        while not self.wakeup.wait(min(every, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or self.stopping.is_set():
                break
            try:
                if moved():
                    break
            except Exception:
                break
        self.wakeup.clear()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    did = self.work()
                except Exception as exc:  # never die silently: `failed` logs it and says how long to wait
                    self.stopping.wait(self.failed(exc))
                    continue
                if not did:
                    self.idle()
        finally:
            if self.finished is not None:
                self.finished()
