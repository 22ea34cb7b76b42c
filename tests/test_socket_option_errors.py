"""Socket options (TTL per family, IPv6 hop limit) and their errors: never a raw OSError.

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

import errno
import socket
from collections.abc import Callable
from typing import Any

import pytest

import dtlskit
from dtlskit import sync
from dtlskit._frontend import sockets as _sockets
from tests.helpers import needs_ipv6

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
