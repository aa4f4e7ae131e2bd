"""How `llmft eval`'s replicas engine accounts for its generating time."""

from __future__ import annotations

import pytest

from llmft.eval.replicas import busiest_replica_seconds


def test_decoding_time_is_the_busiest_replicas_own_batches_added_up():
    # Replicas generate side by side: two replicas busy 3 s and 2.5 s took 3 s, not 5.5 s.
    rows = [{"replica": "node-a:11", "seconds": 1.0}, {"replica": "node-b:12", "seconds": 2.5},
            {"replica": "node-a:11", "seconds": 2.0}]
    assert busiest_replica_seconds(rows) == pytest.approx(3.0)


def test_no_batches_took_no_time():
    assert busiest_replica_seconds([]) == 0.0
