"""What the SIGKILL tests share: waiting until the processes to be killed are in their loops."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_progress(ack: Path, size_before: int, children: list[subprocess.Popen[bytes]]) -> None:
    """Wait until ``children`` have acknowledged a command in this round (``ack`` grew past ``size_before``), so
    the kills land in their loops."""
    deadline = time.monotonic() + 60
    try:
        while not ack.exists() or ack.stat().st_size <= size_before:
            assert all(child.poll() is None for child in children), "a crash-loop child exited by itself"
            assert time.monotonic() < deadline, "the crash-loop children made no progress in 60 s"
            time.sleep(0.002)
    except BaseException:  # the test fails: leave no child running into the next one
        for child in children:
            child.kill()
            child.wait(timeout=30)
        raise
