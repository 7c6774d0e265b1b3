"""RecentRecords: the dialogue's memory of the trackers it wrote (services/dialogue/store.py)."""

from __future__ import annotations

from services.dialogue.engine import Tracker
from services.dialogue.store import RecentRecords, Record


def record(conversation: str, revision: int) -> Record:
    return Record(Tracker.new("bank", conversation, 0.0), revision)


def test_a_record_is_trusted_while_the_partition_chain_is_unbroken() -> None:
    memory = RecentRecords(100)
    memory.receive(0, 1, 1)
    memory.put(0, "bank.a", record("a", 5))
    memory.receive(0, 2, 1)
    found = memory.get(0, "bank.a")
    assert found is not None and found.revision == 5
    assert memory.get(0, "bank.b") is None
    assert (memory.hits, memory.misses) == (1, 1)


def test_a_gap_in_deliveries_forgets_the_partition_only() -> None:
    memory = RecentRecords(100)
    memory.receive(0, 1, 1)
    memory.put(0, "bank.a", record("a", 5))
    memory.receive(1, 1, 1)
    memory.put(1, "bank.b", record("b", 7))
    memory.receive(0, 3, 1)  # delivery 2 went to another worker
    assert memory.get(0, "bank.a") is None
    memory.receive(1, 2, 1)
    assert memory.get(1, "bank.b") is not None


def test_a_redelivery_or_a_failure_forgets() -> None:
    memory = RecentRecords(100)
    memory.receive(0, 1, 1)
    memory.put(0, "bank.a", record("a", 5))
    memory.receive(0, 2, 2)  # a redelivery: the earlier attempt may have written
    assert memory.get(0, "bank.a") is None
    memory.put(0, "bank.a", record("a", 6))
    memory.forget_partition(0)  # a failed turn
    memory.put(0, "bank.a", record("a", 7))  # no chain to trust until the next delivery
    memory.receive(0, 3, 1)
    assert memory.get(0, "bank.a") is None


def test_capacity_evicts_the_oldest_and_zero_disables() -> None:
    memory = RecentRecords(2)
    memory.receive(0, 1, 1)
    for name in ("a", "b", "c"):
        memory.put(0, f"bank.{name}", record(name, 1))
    memory.receive(0, 2, 1)
    assert [memory.get(0, f"bank.{n}") is not None for n in ("a", "b", "c")] == \
        [False, True, True]
    off = RecentRecords(0)
    off.receive(0, 1, 1)
    off.put(0, "bank.a", record("a", 1))
    off.receive(0, 2, 1)
    assert off.get(0, "bank.a") is None
