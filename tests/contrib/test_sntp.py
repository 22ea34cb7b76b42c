"""SNTP (dtlskit.contrib.sntp) against chrony on loopback (``chronyd -x``: the system clock is
never touched), the SNTP time used as ``verify_time``, and answers that must be refused."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

import dtlskit
from dtlskit.certs import PKIFiles
from dtlskit.contrib import sntp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sntp_clock.py"
sys.path.insert(0, str(ROOT / "examples"))
import sntp_clock  # noqa: E402  (the example's chronyd launcher, so the test runs what it ships)

needs_chronyd = pytest.mark.skipif(
    shutil.which("chronyd") is None and not Path("/usr/sbin/chronyd").exists(),
    reason="chronyd is not installed (Debian chrony; .ci/run installs it)",
)


@pytest.fixture(scope="module")
def chrony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if shutil.which("chronyd") is None and not Path("/usr/sbin/chronyd").exists():
        pytest.skip("chronyd is not installed (Debian chrony; .ci/run installs it)")
    with sntp_clock.chronyd_on_loopback(tmp_path_factory.mktemp("chrony")) as port:
        yield port


@needs_chronyd
def test_query_both_flavours(chrony: int) -> None:
    before = time.time()
    blocking = sntp.query("127.0.0.1", chrony)
    asynchronous = asyncio.run(sntp.async_query("127.0.0.1", chrony))
    after = time.time()
    for clock in (blocking, asynchronous):
        # chronyd -x serves this machine's own clock: its answer lies within our query.
        assert before - 1 <= clock.server_time.timestamp() <= after + 1
        assert clock.stratum == 8  # chrony.conf: "local stratum 8"
        assert clock.server == ("127.0.0.1", chrony)
        assert clock().tzinfo is timezone.utc


@needs_chronyd
def test_example_then_its_time_as_verify_time(chrony: int, pki: PKIFiles) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLE), "--server", "127.0.0.1",
         "--port", str(chrony)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "plain SNTP is unauthenticated" in out
    assert "device clock unset (1970): refused (certificate is not yet valid)" in out
    assert "local time 1970-01-01 00:00:00 UTC (verify_time)" in out
    assert "verify_time from SNTP: connected, echoed b'hello'" in out
    said = re.search(r"says (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", out)
    assert said is not None, out
    told = datetime.strptime(said.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)

    async def handshake() -> bytes:
        async def echo(channel: dtlskit.asyncio.Channel) -> None:
            async for message in channel:
                await channel.send(message)

        server = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
        client = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost", verify_time=told
        )
        async with dtlskit.serve(echo, "127.0.0.1", 0, config=server) as running:
            port = running.addresses[0][1]
            async with dtlskit.connect("127.0.0.1", port, config=client) as channel:
                await channel.send(b"on time")
                return await channel.recv()

    assert asyncio.run(asyncio.wait_for(handshake(), 60)) == b"on time"


# -- answers that are not to be believed ----------------------------------------------------------


def answer(
    request: bytes,
    *,
    first: int = 0x24,
    stratum: int = 2,
    originate: bytes | None = None,
    transmit: float | None = None,
    length: int = 48,
    ref: bytes = b"GPS\0",
) -> bytes:
    """A server's reply to ``request`` (RFC 5905 §7.3), with one field made wrong on demand."""
    now = time.time() if transmit is None else transmit
    stamp = struct.pack("!II", (int(now) + 2_208_988_800) % 2**32, 0)  # NTP eras wrap
    packet = struct.pack("!BBbb8x4s8s", first, stratum, 6, -20, ref, stamp)
    packet += (request[40:48] if originate is None else originate) + stamp + stamp
    return packet[:length]


class FakeServer(asyncio.DatagramProtocol):
    """Answers each request with the packets ``replies`` makes from it, in order."""

    def __init__(self, replies: list[dict[str, object]]) -> None:
        self.replies = replies

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        for reply in self.replies:
            self.transport.sendto(answer(data, **reply), addr)  # type: ignore[attr-defined, arg-type]


def ask_fake(replies: list[dict[str, object]]) -> sntp.Clock:
    async def main() -> sntp.Clock:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: FakeServer(replies), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            return await sntp.async_query("127.0.0.1", port, timeout=2)
        finally:
            transport.close()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ({"originate": b"\1" * 8}, "originate mismatch"),
        ({"stratum": 0, "ref": b"RATE"}, "kiss-o'-death ('RATE')"),
        ({"first": 0xE4}, "not synchronised"),
        ({"first": 0x23}, "mode 3"),
        ({"length": 40}, "40 bytes"),
        ({"transmit": -86400.0}, "before 1970"),
    ],
    ids=["another request", "kiss-o'-death", "unsynchronised", "client mode", "short", "1969"],
)
def test_unusable_answers_are_refused(reply: dict[str, object], words: str) -> None:
    with pytest.raises(sntp.SNTPTimeout, match=re.escape(words)):
        ask_fake([reply])


def test_a_forged_answer_does_not_hide_the_real_one() -> None:
    real_time = datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp()
    clock = ask_fake([{"originate": b"\2" * 8, "transmit": 0.0}, {"transmit": real_time}])
    assert clock.server_time.year == 2030 and clock.stratum == 2


@pytest.mark.parametrize("year", [2026, 2036, 2037, 2100])
def test_times_past_the_ntp_era_rollover_are_read_as_such(year: int) -> None:
    """The 32-bit seconds field wraps on 2036-02-07 (RFC 4330 §3): 2037 is not 1901."""
    when = datetime(year, 6, 1, tzinfo=timezone.utc).timestamp()
    clock = ask_fake([{"transmit": when}])
    assert clock.server_time.year == year
