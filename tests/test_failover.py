"""Client failover (issue 12): after ``new_port_after_lost_flights`` unanswered flights the
handshake starts again from a new source port, within the same deadline, in both flavours."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import dtlskit
from dtlskit import sync


def silent_node() -> tuple[socket.socket, list[int], threading.Event]:
    """A UDP socket that reads ClientHellos and never answers: a dead node behind a
    balancer. Records the source port of every datagram."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    ports: list[int] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                _, (_, port) = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            ports.append(port)

    threading.Thread(target=run, daemon=True).start()
    return sock, ports, stop


def connect_sync(port: int, config: dtlskit.DTLSConfiguration) -> None:
    sync.connect("127.0.0.1", port, config=config)


def connect_async(port: int, config: dtlskit.DTLSConfiguration) -> None:
    async def main() -> None:
        async with dtlskit.connect("127.0.0.1", port, config=config):
            pass

    asyncio.run(main())


@pytest.mark.parametrize("connect", [connect_sync, connect_async], ids=["sync", "asyncio"])
@pytest.mark.parametrize(("lost", "min_ports"), [(2, 2), (None, 1)])
def test_unanswered_handshake_moves_to_a_new_source_port(client_config, connect, lost, min_ports):
    sock, ports, stop = silent_node()
    config = client_config.replace(handshake_timeout=7.5, new_port_after_lost_flights=lost)
    try:
        with pytest.raises(dtlskit.HandshakeTimeout):
            connect(sock.getsockname()[1], config)
    finally:
        stop.set()
        sock.close()
    distinct = list(dict.fromkeys(ports))
    assert len(distinct) >= min_ports
    if lost is None:
        assert len(distinct) == 1  # one port for the whole deadline
    else:
        # Each port carried its first flight and `lost` retransmissions (the last one sent as
        # the client moves on), no more.
        for port in distinct[:-1]:
            assert ports.count(port) == lost + 1


def test_new_port_after_lost_flights_is_validated():
    with pytest.raises(dtlskit.ConfigurationError, match="new_port_after_lost_flights"):
        dtlskit.DTLSConfiguration.client(new_port_after_lost_flights=0)
