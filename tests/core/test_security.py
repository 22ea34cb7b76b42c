"""Security features of the configuration and engine, each in real in-memory handshakes: SNI
certificate selection, encrypted private keys, ALPN, renegotiation refusal, DTLS-SRTP and RFC 5705
keying material export, and the NSS key log."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

import dtlskit
from dtlskit.certs import PKIFiles, certificate_pem, create_pki, issue_certificate, private_key_pem
from dtlskit.core import DTLSConnection, ServerEngine, State
from dtlskit.core import events as ev
from dtlskit.testing import MemoryPair
from dtlskit.testing.memory import SERVER_ADDRESS, Datagram

from .. import peers
from .loop import ClientLoop


def issue(directory: Path, pki: PKIFiles, name: str, hosts: list[str]) -> tuple[Path, Path]:
    ca = (
        x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()),
        serialization.load_pem_private_key(pki.ca_key.read_bytes(), None),
    )
    cert, key = issue_certificate(ca, name, hosts=hosts)  # type: ignore[arg-type]
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(certificate_pem(cert))
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


def server_error(pair: MemoryPair) -> dtlskit.DTLSError:
    while pair.deliver_one():
        pass
    errors = [e.error for e in pair.server_events if isinstance(e, ev.ConnectionTerminated)]
    assert errors, f"the server side did not fail: {pair.server_events}"
    return errors[-1]


def seen_by_client(pair: MemoryPair) -> str:
    assert pair.handshake(), pair.client.error
    return str(pair.client.peer_certificate.subject.rfc4514_string())


# -- SNI --------------------------------------------------------------------------------------


@pytest.fixture
def sni_server(tmp_path, pki):
    alpha = issue(tmp_path, pki, "alpha.example", ["alpha.example"])
    wild = issue(tmp_path, pki, "wild.example", ["*.wild.example"])
    by_ip = issue(tmp_path, pki, "by-ip", ["127.0.0.1"])
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        sni_certificates={"ALPHA.Example": alpha, "*.wild.example": wild},
        ip_certificate=by_ip,
    )


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("alpha.example", "CN=alpha.example"),
        ("Alpha.EXAMPLE", "CN=alpha.example"),
        ("x.wild.example", "CN=wild.example"),
        ("localhost", "CN=localhost"),  # no match: the main certificate
        ("127.0.0.1", "CN=by-ip"),  # no SNI at all: ip_certificate
    ],
)
def test_sni_picks_the_certificate(sni_server, client_config, name, subject):
    pair = MemoryPair(sni_server, client_config.replace(server_hostname=name))
    assert seen_by_client(pair) == subject
    conn = pair.server_connection
    assert conn is not None
    assert conn.server_name == (None if name == "127.0.0.1" else name)


def test_sni_wildcard_matches_one_label_only(sni_server, client_config):
    pair = MemoryPair(sni_server, client_config.replace(server_hostname="a.b.wild.example"))
    assert not pair.handshake()
    assert "hostname mismatch (depth 0, subject CN=localhost)" in str(pair.client.error)


def test_without_sni_settings_the_main_certificate_serves_every_name(server_config, client_config):
    pair = MemoryPair(server_config, client_config.replace(server_hostname="127.0.0.1"))
    assert seen_by_client(pair) == "CN=localhost"


def test_sni_callback(tmp_path, pki, client_config):
    beta = issue(tmp_path, pki, "beta.example", ["beta.example"])
    asked: list[str | None] = []

    def choose(name: str | None):  # type: ignore[no-untyped-def]
        asked.append(name)
        return beta if name == "beta.example" else None

    config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, sni_callback=choose)
    assert seen_by_client(MemoryPair(config, client_config.replace(server_hostname="beta.example")))
    assert seen_by_client(MemoryPair(config, client_config)) == "CN=localhost"
    pair = MemoryPair(config, client_config.replace(server_hostname="beta.example"))
    assert seen_by_client(pair) == "CN=beta.example"
    assert asked == ["beta.example", "localhost", "beta.example"]


def test_sni_callback_failure_fails_the_handshake_naming_it(pki, client_config):
    def choose(name: str | None) -> None:
        raise LookupError(f"no tenant for {name}")

    config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, sni_callback=choose)
    pair = MemoryPair(config, client_config)
    assert not pair.handshake()
    assert isinstance(pair.client.error, dtlskit.HandshakeFailure)
    assert pair.client.error.alert == "internal error"
    peer = server_error(pair)
    assert "sni_callback('localhost') raised LookupError: no tenant for localhost" in str(peer)


def test_sni_callback_returning_a_missing_file(tmp_path, pki, client_config):
    missing = (tmp_path / "nope.pem", tmp_path / "nope.key")
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, sni_callback=lambda name: missing
    )
    pair = MemoryPair(config, client_config)
    assert not pair.handshake()
    peer = str(server_error(pair))
    assert "sni_callback('localhost')" in peer and "nope.pem" in peer


def test_add_sni_certificate_returns_a_new_configuration(tmp_path, pki, server_config):
    cert, key = issue(tmp_path, pki, "gamma.example", ["gamma.example"])
    config = server_config.add_sni_certificate("gamma.example", cert, key)
    assert server_config.sni_certificates is None
    assert config.sni_certificates == {"gamma.example": (cert, key, None)}
    client = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="gamma.example")
    assert seen_by_client(MemoryPair(config, client)) == "CN=gamma.example"


def test_unloadable_sni_certificate_is_a_configuration_error(tmp_path, pki, server_config):
    config = server_config.replace(sni_certificates={"x.example": (tmp_path / "a", tmp_path / "b")})
    with pytest.raises(dtlskit.ConfigurationError, match=r"sni_certificates\['x.example'\]: "):
        config.build_context(server=True)


# -- encrypted private keys ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return create_pki(tmp_path_factory.mktemp("locked"), password="s3cret")


@pytest.mark.parametrize(
    "password", ["s3cret", b"s3cret", lambda: "s3cret", lambda: b"s3cret"], ids=repr
)
def test_encrypted_key_with_a_password(locked_pki, password):
    server = dtlskit.DTLSConfiguration.server(
        locked_pki.server_cert, locked_pki.server_key, password=password
    )
    client = dtlskit.DTLSConfiguration.client(
        cafile=locked_pki.ca_cert, server_hostname="localhost"
    )
    assert MemoryPair(server, client).handshake()


def test_wrong_password_names_the_key_file(locked_pki):
    config = dtlskit.DTLSConfiguration.server(
        locked_pki.server_cert, locked_pki.server_key, password="wrong"
    )
    with pytest.raises(dtlskit.ConfigurationError, match=re.escape(str(locked_pki.server_key))):
        config.build_context(server=True)


def test_missing_password_names_the_key_file(locked_pki):
    config = dtlskit.DTLSConfiguration.server(locked_pki.server_cert, locked_pki.server_key)
    with pytest.raises(dtlskit.ConfigurationError, match="encrypted") as info:
        config.build_context(server=True)
    assert str(locked_pki.server_key) in str(info.value)


def test_encrypted_sni_certificate_with_its_own_password(tmp_path, pki, locked_pki):
    # The SNI certificate comes from another PKI, whose key is encrypted.
    config = dtlskit.DTLSConfiguration.server(
        pki.server_cert,
        pki.server_key,
        sni_certificates={
            "locked.example": (locked_pki.server_cert, locked_pki.server_key, "s3cret")
        },
    )
    client = dtlskit.DTLSConfiguration.client(
        cafile=locked_pki.ca_cert, server_hostname="locked.example", check_hostname=False
    )
    pair = MemoryPair(config, client)
    assert pair.handshake()
    locked_leaf = x509.load_pem_x509_certificate(locked_pki.server_cert.read_bytes())
    assert pair.client.peer_certificate == locked_leaf


# -- ALPN -------------------------------------------------------------------------------------


def alpn_pair(server_config, client_config, server, client) -> MemoryPair:  # type: ignore[no-untyped-def]
    return MemoryPair(
        server_config.replace(alpn_protocols=server), client_config.replace(alpn_protocols=client)
    )


def test_alpn_server_picks_its_own_preference(server_config, client_config):
    pair = alpn_pair(server_config, client_config, ["coap", "h2"], ["h2", "coap"])
    assert pair.handshake()
    assert pair.client.alpn_protocol == "coap"
    assert pair.server_connection is not None
    assert pair.server_connection.alpn_protocol == "coap"


def test_alpn_without_overlap_fails_on_both_sides(server_config, client_config):
    pair = alpn_pair(server_config, client_config, ["coap"], ["mqtt", "h2"])
    assert not pair.handshake()
    error = pair.client.error
    assert isinstance(error, dtlskit.HandshakeFailure)
    assert error.alert == "no application protocol"
    assert "no common ALPN protocol" in str(error) and "['mqtt', 'h2']" in str(error)
    peer = server_error(pair)
    assert isinstance(peer, dtlskit.HandshakeFailure)
    assert peer.alert == "no application protocol"
    assert "no common ALPN protocol: the client offered ['mqtt', 'h2']" in str(peer)
    assert "this server supports ['coap']" in str(peer)


@pytest.mark.parametrize(("server", "client"), [(["coap"], []), ([], ["coap"])])
def test_alpn_on_one_side_only_negotiates_nothing(server_config, client_config, server, client):
    pair = alpn_pair(server_config, client_config, server, client)
    assert pair.handshake()
    assert pair.client.alpn_protocol is None
    assert pair.server_connection is not None and pair.server_connection.alpn_protocol is None


# -- renegotiation --------------------------------------------------------------------------------


def start_renegotiation(pair: MemoryPair) -> None:
    """Make the client's OpenSSL send a renegotiating ClientHello (the engine has no verb for
    it, on purpose) and put it on the network."""
    ssl_object = pair.client.ssl_object
    assert ssl_object.renegotiate()
    with pytest.raises(SSL.WantReadError):
        ssl_object.do_handshake()
    hello = ssl_object.bio_read(65536)
    assert hello[0] == 22 and hello[3:5] == b"\x00\x01"  # a handshake record in epoch 1
    pair.network.send(Datagram(hello, pair.client_address, pair.server_address, True))


def test_renegotiation_is_refused_by_default(server_config, client_config):
    """What happens: the server answers the renegotiating ClientHello with a no_renegotiation
    warning alert; the client's OpenSSL treats a refused renegotiation as fatal and sends a
    handshake_failure alert. Both ends lose the session, each with a message that says so."""
    pair = MemoryPair(server_config, client_config.replace(allow_renegotiation=True))
    assert pair.handshake()
    start_renegotiation(pair)
    while pair.deliver_one():
        pass
    assert pair.client.state is State.TERMINATED
    error = pair.client.error
    assert isinstance(error, dtlskit.ConnectionLost)
    assert error.alert == "no renegotiation"
    assert "refused to renegotiate" in str(error)
    conn = pair.server_connection
    assert conn is not None and conn.state is State.TERMINATED
    assert isinstance(conn.error, dtlskit.ConnectionLost)
    assert "tried to renegotiate, which this side refuses" in str(conn.error)
    assert conn.error.alert == "handshake failure"


def test_a_default_client_cannot_even_start_renegotiation(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    with pytest.raises(SSL.Error, match="no renegotiation"):
        pair.client.ssl_object.renegotiate()
    pair.client.send(b"still fine")
    pair.pump()
    assert pair.run(lambda: pair.server_messages() == [b"still fine"])


def test_renegotiation_when_both_sides_allow_it(server_config, client_config):
    pair = MemoryPair(
        server_config.replace(allow_renegotiation=True),
        client_config.replace(allow_renegotiation=True),
    )
    assert pair.handshake()
    start_renegotiation(pair)
    while pair.deliver_one():
        pass
    ssl_object = pair.client.ssl_object
    assert ssl_object.total_renegotiations() == 1
    assert not ssl_object.renegotiate_pending()  # the second handshake completed
    assert pair.client.state is State.ESTABLISHED
    pair.client.send(b"after renegotiation")
    pair.pump()
    assert pair.run(lambda: pair.server_messages() == [b"after renegotiation"])


# -- DTLS-SRTP and exported keying material ------------------------------------------------


def test_srtp_profile_negotiation(server_config, client_config):
    pair = MemoryPair(
        server_config.replace(srtp_profiles=["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"]),
        client_config.replace(srtp_profiles=["SRTP_AEAD_AES_128_GCM"]),
    )
    assert pair.handshake()
    assert pair.client.srtp_profile == "SRTP_AEAD_AES_128_GCM"
    assert pair.server_connection is not None
    assert pair.server_connection.srtp_profile == "SRTP_AEAD_AES_128_GCM"
    # RFC 5764 §4.2: SRTP keys come from the exporter with this label.
    client_keys = pair.client.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (16 + 12))
    server_keys = pair.server_connection.export_keying_material(b"EXTRACTOR-dtls_srtp", 56)
    assert client_keys == server_keys and len(client_keys) == 56


def test_srtp_without_common_profile_negotiates_none(server_config, client_config):
    pair = MemoryPair(
        server_config.replace(srtp_profiles=["SRTP_AES128_CM_SHA1_80"]),
        client_config.replace(srtp_profiles=["SRTP_AES128_CM_SHA1_32"]),
    )
    assert pair.handshake()
    assert pair.client.srtp_profile is None


def test_unknown_srtp_profile_is_a_configuration_error(server_config):
    with pytest.raises(dtlskit.ConfigurationError, match="srtp_profiles: OpenSSL does not know"):
        server_config.replace(srtp_profiles=["SRTP_BOGUS"]).build_context(server=True)


def test_exported_keying_material(server_config, client_config):
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    server = pair.server_connection
    assert server is not None
    plain = pair.client.export_keying_material(b"EXPERIMENTAL-dtlskit", 32)
    assert plain == server.export_keying_material(b"EXPERIMENTAL-dtlskit", 32)
    bound = pair.client.export_keying_material(b"EXPERIMENTAL-dtlskit", 32, b"ctx")
    assert bound == server.export_keying_material(b"EXPERIMENTAL-dtlskit", 32, b"ctx")
    assert bound != plain
    assert pair.client.export_keying_material(b"EXPERIMENTAL-other", 32) != plain
    # Another session derives other keys.
    other = MemoryPair(server_config, client_config)
    assert other.handshake()
    assert other.client.export_keying_material(b"EXPERIMENTAL-dtlskit", 32) != plain


def test_export_needs_an_established_session(client_config):
    conn = DTLSConnection(client_config, server=False, peer_address=SERVER_ADDRESS)
    with pytest.raises(dtlskit.ConnectionLost, match="only after the handshake"):
        conn.export_keying_material(b"EXPERIMENTAL-x", 16)
    with pytest.raises(ValueError, match="length"):
        conn.export_keying_material(b"EXPERIMENTAL-x", 0)


# -- key log --------------------------------------------------------------------------------


def test_keylog_file_gets_the_nss_line(tmp_path, server_config, client_config):
    keylog = tmp_path / "keys.log"
    pair = MemoryPair(server_config, client_config.replace(keylog_file=keylog))
    assert pair.handshake()
    ssl_object = pair.client.ssl_object
    expected = f"CLIENT_RANDOM {ssl_object.client_random().hex()} {ssl_object.master_key().hex()}"
    assert keylog.read_text().splitlines() == [expected]


def test_keylog_file_that_cannot_be_opened(tmp_path, client_config):
    config = client_config.replace(keylog_file=tmp_path / "no-such-dir" / "keys.log")
    with pytest.raises(dtlskit.ConfigurationError, match=r"keylog_file .*no-such-dir"):
        config.build_context(server=False)


# -- validation of the new settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"alpn_protocols": "coap"}, "alpn_protocols"),
        ({"alpn_protocols": ["", "h2"]}, "alpn_protocols"),
        ({"srtp_profiles": ["A:B"]}, "srtp_profiles"),
        ({"session_tickets": "yes"}, "session_tickets"),
        ({"allow_renegotiation": 1}, "allow_renegotiation"),
        ({"keylog_file": 3}, "keylog_file"),
        ({"sni_certificates": {"a.example": ("only-cert",)}}, "sni_certificates"),
        ({"sni_certificates": {"a.*.example": ("c", "k")}}, "sni_certificates"),
        ({"sni_callback": "not callable"}, "sni_callback"),
        ({"ip_certificate": ("c", "k", 42)}, "ip_certificate"),
        ({"password": 42}, "password"),
    ],
)
def test_settings_are_validated_naming_the_field(settings, field):
    with pytest.raises(dtlskit.ConfigurationError, match=field):
        dtlskit.DTLSConfiguration(**settings)


def test_sequences_are_normalised_to_tuples():
    config = dtlskit.DTLSConfiguration(
        alpn_protocols=["coap"], srtp_profiles=["SRTP_AES128_CM_SHA1_80"]
    )
    assert config.alpn_protocols == ("coap",)
    assert config.srtp_profiles == ("SRTP_AES128_CM_SHA1_80",)


def test_verify_modes_are_untouched_by_the_new_settings(pki):
    config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, alpn_protocols=["x"])
    assert config.effective_verify_mode(server=True) == ssl.CERT_NONE


# -- interop over loopback UDP ----------------------------------------------------------------


def connect_over_udp(port: int, config: dtlskit.DTLSConfiguration) -> ClientLoop:
    engine = DTLSConnection(config, server=False, peer_address=("127.0.0.1", port))
    loop = ClientLoop(engine, ("127.0.0.1", port))
    loop.connect(timeout=10)
    assert engine.state is State.ESTABLISHED, engine.error
    return loop


@pytest.mark.interop
@peers.needs_openssl
def test_alpn_srtp_and_exporter_against_openssl_s_server(pki, client_config):
    def argv(port: int) -> list[str]:
        return peers.openssl_s_server(
            port,
            str(pki.server_cert),
            str(pki.server_key),
            *("-alpn", "coap,h2", "-use_srtp", "SRTP_AES128_CM_SHA1_80"),
            *("-keymatexport", "EXPERIMENTAL-dtlskit", "-keymatexportlen", "20"),
        )

    config = client_config.replace(
        alpn_protocols=["h2", "coap"], srtp_profiles=["SRTP_AES128_CM_SHA1_80"]
    )
    with peers.serving(argv, ready="ACCEPT") as (server, port):
        loop = connect_over_udp(port, config)
        try:
            assert loop.engine.alpn_protocol == "coap"
            assert loop.engine.srtp_profile == "SRTP_AES128_CM_SHA1_80"
            ours = loop.engine.export_keying_material(b"EXPERIMENTAL-dtlskit", 20)
            line = server.wait_for("Keying material:")
            assert line.split(":", 1)[1].strip() == ours.hex().upper()
            server.wait_for("ALPN protocols selected: coap")
        finally:
            loop.close()


@pytest.mark.interop
@peers.needs_gnutls
def test_alpn_and_srtp_against_gnutls_serv(pki, client_config):
    def argv(port: int) -> list[str]:
        return peers.gnutls_serv(
            port,
            str(pki.server_cert),
            str(pki.server_key),
            *("--alpn", "coap", "--srtp-profiles", "SRTP_AES128_CM_HMAC_SHA1_80"),
        )

    config = client_config.replace(
        alpn_protocols=["h2", "coap"], srtp_profiles=["SRTP_AES128_CM_SHA1_80"]
    )
    with peers.serving(argv, ready="listening") as (_, port):
        loop = connect_over_udp(port, config)
        try:
            assert loop.engine.alpn_protocol == "coap"
            assert loop.engine.srtp_profile == "SRTP_AES128_CM_SHA1_80"
            loop.send(b"echo")
            assert loop.run_until(lambda: b"echo" in loop.messages(), 10)
        finally:
            loop.close()


def test_resumption_through_an_sni_certificate(tmp_path, pki):
    from .test_resumption import pair_with

    alpha = issue(tmp_path, pki, "alpha.example", ["alpha.example"])
    server = ServerEngine(
        dtlskit.DTLSConfiguration.server(
            pki.server_cert, pki.server_key, sni_certificates={"alpha.example": alpha}
        )
    )
    client = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, server_hostname="alpha.example")
    first = pair_with(server, client)
    assert first.handshake()
    again = pair_with(server, client, first.client.session)
    assert again.handshake() and again.client.session_reused
    assert again.client.peer_certificate.subject.rfc4514_string() == "CN=alpha.example"
