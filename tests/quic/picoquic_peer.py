"""An independent QUIC peer for interop tests: picoquic, through the PyPI package aiopquic.

Runs under its own Python (>= 3.12, a separate venv: see ``.ci/run``), driven by
``tests/quic/test_interop.py`` as a subprocess; it never imports dtlskit.

    python picoquic_peer.py server PORT CERT KEY ALPN      # echo each stream on itself, FIN
    python picoquic_peer.py client HOST PORT CAFILE ALPN MESSAGE

The server prints ``ready`` once it listens and serves until killed; the client prints
``echo: <answer>`` and exits 0, or prints the error and exits 1.
"""

import asyncio
import ssl
import sys

from aiopquic.asyncio.client import connect
from aiopquic.asyncio.protocol import QuicConnectionProtocol
from aiopquic.asyncio.server import serve
from aiopquic.quic.configuration import QuicConfiguration
from aiopquic.quic.events import StreamDataReceived


class EchoProtocol(QuicConnectionProtocol):
    """Seed 002's server: read each stream to FIN, echo it on the same stream with FIN."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._buffers = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            buffer = self._buffers.setdefault(event.stream_id, bytearray())
            buffer += bytes(event.data)
            if event.end_stream:
                data = bytes(self._buffers.pop(event.stream_id))
                self._quic.send_stream_data(event.stream_id, data, end_stream=True)


class ClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer = bytearray()
        self.done = asyncio.get_event_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.answer += bytes(event.data)
            if event.end_stream and not self.done.done():
                self.done.set_result(bytes(self.answer))


async def run_server(port, cert, key, alpn):
    config = QuicConfiguration(
        is_client=False, alpn_protocols=[alpn], certificate_file=cert, private_key_file=key
    )
    server = await serve("127.0.0.1", port, configuration=config, create_protocol=EchoProtocol)
    print("ready", flush=True)
    try:
        await asyncio.sleep(120)  # bounded: the test kills it long before
    finally:
        server.close()


async def run_client(host, port, cafile, alpn, message):
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        server_name="localhost",
        cafile=cafile,
        verify_mode=ssl.CERT_REQUIRED,
    )
    async with connect(
        host, port, configuration=config, create_protocol=ClientProtocol
    ) as protocol:
        stream_id = protocol._quic.get_next_available_stream_id()
        protocol._quic.send_stream_data(stream_id, message.encode(), end_stream=True)
        answer = await asyncio.wait_for(protocol.done, 20)
    print("echo: " + answer.decode(errors="replace"), flush=True)


def main():
    role = sys.argv[1]
    if role == "server":
        asyncio.run(run_server(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]))
        return 0
    try:
        asyncio.run(
            asyncio.wait_for(
                run_client(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]),
                30,
            )
        )
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
