"""Past one machine (issue 12, part 2): two dtlskit nodes (127.0.0.2, 127.0.0.3), each with two
``SO_REUSEPORT`` workers, behind nginx ``stream`` (UDP, ``hash $remote_addr consistent``), with
clients from several 127.0.0.x source addresses. nginx runs with its own prefix and
configuration in a temporary directory and is stopped by PID (``benchmarks/scaling.py``)."""

from __future__ import annotations

import contextlib

import pytest
from benchmarks import scaling

from dtlskit import sync
from dtlskit.certs import PKIFiles

pytestmark = pytest.mark.skipif(
    scaling.nginx_available() is not None, reason=str(scaling.nginx_available())
)

SOURCES = [f"127.0.0.{i}" for i in range(10, 22)]


def test_sessions_stay_on_their_node_and_resume_there(pki: PKIFiles) -> None:
    config = scaling.client_config(pki)
    with scaling.deployment(pki) as (front, nodes, balancer), contextlib.ExitStack() as stack:
        served: dict[str, str] = {}
        channels: dict[str, sync.Channel] = {}
        for source in SOURCES:
            # Kept open: every session reaches its node from nginx's one address, so the nodes
            # count their per-address limits per address and port (Limits.address_key); with
            # the default key a node would refuse all but 4 of them.
            channel = stack.enter_context(
                sync.connect(
                    front[0],
                    front[1],
                    config=config,
                    local_addr=(source, 0),
                    timeout=scaling.WAIT,
                )
            )
            channel.send(b"who?")
            served[source] = channel.recv(timeout=scaling.WAIT).decode()
            channels[source] = channel
        assert set(served.values()) == {node.name for node in nodes}, served
        for source, channel in channels.items():
            # Every message of a session reaches the node that served its handshake.
            for _ in range(3):
                channel.send(b"who?")
                assert channel.recv(timeout=scaling.WAIT).decode() == served[source]
        for source, channel in channels.items():
            # A new connection from the same address (another port) reaches the same node
            # (the hash is over the address), which resumes the session it issued.
            name, reused, _ = scaling.who(front, config, source, session=channel.session)
            assert name == served[source]
            assert reused, f"{source}: not resumed on {name}"
        assert balancer is not None


def test_a_killed_node_fails_over_to_the_other(pki: PKIFiles) -> None:
    result = scaling.measure_failover(pki, lost_flights=2)
    assert result["before"] != result["after"]
    print(f"failover after killing {result['before']}: {result['failover_seconds']} s")
