"""Both front ends pass the same conformance suite of channel behaviour (dtlskit.testing)."""

from __future__ import annotations

import pytest

from dtlskit.testing import conformance


@pytest.mark.parametrize("check", conformance.CHECKS, ids=lambda check: check.__name__[6:])
@pytest.mark.parametrize("harness_class", conformance.HARNESSES, ids=lambda h: h.name)
def test_conformance(harness_class, check, server_config, client_config):
    with harness_class() as harness:
        check(harness, server_config, client_config)


def test_a_broken_front_end_fails_the_suite(server_config, client_config):
    """The suite can fail: a harness whose echo corrupts one byte is caught."""

    class Corrupting(conformance.SyncHarness):
        def connect(self, port, config):  # type: ignore[no-untyped-def]
            client = super().connect(port, config)
            original = client.recv

            def recv(timeout: float = conformance.WAIT) -> bytes:
                data = original(timeout)
                return data[:-1] + bytes([data[-1] ^ 1])

            client.recv = recv  # type: ignore[method-assign]
            return client

    with Corrupting() as harness, pytest.raises(AssertionError, match="changed"):
        conformance.check_echo_keeps_message_boundaries(harness, server_config, client_config)
