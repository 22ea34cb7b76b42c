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

from dtlskit import asyncio as aio
from dtlskit import sync

__all__ = ["WAIT", "aecho", "has_ipv6", "needs_fork", "needs_ipv6", "run", "secho", "v6only"]

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


async def aecho(channel: aio.Channel) -> None:
    """An asyncio echo handler: every message back, until the session ends."""
    async for message in channel:
        await channel.send(message)


def secho(channel: sync.Channel) -> None:
    """A blocking echo handler: every message back, until the session ends."""
    for message in channel:
        channel.send(message)


def v6only(sock: socket.socket) -> bool | None:
    """``IPV6_V6ONLY`` of an IPv6 socket; None for another family."""
    if sock.family != socket.AF_INET6:
        return None
    return bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
