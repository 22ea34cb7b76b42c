"""The one queue between an engine and its user, bounded in bytes, sans I/O.

Theory of operation
-------------------
A received message crosses exactly one queue on its way to user code: the session's
:class:`Inbox`. The engine (:class:`~dtlskit.core.connection.DTLSConnection`) is the only writer
and the policy lives here, in the core, so both front ends get it once:

* **Per session** at most ``Limits.max_queued_bytes`` bytes (each message counts its payload
  plus :data:`MESSAGE_OVERHEAD`) and ``Limits.max_queued_messages``
  messages wait; a message that would pass either bound is dropped (``"queue_full"``).
* **Per server** every session of one listening socket shares one :class:`ByteBudget` of
  ``Limits.max_buffered_bytes``: channels still waiting for ``accept()`` and channels whose
  handler reads slowly count alike. A message that would pass it is dropped
  (``"server_buffer_full"``). DTLS never retransmits application data, so a reader that falls
  behind loses messages (counted) rather than growing memory.

The front end reads with :meth:`Inbox.take`, which gives the bytes back to both bounds, and
learns of new messages through :attr:`Inbox.waker` (a plain function it sets, called with
the inbox after each message is queued and when the session ends; it finds what to wake in
:attr:`Inbox.waiter`, so the inbox never references the channel, which may be dropped).
 A channel that ends while messages remain still lets
its user read them; :meth:`Inbox.release` gives their bytes back when the channel is closed or
dropped.

A handler in the callback style has no inbox at all: the engine hands each message to it.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable
from typing import Any

from ..exceptions import DTLSError

__all__ = ["MESSAGE_OVERHEAD", "ByteBudget", "Inbox", "fresh_error"]


def fresh_error(error: DTLSError) -> DTLSError:
    """A copy of ``error`` to raise, so repeated raises do not pile up one shared traceback."""
    try:
        clone = copy.copy(error)
    except Exception:  # pragma: no cover - an exception class copy cannot rebuild
        return error
    clone.__cause__ = error.__cause__
    clone.__traceback__ = None
    return clone


class ByteBudget:
    """Bytes held by every inbox of one server socket, against one limit."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        """Bytes queued now, in every inbox sharing this budget."""


MESSAGE_OVERHEAD = 64
"""Bytes each queued message is charged beside its payload: its ``bytes`` object's header
and the queue's slot (~45 bytes on 64-bit CPython). Without it, tiny messages would pin many
times what the bounds count (1,024 two-byte messages: 2 KiB counted, ~45 KiB held)."""


_NO_MESSAGES: collections.deque[bytes] = collections.deque(maxlen=0)
"""Shared by every inbox that holds nothing (an empty deque costs 624 bytes a session); its
``maxlen`` of 0 makes a stray append a no-op, never a message for another session."""


class Inbox:
    """Received messages of one session, and how the session ended."""

    __slots__ = (
        "budget",
        "error",
        "held",
        "limit_bytes",
        "limit_messages",
        "messages",
        "waiter",
        "waker",
    )

    def __init__(
        self, limit_bytes: int, limit_messages: int, budget: ByteBudget | None = None
    ) -> None:
        self.messages: collections.deque[bytes] = _NO_MESSAGES
        """The queued messages (a deque of its own from the first message on)."""
        self.held = 0
        """Bytes queued now."""
        self.limit_bytes = limit_bytes
        self.limit_messages = limit_messages
        self.budget = budget
        self.error: DTLSError | None = None
        """Set once, when the session ends; what ``recv`` raises after the queued messages."""
        self.waker: Callable[[Inbox], None] | None = None
        """Called with the inbox after a message is queued or the session ends."""
        self.waiter: Any = None
        """What :attr:`waker` wakes (a future, a condition variable): the front end's."""

    def offer(self, data: bytes) -> str | None:
        """Queue one message; the drop reason when a bound refuses it (the engine counts it)."""
        size = len(data) + MESSAGE_OVERHEAD
        if self.held + size > self.limit_bytes or len(self.messages) >= self.limit_messages:
            return "queue_full"
        budget = self.budget
        if budget is not None:
            if budget.held + size > budget.limit:
                return "server_buffer_full"
            budget.held += size
        self.held += size
        messages = self.messages
        if messages is _NO_MESSAGES:
            self.messages = messages = collections.deque()
        messages.append(data)
        waker = self.waker
        if waker is not None:
            waker(self)
        return None

    def take(self) -> bytes | None:
        """The oldest message; None if the caller must wait; raises once the session ended and
        every message was taken."""
        if self.messages:
            data = self.messages.popleft()
            size = len(data) + MESSAGE_OVERHEAD
            self.held -= size
            if self.budget is not None:
                self.budget.held -= size
            return data
        if self.error is not None:
            raise fresh_error(self.error)
        return None

    def end(self, error: DTLSError) -> bool:
        """Record how the session ended; True the first time (waiters must be woken)."""
        if self.error is not None:
            return False
        self.error = error
        waker = self.waker
        if waker is not None:
            waker(self)
        return True

    def release(self) -> None:
        """Forget every queued message (the channel is closed or gone): give their bytes back."""
        if self.budget is not None:
            self.budget.held -= self.held
        self.held = 0
        self.messages = _NO_MESSAGES

    @property
    def ended(self) -> bool:
        """Whether the session is over."""
        return self.error is not None
