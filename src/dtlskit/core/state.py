"""The life cycle of one association, as an enum every layer compares by identity."""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """Where an association is in its life."""

    INITIAL = "initial"
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"
    TERMINATED = "terminated"
