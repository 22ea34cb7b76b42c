"""QUIC through the seeded impairment proxy (drop, duplicate, reorder, corrupt) on loopback."""

from __future__ import annotations

import pytest

from dtlskit.sync import quic
from dtlskit.testing.impairment import ImpairmentProxy


def echo_streams(channel: quic.QuicChannel) -> None:
    while True:
        stream = channel.accept_stream()
        stream.write(stream.read(), end=True)


@pytest.mark.parametrize(
    "impairment",
    [
        {"drop": 0.1, "seed": 1},
        {"reorder": 0.2, "reorder_hold": 0.02, "duplicate": 0.1, "seed": 2},
        {"drop": 0.05, "reorder": 0.1, "duplicate": 0.05, "corrupt": 0.05, "seed": 3},
    ],
    ids=["drop", "reorder+duplicate", "mixed+corrupt"],
)
def test_every_message_arrives_whole_and_in_its_stream(
    quic_server_config, quic_client_config, impairment
):
    with (
        quic.serve(echo_streams, "127.0.0.1", 0, config=quic_server_config) as server,
        ImpairmentProxy(server.addresses[0][:2], **impairment) as proxy,
    ):
        host, port = proxy.address
        with quic.connect(host, port, config=quic_client_config, timeout=60) as channel:
            for i in range(20):
                payload = (b"%d:" % i) * (1 + 200 * (i % 5))  # up to ~5 KB: many packets
                assert channel.request(payload, timeout=60) == payload
            stats = channel.statistics()
        counters = proxy.counters
    impaired = sum(counters[k] for k in ("dropped", "duplicated", "reordered", "corrupted"))
    assert impaired > 0, counters  # the proxy really did impair the traffic
    assert stats.datagrams_received > 0
