"""Adversarial review of issue 8, defect 2: the fair half-open pool against an attacker that
*does* get past the first flight.

Eviction only ever took a handshake still waiting at the server's first flight, and the
first-flight deadline only ends those. But getting past it costs a validated attacker one more
datagram: it answers the server's flight with a ClientKeyExchange (any valid public key) and
never sends its ChangeCipherSpec and Finished. Such a handshake cannot be evicted and lives for
the whole handshake deadline, so ``max_half_open / max_half_open_per_address`` addresses (16 with
the defaults) again hold every slot and legitimate clients time out — issue 8's "a few addresses
can take every half-open slot", with 16 addresses instead of four.
"""

from __future__ import annotations

from typing import Any

from dtlskit.core import DTLSConnection, ServerEngine
from dtlskit.core.records import CONTENT_HANDSHAKE, split_records_untrusted
from tests.core.test_server_fairness import ATTACK_LIMITS, Hub, limits

Address = tuple[Any, ...]


def _server_output(hub: Hub, address: Address) -> list[bytes]:
    """The server's datagrams for ``address``; everyone else's stay on their way."""
    mine = []
    for data, to in hub.server.datagrams_to_send():
        if to == address:
            mine.append(data)
        else:
            hub.in_flight.append((hub.now + hub.latency, False, data, to))
    return mine


def stalled_half_open(hub: Hub, address: Address, config: Any) -> bool:
    """A validated attacker that answers the server's first flight with its ClientKeyExchange
    (epoch-0 handshake records only) and then stays silent. True if the server took it."""
    client = DTLSConnection(config, server=False)
    client.connect(hub.now)
    (first,) = client.datagrams_to_send()
    hub.server.receive_datagram(first, address, hub.now)
    replies = _server_output(hub, address)
    if not replies:
        return False
    client.receive_datagram(replies[0], hub.now)
    (second,) = client.datagrams_to_send()
    hub.server.receive_datagram(second, address, hub.now)
    flight = _server_output(hub, address)
    if not flight:
        return False
    for data in flight:
        client.receive_datagram(data, hub.now)
    for data in client.datagrams_to_send():
        kept = b"".join(
            r.raw
            for r in split_records_untrusted(data)
            if r.content_type == CONTENT_HANDSHAKE and r.epoch == 0
        )
        if kept:
            hub.server.receive_datagram(kept, address, hub.now)
    _server_output(hub, address)
    return True


def test_stalled_handshakes_past_the_first_flight_do_not_lock_legitimate_clients_out(
    server_config, client_config
):
    config = server_config.replace(limits=limits(**ATTACK_LIMITS))  # pool 64, 8 per address
    server = ServerEngine(config)
    hub = Hub(server)
    # Eight addresses take the whole pool, with handshakes past the first flight.
    for step in range(64):
        assert stalled_half_open(hub, (f"127.0.6.{step % 8 + 1}", 10_000 + step), client_config)
    assert server.statistics().half_open == 64
    legit: list[Address] = []
    for step in range(40):  # then keep it full while legitimate clients arrive
        stalled_half_open(hub, (f"127.0.6.{step % 8 + 1}", 20_000 + step), client_config)
        if step % 10 == 9:
            address = (f"127.1.6.{len(legit) + 1}", 5000)
            legit.append(address)
            hub.connect(address, client_config)
        hub.advance(0.025)
    hub.advance(5.0)  # far less than the attackers' handshake deadline (30 s)
    established = sum(hub.established(a) for a in legit)
    stats = server.statistics()
    assert established == len(legit), (established, len(legit), stats)
    assert stats.drops["half_open_evicted"] >= len(legit)
    # The attackers' own new handshakes, from sources already holding the most, are refused.
    assert stats.drops.get("max_half_open", 0) + stats.drops["max_half_open_per_address"] > 0
