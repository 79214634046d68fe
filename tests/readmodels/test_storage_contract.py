"""The storage port's contract: every backend passes these same tests."""

import threading
import time

import pytest

from mediator.readmodels import BLOCKED, PARKED, DeadLetter, NewEvent, ReadModelUnavailableError, Storage, StorageError


def event(n: int, key: str | None = "k") -> NewEvent:
    return NewEvent(f"id-{n}-{time.monotonic_ns()}", "t.happened", 1, f'{{"n": {n}}}', key, 1000.0 + n)


def test_an_empty_log_has_head_zero(storage: Storage) -> None:
    assert storage.head() == 0
    assert storage.read(0, 10) == []


def test_appended_events_get_consecutive_positions_in_commit_order(storage: Storage) -> None:
    for batch in ([event(1), event(2)], [event(3)]):
        session = storage.begin()
        session.append(batch)
        session.commit()
    stored = storage.read(0, 10)
    assert [e.position for e in stored] == [1, 2, 3]
    assert [e.data for e in stored] == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
    assert storage.head() == 3
    assert [e.position for e in storage.read(1, 1)] == [2]


def test_append_returns_the_last_position(storage: Storage) -> None:
    session = storage.begin()
    assert session.append([event(1), event(2)]) == 2
    session.commit()


def test_rolled_back_events_are_never_seen(storage: Storage) -> None:
    session = storage.begin()
    session.append([event(1)])
    session.rollback()
    assert storage.head() == 0
    session = storage.begin()
    session.append([event(2)])
    session.commit()
    assert [e.position for e in storage.read(0, 10)] == [1]


def test_uncommitted_events_are_invisible_to_readers(storage: Storage) -> None:
    session = storage.begin()
    session.append([event(1)])
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(storage.head()))
    reader.start()
    reader.join()
    session.commit()
    assert seen == [0]
    assert storage.head() == 1


def test_read_can_filter_by_type(storage: Storage) -> None:
    session = storage.begin()
    other = NewEvent("other", "t.other", 1, "{}", None, 1.0)
    session.append([event(1), other, event(2)])
    session.commit()
    assert [e.position for e in storage.read(0, 10, {"t.other"})] == [2]


def test_checkpoint_commits_with_the_session_and_rolls_back_with_it(storage: Storage) -> None:
    with storage.session("p", 1) as s:
        s.advance(5)
    assert storage.checkpoint("p", 1) == 5
    with pytest.raises(RuntimeError), storage.session("p", 1) as s:  # noqa: PT012
        s.advance(9)
        raise RuntimeError("projection failed")
    assert storage.checkpoint("p", 1) == 5
    assert storage.checkpoint("p", 2) == 0


def test_dead_letters_are_kept_listed_and_released(storage: Storage) -> None:
    parked = DeadLetter("p", 1, 3, "e3", "t", "k", "boom", 5, PARKED)
    blocked = DeadLetter("p", 1, 4, "e4", "t", "k", "waits", 0, BLOCKED)
    with storage.session("p", 1) as s:
        s.park(blocked)
        s.park(parked)
    assert storage.all_dead_letters("p") == [parked, blocked]
    with storage.session("p", 1) as s:
        assert s.dead_letters() == [parked, blocked]
        s.release(3)
    assert storage.all_dead_letters() == [blocked]


def test_generations_start_at_one_and_swap(storage: Storage) -> None:
    assert storage.current_generation("p") == 1
    with storage.session("p", 2) as s:
        s.park(DeadLetter("p", 2, 1, "e", "t", None, "x", 1, PARKED))
    assert storage.all_dead_letters("p") == []  # generation 2 is not current yet
    storage.swap("p", 2)
    assert storage.current_generation("p") == 2
    assert len(storage.all_dead_letters("p")) == 1


def test_the_write_session_can_swap_in_its_own_transaction(storage: Storage) -> None:
    session = storage.begin()
    try:
        if not storage.supports_inline:
            with pytest.raises(StorageError, match="separate file"):
                session.swap("p", 3)
            with pytest.raises(StorageError, match="separate file"):
                session.projection("p", 1)
            return
        session.swap("p", 3)
        with_inline = session.projection("p", 3)
        with_inline.advance(7)
    finally:
        session.rollback()
    assert storage.current_generation("p") == 1
    assert storage.checkpoint("p", 3) == 0


def test_a_second_writer_waits_for_the_first(storage: Storage) -> None:
    # SQLite makes the second writer wait in begin(), PostgreSQL in append(): either way its events cannot take
    # positions until the first writer's are committed, so commit order is log order.
    first = storage.begin()
    first.append([event(1)])
    order: list[str] = []

    def second_writer() -> None:
        session = storage.begin()
        session.append([event(2)])
        order.append("second appended")
        session.commit()

    thread = threading.Thread(target=second_writer)
    thread.start()
    time.sleep(0.1)
    order.append("first commits")
    first.commit()
    thread.join()
    assert order == ["first commits", "second appended"]
    assert [e.data for e in storage.read(0, 10)] == ['{"n": 1}', '{"n": 2}']


def test_a_rebuild_is_claimed_once_and_finished_only_if_nothing_moved(storage: Storage) -> None:
    assert storage.rebuilding("p") is None
    with storage.session("p", 4) as s:  # a generation left behind by an interrupted rebuild
        s.advance(1)
    generation = storage.claim_rebuild("p")
    assert generation == 5
    assert storage.claim_rebuild("p") == 5  # a second claim joins the first
    assert storage.rebuilding("p") == 5
    assert not storage.finish_rebuild("p", 5, old=2)  # the current generation is 1, not 2
    assert not storage.finish_rebuild("p", 6, old=1)  # not the rebuild under way
    assert storage.finish_rebuild("p", 5, old=1)
    assert (storage.current_generation("p"), storage.rebuilding("p")) == (5, None)
    assert not storage.finish_rebuild("p", 5, old=1)  # already finished, by someone


def test_the_first_version_recorded_for_a_generation_stays(storage: Storage) -> None:
    assert storage.record_version("p", 1, 3) == 3
    assert storage.record_version("p", 1, 4) == 3  # another process's later claim loses
    assert storage.record_version("p", 2, 4) == 4  # per generation
    assert storage.record_version("q", 1, 1) == 1  # and per projection
    if storage.supports_inline:
        session = storage.begin()
        assert session.record_version("p", 3, 5) == 5
        session.rollback()
        session = storage.begin()
        assert session.record_version("p", 3, 6) == 6  # the rolled-back one was never recorded
        assert session.record_version("p", 1, 6) == 3
        session.commit()
        assert storage.record_version("p", 3, 7) == 6


def test_a_rebuild_is_claimed_for_a_version_and_can_replace_one_for_another(storage: Storage) -> None:
    first = storage.claim_rebuild("p", 2)
    assert storage.record_version("p", first, 9) == 2  # recorded with the claim
    assert storage.claim_rebuild("p", 3) == first  # without replacing, a claim joins whatever is under way
    assert storage.claim_rebuild("p", 3, replacing=first + 5) == first  # replacing another: joins this one
    second = storage.claim_rebuild("p", 3, replacing=first)
    assert second > first
    assert (storage.rebuilding("p"), storage.record_version("p", second, 9)) == (second, 3)
    assert not storage.finish_rebuild("p", first, old=1)  # the abandoned one can no longer be swapped in


def test_no_rebuild_is_claimed_for_a_version_older_than_the_current_generations(storage: Storage) -> None:
    assert storage.record_version("p", 1, 3) == 3
    with pytest.raises(ReadModelUnavailableError, match="built by version 3"):
        storage.claim_rebuild("p", 2)
    assert storage.rebuilding("p") is None
    assert storage.claim_rebuild("p", 3) == 2  # the same version may rebuild


def test_an_upgrade_is_swapped_in_without_waiting_for_the_generation_it_replaces(storage: Storage) -> None:
    with storage.session("p", 1) as live:
        live.advance(2)
    generation = storage.claim_rebuild("p", 2)
    with storage.session("p", generation) as replay:
        replay.advance(5)
    assert not storage.finish_rebuild("p", generation, old=1)  # the live generation is behind the replay
    assert storage.finish_rebuild("p", generation, old=1, check_live=False)
    assert (storage.current_generation("p"), storage.rebuilding("p")) == (generation, None)


def test_event_metadata_is_stored_with_the_event(storage: Storage) -> None:
    session = storage.begin()
    session.append([event(1)._replace(meta='{"traceparent": "00-abc-def-01"}')])
    session.commit()
    (stored,) = storage.read(0, 1)
    assert stored.meta == '{"traceparent": "00-abc-def-01"}'
