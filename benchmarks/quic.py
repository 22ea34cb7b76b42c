"""QUIC through dtlskit's API against aioquic used directly: echo streams/s and new
connections/s per CPU-second, in the same run.

    python -m benchmarks.quic [--seconds S] [--rounds N]      (from a checkout)
    dtlskit bench ...                                         (the "QUIC" rows, at the end)

Both sides run in one process on one asyncio loop over loopback sockets: a seed 002 echo
server (each stream read to FIN, echoed on the same stream with FIN) and a client. The same
certificates, ALPN (``hq-interop``) and verification are used for both stacks. Figures are
**operations per CPU-second of the process** (``time.process_time``: user + system, both
sides together), so that other work on the machine does not move them the way it moves wall
time. Phases alternate between the two stacks, ``rounds`` times; figures are the medians of each
round's figures: each ratio is the median of the rounds' own ratios, each pair measured a
moment apart, so that a round disturbed by a neighbour does not decide it.

* streams: one connection; batches of 16 concurrent requests (64-byte payload, one stream
  each), for ``seconds``;
* connections: sequentially, a new connection (full handshake, certificate verified), one
  request, close, for ``seconds``.

The ratio is dtlskit / aioquic (1.0 = no overhead; the target is >= 0.9, i.e. <= 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from dtlskit.certs import PKIFiles, create_pki

ALPN = "hq-interop"
PAYLOAD = b"x" * 64
BATCH = 16


async def _measure(
    op: Callable[[], Awaitable[int]], seconds: float
) -> tuple[int, float]:
    """Run ``op`` (which returns how many operations it did) for ``seconds`` of wall time;
    returns (operations, CPU seconds)."""
    await op()  # warm-up
    operations = 0
    cpu = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        operations += await op()
    return operations, time.process_time() - cpu


# -- dtlskit ---------------------------------------------------------------------------------------


async def dtlskit_phases(pki: PKIFiles, seconds: float) -> dict[str, float]:
    import dtlskit
    import dtlskit.quic as quic

    server_config = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, alpn_protocols=[ALPN]
    )
    client_config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", alpn_protocols=[ALPN]
    )

    async def echo(channel: quic.QuicChannel) -> None:
        while True:
            stream = await channel.accept_stream()
            await stream.write(await stream.read(), end=True)

    async with quic.serve(echo, "127.0.0.1", 0, config=server_config) as server:
        port = server.addresses[0][1]
        async with quic.connect("127.0.0.1", port, config=client_config) as channel:

            async def streams() -> int:
                answers = await asyncio.gather(*(channel.request(PAYLOAD) for _ in range(BATCH)))
                assert all(answer == PAYLOAD for answer in answers)
                return BATCH

            stream_ops, stream_cpu = await _measure(streams, seconds)

        async def connection() -> int:
            async with quic.connect("127.0.0.1", port, config=client_config) as fresh:
                assert await fresh.request(PAYLOAD) == PAYLOAD
            return 1

        connection_ops, connection_cpu = await _measure(connection, seconds)
    return {
        "streams_per_cpu_second": stream_ops / stream_cpu,
        "connections_per_cpu_second": connection_ops / connection_cpu,
    }


# -- aioquic directly ------------------------------------------------------------------------------


async def aioquic_phases(pki: PKIFiles, seconds: float) -> dict[str, float]:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import QuicEvent, StreamDataReceived

    class Echo(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._buffers: dict[int, bytearray] = {}

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived):
                buffer = self._buffers.setdefault(event.stream_id, bytearray())
                buffer += event.data
                if event.end_stream:
                    data = bytes(self._buffers.pop(event.stream_id))
                    self._quic.send_stream_data(event.stream_id, data, end_stream=True)
                    self.transmit()

    class Client(QuicConnectionProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._waiting: dict[int, tuple[bytearray, asyncio.Future[bytes]]] = {}

        async def request(self, data: bytes) -> bytes:
            stream_id = self._quic.get_next_available_stream_id()
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._waiting[stream_id] = (bytearray(), future)
            self._quic.send_stream_data(stream_id, data, end_stream=True)
            self.transmit()
            return await future

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, StreamDataReceived) and event.stream_id in self._waiting:
                buffer, future = self._waiting[event.stream_id]
                buffer += event.data
                if event.end_stream:
                    del self._waiting[event.stream_id]
                    future.set_result(bytes(buffer))

    server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_config.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], server_name="localhost",
        verify_mode=ssl.CERT_REQUIRED,
    )
    client_config.load_verify_locations(cafile=str(pki.ca_cert))
    server = await serve("127.0.0.1", 0, configuration=server_config, create_protocol=Echo)
    try:
        transport: Any = server._transport
        port = transport.get_extra_info("sockname")[1]
        async with connect(
            "127.0.0.1", port, configuration=client_config, create_protocol=Client,
            wait_connected=True,
        ) as protocol:
            client: Any = protocol

            async def streams() -> int:
                answers = await asyncio.gather(*(client.request(PAYLOAD) for _ in range(BATCH)))
                assert all(answer == PAYLOAD for answer in answers)
                return BATCH

            stream_ops, stream_cpu = await _measure(streams, seconds)

        async def connection() -> int:
            async with connect(
                "127.0.0.1", port, configuration=client_config, create_protocol=Client
            ) as fresh:
                fresh_client: Any = fresh
                assert await fresh_client.request(PAYLOAD) == PAYLOAD
            return 1

        connection_ops, connection_cpu = await _measure(connection, seconds)
    finally:
        server.close()
    return {
        "streams_per_cpu_second": stream_ops / stream_cpu,
        "connections_per_cpu_second": connection_ops / connection_cpu,
    }


# -- both, alternating -----------------------------------------------------------------------------


def measure(pki: PKIFiles, seconds: float = 2.0, rounds: int = 5) -> dict[str, Any]:
    """Run the two stacks one after the other, ``rounds`` times (alternating which goes
    first); each figure is the median over the rounds, and each ratio the median of the
    rounds' own ratios (a pair measured a moment apart shares the machine's load)."""
    phases = {"dtlskit": dtlskit_phases, "aioquic": aioquic_phases}
    runs: dict[str, list[dict[str, float]]] = {"dtlskit": [], "aioquic": []}
    for index in range(rounds):
        order = list(phases) if index % 2 == 0 else list(reversed(phases))
        for name in order:
            coroutine = phases[name](pki, seconds)
            runs[name].append(asyncio.run(asyncio.wait_for(coroutine, 60 + 10 * seconds)))
    keys = list(runs["dtlskit"][0])
    return {
        "method": "operations per CPU-second (time.process_time, both sides in one process); "
        f"median of {rounds} alternating rounds of {seconds:g} s; ratio = median of the "
        "rounds' ratios",
        "dtlskit": {k: statistics.median(r[k] for r in runs["dtlskit"]) for k in keys},
        "aioquic": {k: statistics.median(r[k] for r in runs["aioquic"]) for k in keys},
        "ratio": {
            k: statistics.median(
                ours[k] / theirs[k]
                for ours, theirs in zip(runs["dtlskit"], runs["aioquic"], strict=True)
            )
            for k in keys
        },
        "rounds": runs,
        "target_ratio": 0.9,
    }


def table(figures: dict[str, Any]) -> str:
    lines = [
        "",
        "QUIC (seed 002 echo over loopback; dtlskit.quic vs aioquic used directly; "
        "per CPU-second, higher is better)",
        f"  {'':28} {'dtlskit':>12} {'aioquic':>12} {'ratio':>7}  target",
    ]
    for key, label in (
        ("streams_per_cpu_second", "echo streams / CPU-s"),
        ("connections_per_cpu_second", "new connections / CPU-s"),
    ):
        ratio = figures["ratio"][key]
        mark = "ok" if ratio >= figures["target_ratio"] else "MISSED"
        lines.append(
            f"  {label:28} {figures['dtlskit'][key]:12.0f} {figures['aioquic'][key]:12.0f} "
            f"{ratio:7.3f}  >= {figures['target_ratio']} {mark}"
        )
    lines.append(f"  ({figures['method']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dtlskit-quic-bench-") as directory:
        figures = measure(create_pki(directory), args.seconds, args.rounds)
    print(table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
