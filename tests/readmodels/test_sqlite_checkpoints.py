"""SQLite's WAL is copied back into the database by a background thread, not by whichever commit crosses 1,000 pages.

In WAL mode a commit appends to ``<file>-wal``; the database file itself changes only when a checkpoint copies the
WAL back. So the database file growing while nothing else touches it is the background checkpoint at work.
"""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mediator.readmodels import NewEvent, sqlite
from mediator.readmodels.sqlite import FALLBACK_CHECKPOINT_PAGES, SqliteStorage

THREAD = "mediator-sqlite-checkpoints"


def checkpoint_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == THREAD}


def started(before: set[threading.Thread]) -> list[threading.Thread]:
    """The checkpoint threads running now that were not before (storages other tests left open have theirs)."""
    return list(checkpoint_threads() - before)


def append(storage: SqliteStorage, count: int, size: int = 2_000) -> None:
    """``count`` commits of one event of ``size`` bytes each."""
    for n in range(count):
        session = storage.begin()
        session.append([NewEvent(f"e{n}-{time.monotonic_ns()}", "test.padded", 1, '{"x": "' + "p" * size + '"}',
                                 f"k{n}", time.time())])
        session.commit()


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_commits_reach_the_database_file_without_a_commit_checkpointing(tmp_path: Path) -> None:
    threads = checkpoint_threads()
    storage = SqliteStorage(tmp_path / "app.db", checkpoint_every=0.01)
    try:
        before = (tmp_path / "app.db").stat().st_size
        append(storage, 100)  # a few hundred pages: far below the fallback, where a commit checkpoints itself
        assert eventually(lambda: (tmp_path / "app.db").stat().st_size > before + 100 * 2_000)
        assert len(started(threads)) == 1
    finally:
        storage.close()


def test_without_background_checkpoints_the_wal_holds_the_commits_until_sqlite_checkpoints(tmp_path: Path) -> None:
    threads = checkpoint_threads()
    storage = SqliteStorage(tmp_path / "app.db", checkpoint_every=None)
    try:
        before = (tmp_path / "app.db").stat().st_size
        append(storage, 100)  # below SQLite's 1,000 pages: nothing copies the WAL back yet
        time.sleep(0.2)
        assert (tmp_path / "app.db").stat().st_size == before
        assert not started(threads)
    finally:
        storage.close()


def test_the_writing_connections_checkpoint_by_themselves_only_past_the_fallback(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "app.db")
    try:
        session = storage.begin()
        connection = session.handle
        assert connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (FALLBACK_CHECKPOINT_PAGES,)
        session.rollback()
    finally:
        storage.close()


def test_a_storage_that_only_reads_starts_no_thread(tmp_path: Path) -> None:
    SqliteStorage(tmp_path / "app.db").close()
    threads = checkpoint_threads()
    reader = SqliteStorage(tmp_path / "app.db")
    try:
        assert reader.head() == 0
        assert reader.read(0, 10) == []
        assert not started(threads)
    finally:
        reader.close()


def test_closing_the_storage_ends_the_thread(tmp_path: Path) -> None:
    threads = checkpoint_threads()
    storage = SqliteStorage(tmp_path / "app.db")
    append(storage, 1)
    (thread,) = started(threads)
    storage.close()
    assert not thread.is_alive()


def test_a_storage_dropped_without_closing_ends_the_thread(tmp_path: Path) -> None:
    threads = checkpoint_threads()
    storage = SqliteStorage(tmp_path / "app.db", checkpoint_every=0.01)
    append(storage, 1)
    (thread,) = started(threads)
    del storage
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_two_files_are_both_checkpointed(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "write.db", tmp_path / "read.db", checkpoint_every=0.01)
    try:
        before = (tmp_path / "read.db").stat().st_size
        for n in range(100):  # rows of a read model, written through projection sessions on the read file
            with storage.session("padded", 1) as session:
                session.handle.execute(
                    "CREATE TABLE IF NOT EXISTS padded (k TEXT PRIMARY KEY, v TEXT)")
                session.handle.execute(
                    "INSERT INTO padded VALUES (?, ?)", (f"k{n}", "p" * 4_000))
        assert eventually(lambda: (tmp_path / "read.db").stat().st_size > before + 100 * 4_000)
    finally:
        storage.close()


def test_an_idle_storage_checkpoints_less_often_and_a_commit_brings_them_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[float] = []
    plain = sqlite._Checkpointer._checkpoint

    def counted(self: sqlite._Checkpointer, connection: sqlite3.Connection) -> object:
        passes.append(time.monotonic())
        return plain(self, connection)

    monkeypatch.setattr(sqlite._Checkpointer, "_checkpoint", counted)
    storage = SqliteStorage(tmp_path / "app.db", checkpoint_every=0.01)
    try:
        append(storage, 1)
        time.sleep(1.0)  # idle: the wait doubles from 0.01 s to the quarter-second cap
        quiet_since = time.monotonic()
        time.sleep(1.0)
        idle = [at for at in passes if at >= quiet_since]
        assert 1 <= len(idle) <= 8, len(idle)  # every 0.01 s it would be about a hundred
        before = (tmp_path / "app.db").stat().st_size
        append(storage, 100)
        assert eventually(lambda: (tmp_path / "app.db").stat().st_size > before + 100 * 2_000)
    finally:
        storage.close()


@pytest.mark.parametrize("every", [0, -1.0])
def test_a_checkpoint_interval_must_be_positive(tmp_path: Path, every: float) -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        SqliteStorage(tmp_path / "app.db", checkpoint_every=every)
