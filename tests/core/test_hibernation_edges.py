"""``hibernate`` refusing: each refusal leaves the session on OpenSSL, which still carries
messages both ways. Real handshakes in memory, engines that keep OpenSSL (no hibernate_after)."""

from __future__ import annotations

import pytest

from dtlskit.config import Limits
from dtlskit.core.hibernation import Hibernated, hibernate
from dtlskit.testing import MemoryPair

from .test_hibernation import echo_both_ways, psk_configs
from .test_security import start_renegotiation

KEEP = Limits()


def established() -> MemoryPair:
    pair = MemoryPair(*psk_configs(server_limits=KEEP, client_limits=KEEP))
    assert pair.handshake()
    assert not pair.client.hibernated
    return pair


def test_the_wrong_side_keys_do_not_reproduce_the_probe():
    pair = established()
    ssl = pair.client.ssl_object
    # The client's probe checked against server-side keys: a real key mismatch, caught.
    reason = hibernate(ssl, server=True, read_high=-1, keep_session=False)
    assert reason == "our record protection does not reproduce OpenSSL's probe record"
    # The right side then hibernates (the probe above was never sent: a gap in sequence only).
    assert isinstance(hibernate(ssl, server=False, read_high=-1, keep_session=False), Hibernated)


def test_an_undrained_output_bio_is_refused():
    pair = established()
    ssl = pair.client.ssl_object
    ssl.write(b"not drained")
    reason = hibernate(ssl, server=False, read_high=-1, keep_session=False)
    assert reason == "the probe did not come out as one record"


def test_a_connection_that_cannot_write_is_refused():
    pair = established()
    ssl = pair.client.ssl_object
    ssl.shutdown()  # close_notify sent: OpenSSL refuses any further write
    ssl.bio_read(65536)
    reason = hibernate(ssl, server=False, read_high=-1, keep_session=False)
    assert reason == "OpenSSL could not seal the probe record"


def test_a_refused_session_still_carries_messages():
    pair = established()
    reason = hibernate(pair.client.ssl_object, server=True, read_high=-1, keep_session=False)
    assert isinstance(reason, str)
    echo_both_ways(pair, b"after a refusal")


def test_a_renegotiated_session_is_not_in_epoch_1_and_is_refused():
    server_config, client_config = psk_configs(server_limits=KEEP, client_limits=KEEP)
    pair = MemoryPair(
        server_config.replace(allow_renegotiation=True),
        client_config.replace(allow_renegotiation=True),
    )
    assert pair.handshake()
    start_renegotiation(pair)
    while pair.deliver_one():
        pass
    echo_both_ways(pair, b"renegotiated")
    reason = hibernate(pair.client.ssl_object, server=False, read_high=-1, keep_session=False)
    assert reason == "the probe is not an epoch-1 application-data record"


def test_a_hibernated_session_refuses_empty_and_oversized_messages_as_an_awake_one_does():
    # send() on a hibernated session checks the message itself (it never reaches OpenSSL):
    # the same errors as an awake session, and the session carries on afterwards.
    from dtlskit.exceptions import InvalidMessage, MessageTooLarge

    server_config, client_config = psk_configs(client_limits=Limits())
    pair = MemoryPair(server_config.replace(limits=Limits()), client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    echo_both_ways(pair, b"before")
    assert server.hibernate(pair.clock.now)
    with pytest.raises(InvalidMessage):
        server.send(b"")
    with pytest.raises(MessageTooLarge):
        server.send(b"x" * (server.cleartext_mtu + 1))
    echo_both_ways(pair, b"after")
    # With no message callback, a hibernated session's records go to its inbox as an awake
    # session's do.
    server.on_message = None
    pair.client.send(b"to the inbox")
    pair.pump()
    assert pair.run(lambda: b"to the inbox" in pair.server_messages())


def test_a_received_close_notify_is_logged_at_debug(caplog):
    # The close_notify line is built only when the handshake logger shows debug (the peer's
    # address text costs even when nothing is logged).
    import logging

    server_config, client_config = psk_configs(client_limits=Limits())
    pair = MemoryPair(server_config.replace(limits=Limits()), client_config)
    assert pair.handshake()
    with caplog.at_level(logging.DEBUG, logger="dtlskit.handshake"):
        pair.client.close()
        pair.pump()
        assert pair.run(lambda: "received close_notify" in caplog.text)
