"""Typed configuration: the factories' keywords and callback types are checked by mypy
--strict on a user's file, and the ssl.SSLContext-style names return new frozen copies."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import dtlskit
from dtlskit.certs import PKIFiles

PACKAGE_PARENT = Path(dtlskit.__file__).resolve().parent.parent

GOOD = """
import ssl
import dtlskit

def lookup(identity: str) -> bytes | None:
    return {"sensor": b"k" * 16}.get(identity)

client = dtlskit.DTLSConfiguration.client("ca.pem", "localhost", mtu=1400, psk=("id", b"k"))
server = dtlskit.DTLSConfiguration.server(
    "cert.pem", "key.pem", verify_mode=ssl.CERT_REQUIRED, psk_lookup=lookup,
    sni_callback=lambda name: None, limits=dtlskit.Limits(max_sessions=10),
)
both = client.load_verify_locations(cafile="other.pem").set_alpn_protocols(["coap"])
chained: dtlskit.DTLSConfiguration = server.load_cert_chain("c.pem", "k.pem").load_default_certs()
"""

BAD = {
    "misspelt keyword": (
        'dtlskit.DTLSConfiguration.client("ca.pem", server_hostnme="localhost")',
        'Unexpected keyword argument "server_hostnme"',
    ),
    "server keyword on a client": (
        'dtlskit.DTLSConfiguration.client("ca.pem", psk_lookup={"a": b"k"})',
        'Unexpected keyword argument "psk_lookup"',
    ),
    "lookup taking bytes": (
        "def lookup(identity: bytes) -> bytes: return identity\n"
        "dtlskit.DTLSConfiguration.server(psk_lookup=lookup)",
        '"psk_lookup"',
    ),
    "wrong type": ('dtlskit.DTLSConfiguration.server("c.pem", "k.pem", mtu="1400")', '"mtu"'),
}


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    user = tmp_path / "user.py"
    user.write_text(source)
    # No MYPYPATH: mypy must find the installed package itself (README's editable install).
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            str(user),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


@pytest.mark.slow
def test_mypy_strict_accepts_a_correct_user_file_and_rejects_mistakes(tmp_path: Path) -> None:
    result = _mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr
    for what, (line, expected) in BAD.items():
        result = _mypy(tmp_path, f"import dtlskit\n{line}\n")
        assert result.returncode == 1, what
        assert expected in result.stdout, (what, result.stdout)


def test_factories_take_no_unknown_keyword() -> None:
    with pytest.raises(TypeError, match="server_hostnme"):
        dtlskit.DTLSConfiguration.client(server_hostnme="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="psk_lookup"):
        dtlskit.DTLSConfiguration.client(psk_lookup={})  # type: ignore[call-arg]


def test_ssl_style_names_return_new_frozen_configurations(pki: PKIFiles) -> None:
    base = dtlskit.DTLSConfiguration.client(server_hostname="localhost")
    trusting = base.load_verify_locations(cafile=pki.ca_cert)
    assert trusting is not base and base.cafile is None and trusting.cafile == pki.ca_cert
    assert base.load_default_certs().default_certs and not base.default_certs
    assert base.set_alpn_protocols(["coap", "h2"]).alpn_protocols == ("coap", "h2")
    assert base.alpn_protocols == ()
    with pytest.raises(dtlskit.ConfigurationError, match="cafile, capath or cadata"):
        base.load_verify_locations()
    server = dtlskit.DTLSConfiguration.server().load_cert_chain(pki.server_cert, pki.server_key)
    assert (server.certfile, server.keyfile) == (pki.server_cert, pki.server_key)
    # the copies work: a real handshake in memory with the derived configurations
    from dtlskit.testing import MemoryPair

    pair = MemoryPair(server.set_alpn_protocols(["coap"]), trusting.set_alpn_protocols(["coap"]))
    assert pair.handshake()
    assert pair.client.alpn_protocol == "coap"
    assert dtlskit.DTLSConfiguration.server(verify_mode=ssl.CERT_NONE).verify_mode is ssl.CERT_NONE


def test_ignoring_what_an_ssl_style_method_returned_is_never_a_silent_no_op(
    pki: PKIFiles,
) -> None:
    # Ported from ssl.SSLContext: the call is made for its effect, the result dropped.
    from dtlskit import sync

    config = dtlskit.DTLSConfiguration.server()
    loaded = config.load_cert_chain(pki.server_cert, pki.server_key)
    with pytest.raises(dtlskit.ConfigurationError, match=r"retired by load_cert_chain\(\)") as info:
        sync.serve(lambda channel: None, "127.0.0.1", 0, config=config)
    assert "config = config.load_cert_chain(...)" in str(info.value)
    with sync.serve(lambda channel: None, "127.0.0.1", 0, config=loaded) as server:
        assert server.is_serving()  # the returned configuration is the one to use

    client = dtlskit.DTLSConfiguration.client(server_hostname="localhost")
    for retire in (
        lambda c: c.load_verify_locations(cafile=pki.ca_cert),
        lambda c: c.load_default_certs(),
        lambda c: c.set_alpn_protocols(["coap"]),
    ):
        fresh = client.replace()
        derived = retire(fresh)
        with pytest.raises(dtlskit.ConfigurationError, match="retired by"):
            fresh.context(server=False)
        derived.build_context(server=False)  # fine
    server = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    server.add_sni_certificate("a.example", pki.server_cert, pki.server_key)
    with pytest.raises(dtlskit.ConfigurationError, match=r"add_sni_certificate\(\)"):
        server.build_context(server=True)
    # replace() retires nothing: the way to derive variants
    base = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    base.replace(mtu=1400)
    base.build_context(server=True)
