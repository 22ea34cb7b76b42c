"""Adversarial review of the inbox bounds: what they count covers the memory a peer pins."""

from __future__ import annotations

import os
import tracemalloc

from dtlskit.core.inbox import ByteBudget, Inbox


def test_the_budget_covers_the_memory_of_many_small_messages():
    # A peer sending tiny records (2-byte messages, max_queued_messages of them per session,
    # to 10,000 sessions) must not make the server hold many times what the budget counts:
    # each queued message costs a bytes object and a deque slot beside its payload.
    count = 1_024
    budget = ByteBudget(64 * 1_048_576)
    inbox = Inbox(1_048_576, count, budget)
    messages = [os.urandom(2) for _ in range(count)]  # made before measuring: as received
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for message in messages:
            assert inbox.offer(message) is None
        grew = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    payload_objects = sum(message.__sizeof__() for message in messages)
    pinned = grew + payload_objects  # the queue, plus the message objects it keeps alive
    assert budget.held >= pinned, (budget.held, pinned)
    assert inbox.held == budget.held
    while inbox.take() is not None:
        pass
    assert inbox.held == budget.held == 0  # every byte counted is given back
