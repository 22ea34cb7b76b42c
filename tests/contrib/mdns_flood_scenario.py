"""Run by tests/contrib/test_mdns.py inside a private network namespace holding only ``lo``:
names announced on the link that never resolve (PTR records with no SRV behind them) must not
make ``browse``/``find`` overrun their timeout. Prints one JSON object: the resolution
timeouts each flavour gave zeroconf, and the time left when each resolution started."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from zeroconf import DNSOutgoing, DNSPointer, Zeroconf
from zeroconf.asyncio import AsyncServiceInfo
from zeroconf.const import _CLASS_IN, _FLAGS_AA, _FLAGS_QR_RESPONSE, _TYPE_PTR

from dtlskit.contrib import mdns

TIMEOUT = 1.0
NAMES = 12


def announcements() -> list[bytes]:
    out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
    for n in range(NAMES):
        pointer = DNSPointer(mdns.COAPS, _TYPE_PTR, _CLASS_IN, 120, f"ghost-{n}.{mdns.COAPS}")
        out.add_answer_at_time(pointer, 0)
    return out.packets()


def announce_until(stop: threading.Event) -> None:
    packets = announcements()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        while not stop.is_set():
            for packet in packets:
                sock.sendto(packet, ("224.0.0.251", 5353))
            stop.wait(0.05)


def main() -> None:
    seen: dict[str, list[Any]] = {"sync": [], "asyncio": []}
    real_sync = Zeroconf.get_service_info
    real_async = AsyncServiceInfo.async_request

    def spy_sync(self: Zeroconf, type_: str, name: str, timeout: int = 3000, **kw: Any) -> Any:
        seen["sync"].append(timeout)
        return real_sync(self, type_, name, timeout, **kw)

    async def spy_async(self: AsyncServiceInfo, zc: Any, timeout: float, **kw: Any) -> Any:
        seen["asyncio"].append(timeout)
        return await real_async(self, zc, timeout, **kw)

    Zeroconf.get_service_info = spy_sync  # type: ignore[method-assign]
    AsyncServiceInfo.async_request = spy_async  # type: ignore[method-assign]
    stop = threading.Event()
    announcer = threading.Thread(target=announce_until, args=(stop,), daemon=True)
    announcer.start()
    try:
        found_sync = mdns.browse(mdns.COAPS, timeout=TIMEOUT, interfaces=["127.0.0.1"])
        found_async = asyncio.run(
            mdns.async_browse(mdns.COAPS, timeout=TIMEOUT, interfaces=["127.0.0.1"])
        )
    finally:
        stop.set()
        announcer.join(10)
    print(json.dumps({"timeouts": seen, "found": [len(found_sync), len(found_async)]}))


if __name__ == "__main__":
    main()
