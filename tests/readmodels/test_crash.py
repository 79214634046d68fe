"""Crash safety: a process sending commands and projecting them is SIGKILLed at random moments.

After every kill: each acknowledged (committed) command's event is in the log,
no event of a failed command is, and the read model (background projection,
caught up after the restart) equals a full rebuild from the log, so no event
was applied twice or lost. ``MEDIATOR_CRASH_ROUNDS`` sets how many kills (50 by
default, and in CI).
"""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from adapters.sqlite import SqliteStorage
from mediator.testing import settle

from .bank import Deposited, event_types, make_bank

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = int(os.environ.get("MEDIATOR_CRASH_ROUNDS", "50"))


def test_sigkill_at_random_points_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    db, ack = tmp_path / "bank.db", tmp_path / "acks.txt"
    SqliteStorage(db).close()
    env = {**os.environ, "BANK_DB": str(db), "PYTHONPATH": str(ROOT)}
    rng = random.Random(1234)
    types = event_types()
    seen: set[int] = set()
    expected: Counter[str] = Counter()
    checked_up_to = 0
    for _ in range(ROUNDS):
        child = subprocess.Popen([sys.executable, "-m", "tests.readmodels.bank_app", "crash-loop", str(ack)],
                                 env=env, cwd=ROOT)
        time.sleep(rng.uniform(0.25, 0.6))  # mostly inside the command loop, at a different point each time
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL

        storage = SqliteStorage(db)
        for stored in storage.events(after=checked_up_to):  # committed events never change: check the new ones
            assert stored.position == checked_up_to + 1, "a gap in the log"
            checked_up_to = stored.position
            deposit: Deposited = types.decode(stored.type_name, stored.version, stored.data)
            assert deposit.amount > 0, "an event of a failed command was stored"
            assert deposit.amount not in seen, "an event was stored twice"
            seen.add(deposit.amount)
            expected[deposit.account] += deposit.amount
        acknowledged = {int(line) for line in ack.read_text().split()} if ack.exists() else set()
        assert acknowledged <= seen, "a committed command's event is missing"

        bank = make_bank(storage)
        settle(bank.engine)  # the restart: resume from the committed checkpoint
        assert bank.balances() == dict(expected), "the read model differs from a rebuild of the log"
        storage.close()
    assert len(seen) > ROUNDS  # the loop did real work between kills
