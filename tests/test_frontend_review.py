"""Regression tests for the front-end review: one section per finding, both flavours side by side.

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import dtlskit
from dtlskit import asyncio as aio
from dtlskit import sync, udp
from dtlskit._frontend import sockets as _sockets
from dtlskit.certs import PKIFiles
from tests.peers import free_udp_port

T = TypeVar("T")
WAIT = 10.0


def run(coro: Coroutine[Any, Any, T], bound: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, bound))


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this host")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork")


async def aecho(channel: aio.Channel) -> None:
    async for message in channel:
        await channel.send(message)


def secho(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(message)


def v6only(sock: socket.socket) -> bool | None:
    if sock.family != socket.AF_INET6:
        return None
    return bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


# -- 1. SIGTERM while the workers start ---------------------------------------------------------

WORKERS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dtlskit import DTLSConfiguration
    from dtlskit import asyncio as aio, sync

    PARENT = os.getpid()

    class Announcing(DTLSConfiguration):
        # run_server builds the context in the parent after it started holding the signals:
        # "starting" then means run_server is running (a signal before it is entered would kill
        # the process by its default action, which no library can prevent).
        def build_context(self, server):
            context = super().build_context(server)
            if os.getpid() == PARENT:
                sys.stderr.write("starting\\n")
                sys.stderr.flush()
            return context

    def sync_echo(channel):
        for message in channel:
            channel.send(message)

    async def async_echo(channel):
        async for message in channel:
            await channel.send(message)

    flavour, cert, key, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = Announcing.server(cert, key)
    run_server = sync.run_server if flavour == "sync" else aio.run_server
    handler = sync_echo if flavour == "sync" else async_echo
    sys.exit(run_server(handler, "127.0.0.1", port, config=config, workers=2))
    """
)

SIGNAL_TRIALS = 15


@needs_fork
@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_sigterm_while_workers_start_exits_0(flavour: str, tmp_path: Path, pki: PKIFiles) -> None:
    """SIGTERM to the process group at once after start-up: every run ends, with status 0."""
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)
    rng = random.Random(1234)
    outcomes: list[str] = []
    details: list[str] = []
    for _ in range(SIGNAL_TRIALS):
        port = free_udp_port()
        argv = [sys.executable, str(script), flavour, str(pki.server_cert), str(pki.server_key)]
        process = subprocess.Popen(
            [*argv, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert process.stderr is not None
            assert process.stderr.readline() == b"starting\n"
            time.sleep(rng.uniform(0.001, 0.03))
            os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                outcomes.append("hung")
                continue
            errors = process.stderr.read().decode()
            if code != 0 or "Traceback" in errors:
                details.append(f"exit {code}:\n{errors[-2000:]}")
            outcomes.append(f"exit {code}" + (" with a traceback" if "Traceback" in errors else ""))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT)
            if process.stderr is not None:
                process.stderr.close()
    assert outcomes == ["exit 0"] * SIGNAL_TRIALS, "\n".join(details)


RUN_WORKERS_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from dtlskit._frontend import workers

    def worker(mode):
        def run_one(index):
            if index == 0:
                return  # a worker that served and stopped
            if mode == "raise":
                raise RuntimeError("worker failed")
            os.kill(os.getpid(), {"term": signal.SIGTERM, "int": signal.SIGINT,
                                  "kill": signal.SIGKILL}[mode])
            signal.pause()  # pragma: no cover - the signal ends it first
        return run_one

    results = {mode: workers.run_workers(2, worker(mode)) for mode in sys.argv[1:]}
    print(" ".join(f"{mode}={code}" for mode, code in results.items()))
    """
)


@needs_fork
def test_run_workers_counts_a_stop_signal_as_a_clean_exit(tmp_path: Path) -> None:
    script = tmp_path / "run_workers.py"
    script.write_text(RUN_WORKERS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), "term", "int", "kill", "raise"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.stdout.split() == ["term=0", "int=0", "kill=1", "raise=1"], result.stderr


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


# -- 3. ICMP errors after the handshake ---------------------------------------------------------


class Relay:
    """A UDP relay between one client and a server on loopback. :meth:`vanish` closes it without
    a word, as a crashed peer would: the client's next datagram draws ICMP port unreachable."""

    def __init__(self, server_port: int) -> None:
        self._server = ("127.0.0.1", server_port)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            try:
                data, address = self._sock.recvfrom(65536)
                if address == self._server:
                    if client is not None:
                        self._sock.sendto(data, client)
                else:
                    client = address
                    self._sock.sendto(data, self._server)
            except OSError:
                continue

    def vanish(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._sock.close()


def test_asyncio_peer_vanishing_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            relay = Relay(server.addresses[0][1])
            try:
                async with aio.connect("127.0.0.1", relay.port, config=client_config) as channel:
                    await channel.send(b"x")
                    assert await asyncio.wait_for(channel.recv(), WAIT) == b"x"
                    relay.vanish()
                    with pytest.raises(dtlskit.ConnectionLost, match="port unreachable"):
                        await channel.send(b"anyone there?")
                        await asyncio.wait_for(channel.recv(), WAIT)
                    with pytest.raises(dtlskit.ConnectionLost):
                        await channel.send(b"again")
                    with pytest.raises(dtlskit.ConnectionLost):
                        async for _ in channel:
                            pass
            finally:
                relay.vanish()

    run(main())


def test_sync_peer_vanishing_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with sync.serve(secho, "127.0.0.1", 0, config=server_config) as server:
        relay = Relay(server.addresses[0][1])
        try:
            with sync.connect("127.0.0.1", relay.port, config=client_config, timeout=WAIT) as ch:
                ch.send(b"x")
                assert ch.recv(timeout=WAIT) == b"x"
                relay.vanish()
                with pytest.raises(dtlskit.ConnectionLost, match="port unreachable"):
                    ch.send(b"anyone there?")
                    ch.recv(timeout=WAIT)
                with pytest.raises(dtlskit.ConnectionLost):
                    ch.send(b"again")
        finally:
            relay.vanish()


UNREACHABLE = OSError(errno.EHOSTUNREACH, "No route to host")


def test_asyncio_other_icmp_error_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as channel:
                driver = channel._endpoint  # as its read of the socket reports it
                driver._socket_failed(UNREACHABLE)
                driver.flush()
                with pytest.raises(dtlskit.ConnectionLost, match="No route to host"):
                    await asyncio.wait_for(channel.recv(), WAIT)

    run(main())


def test_sync_other_icmp_error_after_the_handshake_is_connection_lost(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with (
        sync.serve(secho, "127.0.0.1", 0, config=server_config) as server,
        sync.connect("127.0.0.1", server.addresses[0][1], config=client_config) as channel,
    ):
        io = channel._io
        with io.lock:
            io._socket_failed_locked(UNREACHABLE)  # type: ignore[attr-defined]
            io.pump_locked()
        with pytest.raises(dtlskit.ConnectionLost, match="No route to host"):
            channel.recv(timeout=WAIT)


def test_socket_errors_map_by_engine_state(client_config: dtlskit.DTLSConfiguration) -> None:
    from dtlskit._frontend.channel_base import client_socket_error
    from dtlskit.core.connection import DTLSConnection, State

    peer = ("127.0.0.1", 9)
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    for exc, expected in ((refused, dtlskit.ConnectionRefused), (UNREACHABLE, OSError)):
        engine = DTLSConnection(client_config, server=False, peer_address=peer)
        engine.connect(time.monotonic())
        assert engine.state is State.HANDSHAKING
        error = client_socket_error(engine, exc, peer)
        assert isinstance(error, expected) and isinstance(error, dtlskit.DTLSError)
        assert not isinstance(error, dtlskit.ConnectionClosed)
        assert engine.error is error  # the handshake fails at once
        assert error.__cause__ is exc
    engine = DTLSConnection(client_config, server=False, peer_address=peer)
    too_large = OSError(errno.EMSGSIZE, "Message too long")
    error = client_socket_error(engine, too_large, peer)
    assert isinstance(error, dtlskit.TransportError) and "mtu" in str(error)
    assert engine.error is None  # a datagram too large ends nothing


# -- 4. asyncio objects after close: no raw OSError ---------------------------------------------


def test_asyncio_server_and_listener_after_close(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            addresses = server.addresses
            async with aio.connect("127.0.0.1", addresses[0][1], config=client_config) as ch:
                await ch.send(b"x")
                await asyncio.wait_for(ch.recv(), WAIT)
        assert server.addresses == addresses
        assert "closed" in repr(server) and str(addresses[0][1]) in repr(server)
        for call in (ch.getsockname, ch.fileno, ch.get_ttl, ch.error):
            with pytest.raises(dtlskit.TransportError, match="closed") as info:
                call()
            assert info.value.errno == errno.EBADF
        async with aio.listen("127.0.0.1", 0, config=server_config) as listener:
            assert listener.getsockname() == listener.addresses[0]
        for call in (listener.getsockname, listener.get_recv_buffer_size, listener.fileno):
            with pytest.raises(dtlskit.TransportError, match="closed"):
                call()
        with pytest.raises(dtlskit.TransportError, match="closed"):
            listener.set_ttl(5)

    run(main())


def test_asyncio_server_collected_unclosed_warns(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    """The warning survives sockets closed first (as when the loop's transports are collected
    before the server): repr() no longer reads addresses from the closed sockets."""

    async def main() -> str:
        server = await aio.serve(aecho, "127.0.0.1", 0, config=server_config)  # never closed
        for endpoint in server._endpoints:
            endpoint.abort()
        await asyncio.sleep(0)
        return repr(server)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = run(main())
        gc.collect()
    assert text.startswith("<Server 127.0.0.1:")
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert any(m.startswith("unclosed <Server 127.0.0.1:") for m in messages), messages


# -- 5. what send() accepts ---------------------------------------------------------------------

NOT_BYTES: list[Any] = [5, 10**9, [65, 66], "text", None, object()]


def check_refusal(bad: Any, error: BaseException) -> None:
    assert isinstance(error, dtlskit.InvalidMessage) and isinstance(error, ValueError), error
    if isinstance(bad, str):
        assert "encode" in str(error)
    if isinstance(bad, bytes | memoryview):
        assert "empty" in str(error)


REFUSED: list[Any] = [*NOT_BYTES, b"", memoryview(b"")]


def test_asyncio_send_accepts_only_bytes(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.serve(aecho, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as channel:
                for bad in REFUSED:
                    with pytest.raises(dtlskit.DTLSError) as info:
                        await channel.send(bad)
                    check_refusal(bad, info.value)
                await channel.send(memoryview(b"still fine"))
                assert await asyncio.wait_for(channel.recv(), WAIT) == b"still fine"
                assert not channel.closed

    run(main())


def test_sync_send_accepts_only_bytes(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    with (
        sync.serve(secho, "127.0.0.1", 0, config=server_config) as server,
        sync.connect("127.0.0.1", server.addresses[0][1], config=client_config) as channel,
    ):
        for bad in REFUSED:
            with pytest.raises(Exception) as info:
                channel.send(bad)
            check_refusal(bad, info.value)
        channel.send(bytearray(b"still fine"))
        assert channel.recv(timeout=WAIT) == b"still fine"


# -- 6. an accepted channel dropped unclosed ----------------------------------------------------


def test_asyncio_dropped_accepted_channel_warns_and_closes(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    async def main() -> None:
        async with aio.listen("127.0.0.1", 0, config=server_config) as listener:
            port = listener.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as client:
                accepted = await listener.accept(timeout=WAIT)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    del accepted
                    gc.collect()
                messages = [str(w.message) for w in caught]
                assert any(m.startswith("unclosed <Channel 127.0.0.1:") for m in messages)
                with pytest.raises(dtlskit.ConnectionClosedByPeer):
                    await asyncio.wait_for(client.recv(), WAIT)
                assert listener.statistics().sessions == 0

    run(main())


def test_asyncio_handler_channel_is_not_collected(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    received = asyncio.Event()
    collected = asyncio.Event()

    async def slow_echo(channel: aio.Channel) -> None:
        message = await channel.recv()
        received.set()
        await collected.wait()  # the test collects garbage meanwhile
        await channel.send(message)

    async def main() -> None:
        async with aio.serve(slow_echo, "127.0.0.1", 0, config=server_config) as server:
            port = server.addresses[0][1]
            async with aio.connect("127.0.0.1", port, config=client_config) as client:
                await client.send(b"hold on")
                await asyncio.wait_for(received.wait(), WAIT)
                gc.collect()  # while the handler holds only its channel, waiting
                collected.set()
                assert await asyncio.wait_for(client.recv(), WAIT) == b"hold on"

    run(main())


# -- 7. the CLI: test_workers_on_a_taken_port_is_one_line and
# test_port_out_of_range_is_a_usage_error are in tests/test_cli.py


# -- 8. TTL and socket option errors ------------------------------------------------------------


def test_ttl_ranges_per_family(server_config: dtlskit.DTLSConfiguration) -> None:
    with sync.listen("127.0.0.1", 0, config=server_config) as lst:
        for bad in (0, 256, -1):
            with pytest.raises(dtlskit.ConfigurationError, match=r"1\.\.255"):
                lst.set_ttl(bad)
        lst.set_ttl(1)
        assert lst.get_ttl() == 1


@needs_ipv6
def test_ipv6_hop_limit_may_be_0(server_config: dtlskit.DTLSConfiguration) -> None:
    with sync.listen("::1", 0, config=server_config) as lst:
        lst.set_ttl(0)
        assert lst.get_ttl() == 0
        with pytest.raises(dtlskit.ConfigurationError, match=r"0\.\.255"):
            lst.set_ttl(256)


class _FailingSocket:
    family = socket.AF_INET6

    def fileno(self) -> int:
        return 7

    def getsockname(self) -> tuple[str, int, int, int]:
        return ("::1", 4433, 0, 0)

    def setsockopt(self, *args: Any) -> None:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    getsockopt = setsockopt


class _Options(_sockets.SocketOptions):
    def _bound_socket(self) -> Any:
        return _FailingSocket()


def test_no_raw_oserror_from_socket_options() -> None:
    options = _Options()
    calls: list[Callable[[], object]] = [
        options.error,
        lambda: options.set_ttl(3),
        options.get_ttl,
        lambda: options.set_ipv6_only(True),
        options.get_ipv6_only,
        lambda: options.set_recv_buffer_size(65536),
        options.get_recv_buffer_size,
        lambda: options.set_send_buffer_size(65536),
        options.get_send_buffer_size,
        lambda: options.bind_to_device("lo"),
    ]
    for call in calls:
        with pytest.raises(dtlskit.TransportError) as info:
            call()
        assert info.value.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP)


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


# -- 10. dead code and exports ------------------------------------------------------------------


def test_sync_server_exports_run_server() -> None:
    import dtlskit.sync.server as sync_server

    assert "run_server" in sync_server.__all__
    assert set(sync_server.__all__) <= set(dir(sync_server))


def test_every_shared_socket_helper_is_used() -> None:
    source = Path(_sockets.__file__).parent.parent
    own = Path(_sockets.__file__)
    users = "".join(path.read_text() for path in source.rglob("*.py") if path != own)
    helpers = [name for name in _sockets.__all__ if callable(getattr(_sockets, name))]
    unused = [name for name in helpers if not re.search(rf"\b{name}\b", users)]
    assert unused == []
    assert not hasattr(_sockets, "is_ip_literal")


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


def test_frontend_spec_says_refusals_move_on() -> None:
    spec = (Path(__file__).parents[1] / "docs" / "frontends-spec.md").read_text()
    assert "only for resolution failures" not in spec
    assert "port unreachable" in spec


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
