"""DTLSConfiguration mapped onto aioquic's QuicConfiguration; what QUIC refuses, by name."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

import pytest

import dtlskit
from dtlskit.quic import REFUSED
from dtlskit.quic._config import quic_configuration

ROOT = Path(__file__).resolve().parents[2]
ALPN = ["hq-interop"]


@pytest.mark.parametrize(
    ("server", "changes", "named"),
    [
        (True, {"verify_mode": ssl.CERT_REQUIRED}, "verify_mode"),
        (True, {"verify_mode": ssl.CERT_OPTIONAL}, "verify_mode"),
        (False, {"psk": ("id", b"k" * 16)}, "psk"),
        (True, {"psk_lookup": {"id": b"k" * 16}}, "psk_lookup"),
        (True, {"psk_identity_hint": "hint"}, "psk_identity_hint"),
        (True, {"sni_certificates": {"a.example": ("c.pem", "k.pem")}}, "sni_certificates"),
        (True, {"sni_callback": lambda name: None}, "sni_callback"),
        (True, {"ip_certificate": ("c.pem", "k.pem")}, "ip_certificate"),
        (False, {"ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"}, "ciphers"),
        (False, {"srtp_profiles": ["SRTP_AES128_CM_SHA1_80"]}, "srtp_profiles"),
        (False, {"allow_renegotiation": True}, "allow_renegotiation"),
        (False, {"check_hostname": False}, "check_hostname"),
        (True, {"cookie_secret": b"s" * 16}, "cookie_secret"),
        (False, {"initial_retransmit_timeout": 2.0, "max_retransmit_timeout": 60.0},
         "initial_retransmit_timeout"),
        (False, {"mtu": 1000}, "mtu"),
        (True, {"limits": dtlskit.Limits(first_flight_timeout=5.0)},
         "limits.first_flight_timeout"),
        (False, {"alpn_protocols": ()}, "alpn_protocols"),
    ],
)
def test_what_quic_cannot_do_is_refused_by_name(pki, server, changes, named):
    if server:
        config = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    else:
        config = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert)
    config = config.replace(alpn_protocols=ALPN).replace(**changes)
    with pytest.raises(dtlskit.ConfigurationError, match=named.replace(".", r"\.")):
        quic_configuration(config, server=server, server_name="localhost")


def test_every_refusal_is_in_the_docs():
    text = (ROOT / "docs" / "quic.md").read_text()
    for field, why in REFUSED.items():
        assert field in text, field
        assert why in " ".join(text.split()), why


def test_mapped_fields(pki, tmp_path):
    keylog = tmp_path / "keys.log"
    client = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="example.test",
        alpn_protocols=["hq-interop", "http/1.0"],
        idle_timeout=12.5,
        certfile=pki.client_cert,
        keyfile=pki.client_key,
        keylog_file=keylog,
    )
    quic, settings = quic_configuration(client, server=False, server_name="localhost")
    assert quic.is_client
    assert quic.alpn_protocols == ["hq-interop", "http/1.0"]
    assert quic.server_name == "example.test"
    assert quic.idle_timeout == 12.5
    assert quic.verify_mode == ssl.CERT_REQUIRED
    assert quic.cafile == os.fspath(pki.ca_cert)
    assert quic.certificate is not None and quic.private_key is not None
    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
    assert settings.handshake_timeout == client.handshake_timeout
    unverified = client.replace(verify_mode=ssl.CERT_NONE, server_hostname=None)
    quic, _ = quic_configuration(unverified, server=False, server_name="localhost")
    assert quic.verify_mode == ssl.CERT_NONE
    assert quic.server_name == "localhost"


def test_server_without_certificate_is_refused():
    config = dtlskit.DTLSConfiguration(alpn_protocols=ALPN)
    with pytest.raises(dtlskit.ConfigurationError, match="certfile"):
        quic_configuration(config, server=True)


def test_loading_errors_name_the_file(pki, tmp_path):
    missing = tmp_path / "missing.pem"
    config = dtlskit.DTLSConfiguration.server(missing, alpn_protocols=ALPN)
    with pytest.raises(dtlskit.ConfigurationError, match=r"missing\.pem"):
        quic_configuration(config, server=True)
    mismatched = dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.client_key, alpn_protocols=ALPN
    )
    with pytest.raises(dtlskit.ConfigurationError, match="do not belong together"):
        quic_configuration(mismatched, server=True)


def test_keylog_is_written_by_a_real_handshake(quic_server_config, quic_client_config, tmp_path):
    from dtlskit.sync import quic

    keylog = tmp_path / "keys.log"
    with quic.serve(lambda ch: None, "127.0.0.1", 0, config=quic_server_config) as server:
        port = server.addresses[0][1]
        config = quic_client_config.replace(keylog_file=keylog)
        with quic.connect("127.0.0.1", port, config=config, timeout=20):
            pass
    lines = keylog.read_text().split("\n")
    assert any(line.startswith("CLIENT_HANDSHAKE_TRAFFIC_SECRET ") for line in lines)
    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
