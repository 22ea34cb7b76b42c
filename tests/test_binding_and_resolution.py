"""Ports, the one binding rule every server follows, configuration checks at start-up, and
name resolution (bounded by the timeout; the next address after a refusal), in both flavours.

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

import socket
import threading
import time
from typing import Any

import pytest

import dtlskit
from dtlskit import asyncio as aio
from dtlskit import sync, udp
from dtlskit._frontend import sockets as _sockets
from tests.helpers import WAIT, aecho, needs_fork, needs_ipv6, run, secho, v6only
from tests.peers import free_udp_port

# -- 2. port numbers ------------------------------------------------------------------------------

BAD_PORTS = [70000, -1, 65536]


@pytest.mark.parametrize("port", BAD_PORTS)
def test_sync_refuses_out_of_range_ports(
    port: int, server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        sync.serve(secho, "127.0.0.1", port, config=server_config)
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        sync.listen("127.0.0.1", port, config=server_config)
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        sync.connect("127.0.0.1", port, config=client_config, timeout=1)
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        udp.UDPEchoServer("127.0.0.1", port)
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        udp.UDPClient("127.0.0.1", port)
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        _sockets.resolve("127.0.0.1", port)
    with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
        _sockets.make_udp_socket(socket.AF_INET, bind=("127.0.0.1", port))


@pytest.mark.parametrize("port", BAD_PORTS)
def test_asyncio_refuses_out_of_range_ports(
    port: int, server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
            await aio.serve(aecho, "127.0.0.1", port, config=server_config)
        with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
            await aio.listen("127.0.0.1", port, config=server_config)
        with pytest.raises(dtlskit.ConfigurationError, match=r"port must be 0\.\.65535"):
            await aio.connect("127.0.0.1", port, config=client_config, timeout=1)

    run(main())


# -- 9. configuration checks, and the one binding rule -----------------------------------------


def test_config_none_is_a_configuration_error_in_both() -> None:
    messages = []
    for start in (
        lambda: sync.serve(secho, "127.0.0.1", 0, config=None),  # type: ignore[arg-type]
        lambda: sync.listen("127.0.0.1", 0, config=None),  # type: ignore[arg-type]
    ):
        with pytest.raises(dtlskit.ConfigurationError) as info:
            start()
        messages.append(str(info.value))

    async def main() -> None:
        for start in (
            lambda: aio.serve(aecho, "127.0.0.1", 0, config=None),  # type: ignore[arg-type]
            lambda: aio.listen("127.0.0.1", 0, config=None),  # type: ignore[arg-type]
        ):
            with pytest.raises(dtlskit.ConfigurationError) as info:
                await start()
            messages.append(str(info.value))

    run(main())
    assert len(set(messages)) == 1, messages


@needs_ipv6
def test_binding_rule_all_interfaces() -> None:
    sockets = _sockets.bind_udp_sockets(None, 0)
    try:
        assert sorted(sock.family for sock in sockets) == [socket.AF_INET, socket.AF_INET6]
        assert len({sock.getsockname()[1] for sock in sockets}) == 1
        assert [v6only(s) for s in sockets if s.family == socket.AF_INET6] == [True]
    finally:
        for sock in sockets:
            sock.close()
    with pytest.raises(dtlskit.ConfigurationError, match="::"):
        _sockets.bind_udp_sockets("", 0, ipv6_only=False)


@needs_ipv6
@pytest.mark.parametrize(("ipv6_only", "expected"), [(None, False), (True, True), (False, False)])
def test_binding_rule_ipv6_wildcard(ipv6_only: bool | None, expected: bool) -> None:
    sockets = _sockets.bind_udp_sockets("::", 0, ipv6_only=ipv6_only)
    try:
        assert [v6only(sock) for sock in sockets] == [expected]
    finally:
        for sock in sockets:
            sock.close()


@needs_ipv6
def test_every_server_follows_the_binding_rule(server_config: dtlskit.DTLSConfiguration) -> None:
    def shape(sockets: list[socket.socket]) -> list[tuple[int, bool | None]]:
        return sorted((int(sock.family), v6only(sock)) for sock in sockets)

    wildcard = [(int(socket.AF_INET), None), (int(socket.AF_INET6), True)]
    dual = [(int(socket.AF_INET6), False)]
    with sync.serve(secho, None, 0, config=server_config) as server:
        assert shape(server.sockets) == wildcard
    with sync.serve(secho, "::", 0, config=server_config) as server:
        assert shape(server.sockets) == dual
    with sync.listen(None, 0, config=server_config) as lst:
        assert shape(lst.sockets) == wildcard
        assert len(lst.addresses) == 2
    with sync.listen("::", 0, config=server_config) as lst:
        assert shape(lst.sockets) == dual
    with udp.UDPEchoServer(None, 0) as echo_server:
        assert shape(echo_server._sockets) == wildcard
    with udp.UDPEchoServer("::", 0) as echo_server:
        assert shape(echo_server._sockets) == dual

    async def main() -> None:
        for host, expected in ((None, wildcard), ("::", dual)):
            async with aio.serve(aecho, host, 0, config=server_config) as server:
                assert shape(server.sockets) == expected
            async with aio.listen(host, 0, config=server_config) as listener:
                assert shape(listener.sockets) == expected

    run(main())


@needs_ipv6
def test_sync_listen_on_all_interfaces_accepts_both_families(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with sync.listen(None, 0, config=server_config) as lst:
        port = lst.addresses[0][1]
        for host in ("127.0.0.1", "::1"):
            with (
                sync.connect(host, port, config=client_config, timeout=WAIT) as client,
                lst.accept(timeout=WAIT) as accepted,
            ):
                client.send(host.encode())
                assert accepted.recv(timeout=WAIT) == host.encode()
        assert lst.statistics().handshakes_completed == 2


@needs_fork
@needs_ipv6
def test_sync_supervisor_reports_the_addresses_workers_bind(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    port = free_udp_port()
    with sync.serve(secho, None, port, config=server_config) as single:
        expected = sorted(single.addresses)
    with sync.serve(secho, None, port, config=server_config, workers=2) as supervisor:
        assert sorted(supervisor.addresses) == expected
        assert {address[0] for address in supervisor.addresses} == {"0.0.0.0", "::"}


# -- 11. the next resolved address after a refusal ----------------------------------------------


@pytest.fixture
def two_addresses(monkeypatch: pytest.MonkeyPatch) -> str:
    """The name ``two.test`` resolves to 127.0.0.2 (nothing listens: refused), then 127.0.0.1."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "two.test":
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", (address, int(port)))
            for address in ("127.0.0.2", "127.0.0.1")
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "two.test"


def test_both_flavours_move_on_after_a_refusal(
    two_addresses: str,
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
) -> None:
    with sync.serve(secho, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        with sync.connect(two_addresses, port, config=client_config, timeout=WAIT) as channel:
            assert channel.getpeername() == ("127.0.0.1", port)

        async def main() -> None:
            async with aio.connect(two_addresses, port, config=client_config) as channel:
                assert channel.getpeername() == ("127.0.0.1", port)

        run(main())


# -- optional: sync connect's name resolution honours the timeout -------------------------------


def test_sync_connect_resolution_honours_timeout(
    monkeypatch: pytest.MonkeyPatch, client_config: dtlskit.DTLSConfiguration
) -> None:
    real = socket.getaddrinfo
    release = threading.Event()

    def slow(
        host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        if host == "slow.test":
            if not flags & socket.AI_NUMERICHOST:
                release.wait(WAIT)  # a resolver that does not answer in time
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, family, type, proto, flags)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    started = time.monotonic()
    try:
        with pytest.raises(dtlskit.HandshakeTimeout, match=r"resolving 'slow\.test'"):
            sync.connect("slow.test", 4433, config=client_config, timeout=0.3)
        assert time.monotonic() - started < 3.0
    finally:
        release.set()
