"""The asyncio and blocking front ends are mirror images: the same public names on
``Server``, ``Listener`` and ``Channel``, the same module exports, the same
``install_signal_handlers`` signature and return value. Differences that remain by nature (a
``timeout=`` on blocking calls) are listed here and in docs/features.md."""

from __future__ import annotations

import asyncio
import inspect
import signal
from pathlib import Path

import pytest

import dtlskit
from dtlskit import asyncio as aio
from dtlskit import sync
from tests.helpers import WAIT, run

# Parameters only the blocking flavour has: an asyncio call is bounded with asyncio.wait_for.
BLOCKING_ONLY_PARAMETERS = {"timeout"}
# serve(workers=N) forks; an event loop already running must not be forked.
SIGNATURE_EXCEPTIONS = {("serve", "workers")}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("name", ["Server", "Listener", "Channel"])
def test_classes_have_the_same_public_names(name: str) -> None:
    assert public(getattr(aio, name)) == public(getattr(sync, name))


@pytest.mark.parametrize("name", ["Server", "Listener", "Channel"])
def test_methods_take_the_same_parameters(name: str) -> None:
    a, s = getattr(aio, name), getattr(sync, name)
    for member in sorted(public(a)):
        fa, fs = getattr(a, member), getattr(s, member)
        if not (inspect.isfunction(fa) and inspect.isfunction(fs)):
            continue
        pa = [p for p in inspect.signature(fa).parameters if p not in BLOCKING_ONLY_PARAMETERS]
        ps = [p for p in inspect.signature(fs).parameters if p not in BLOCKING_ONLY_PARAMETERS]
        assert pa == ps, f"{name}.{member}: {pa} vs {ps}"


def test_modules_export_the_same_names() -> None:
    assert set(aio.__all__) == set(sync.__all__)
    for function in ("connect", "serve", "listen", "run_server", "install_signal_handlers"):
        pa = set(inspect.signature(getattr(aio, function)).parameters)
        ps = set(inspect.signature(getattr(sync, function)).parameters)
        assert {(function, p) for p in pa ^ ps} <= SIGNATURE_EXCEPTIONS, function


def test_the_remaining_differences_are_documented() -> None:
    features = (Path(__file__).parent.parent / "docs" / "features.md").read_text()
    assert "What remains different, by nature" in features
    assert "`workers=`\non `serve()` only in the blocking flavour" in features


def test_install_signal_handlers_returns_a_restore_function_in_both_flavours(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with sync.serve(lambda channel: None, "127.0.0.1", 0, config=server_config) as server:
        restore = sync.install_signal_handlers(server, signals=(signal.SIGTERM,))
        assert signal.getsignal(signal.SIGTERM) is not before
        restore()
        assert signal.getsignal(signal.SIGTERM) is before

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.serve(
            lambda channel: asyncio.sleep(0), "127.0.0.1", 0, config=server_config
        ) as server:
            restore = aio.install_signal_handlers(server, signals=(signal.SIGTERM,))
            assert loop.remove_signal_handler(signal.SIGTERM)  # it was installed
            aio.install_signal_handlers(server, signals=(signal.SIGTERM,))
            restore()
            assert not loop.remove_signal_handler(signal.SIGTERM)  # restore removed it

    run(main(), WAIT)


def test_shutdown_is_close_and_wait_closed_follows_it(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    server = sync.serve(lambda channel: None, "127.0.0.1", 0, config=server_config)
    assert server.is_serving()
    server.shutdown()
    server.wait_closed(timeout=WAIT)
    assert not server.is_serving()
    listener = sync.listen("127.0.0.1", 0, config=server_config)
    assert listener.is_serving() and not listener.closed
    listener.shutdown()
    listener.serve_forever()  # returns: closed
    assert listener.closed and not listener.is_serving()
    with (
        sync.listen("127.0.0.1", 0, config=server_config) as open_listener,
        pytest.raises(dtlskit.DTLSTimeoutError),
    ):
        open_listener.wait_closed(timeout=0)

    async def main() -> None:
        server = await aio.serve(
            lambda channel: asyncio.sleep(0), "127.0.0.1", 0, config=server_config
        )
        server.shutdown()
        await server.wait_closed()
        assert not server.is_serving()
        listener = await aio.listen("127.0.0.1", 0, config=server_config)
        assert listener.pending() == 0 and not listener.closed
        listener.shutdown()
        await listener.serve_forever()
        assert listener.closed

    run(main(), WAIT)


def test_a_handler_server_has_no_accept_in_either_flavour() -> None:
    assert not hasattr(aio.Server, "accept") and not hasattr(sync.Server, "accept")
    assert hasattr(aio.Listener, "accept") and hasattr(sync.Listener, "accept")


def test_wait_closed_before_close_is_a_usage_error(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    def echo(channel: sync.Channel) -> None:
        for message in channel:
            channel.send(message)

    with sync.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        channel = sync.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
        with pytest.raises(dtlskit.UsageError):
            channel.wait_closed()
        channel.close()
        channel.wait_closed(timeout=WAIT)

        async def main() -> None:
            channel = await aio.connect("127.0.0.1", port, config=client_config, timeout=WAIT)
            with pytest.raises(dtlskit.UsageError):
                await channel.wait_closed()
            channel.close()
            await channel.wait_closed()

        run(main(), WAIT)


def test_sync_server_exports_run_server() -> None:
    import dtlskit.sync.server as sync_server

    assert "run_server" in sync_server.__all__
    assert set(sync_server.__all__) <= set(dir(sync_server))
