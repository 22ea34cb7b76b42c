"""Helpers every test module shares: one bound on waits, one IPv6 probe, one way to run a
coroutine with a bound.

``WAIT`` is a safety net for every blocking wait in the tests (a join, a queue get, a child's
exit): a test that reaches it has failed. It is never part of an assertion about time.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

__all__ = ["WAIT", "has_ipv6", "needs_fork", "needs_ipv6", "run"]

T = TypeVar("T")

WAIT = 10.0
"""Seconds any single wait may take before the test fails (never a timing assertion)."""


def has_ipv6() -> bool:
    """Whether this host can bind a UDP socket to the IPv6 loopback ``::1``."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this host")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork")


def run(coro: Coroutine[Any, Any, T], bound: float = 30.0) -> T:
    """Run ``coro`` in a fresh event loop; fail if it takes longer than ``bound`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, bound))
