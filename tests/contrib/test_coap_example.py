"""examples/coap_server.py with arguments, driven by libcoap clients: by certificate (the
server asks for one with --ca) and by PSK (--psk IDENTITY:SECRET)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "aiocoap", reason="aiocoap is not installed: pip install 'dtlskit[coap]' (CI installs it)"
)

from dtlskit.certs import PKIFiles
from tests.peers import serving

from .libcoap import BACKENDS, client_argv, needs_libcoap

pytestmark = pytest.mark.interop

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "coap_server.py"


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs_libcoap(b)) for b in BACKENDS])
def test_libcoap_client_by_certificate_and_by_psk(backend: str, pki: PKIFiles) -> None:
    def argv(port: int) -> list[str]:
        return [
            sys.executable, "-W", "error", str(EXAMPLE),
            "--host", "127.0.0.1", "--port", str(port),
            "--cert", str(pki.server_cert), "--key", str(pki.server_key),
            "--ca", str(pki.ca_cert), "--psk", "sensor-1:sensor one secret",
        ]  # fmt: skip

    with serving(argv, ready="server: serving coaps://") as (peer, port):
        base = f"coaps://127.0.0.1:{port}"
        by_certificate = subprocess.run(
            client_argv(
                backend,
                f"{base}/sensors/temperature",
                "-c",
                str(pki.client_cert),
                "-j",
                str(pki.client_key),
                "-C",
                str(pki.ca_cert),
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        by_psk = subprocess.run(
            client_argv(
                backend, f"{base}/.well-known/core", "-u", "sensor-1", "-k", "sensor one secret"
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        peer.wait_for("from certificate CN=dtlskit client")
        peer.process.terminate()
        peer.wait_for("server: stopped")
        assert peer.process.wait(timeout=10) == 0
    reading = json.loads(by_certificate.stdout.strip().splitlines()[-1])
    assert set(reading) == {"celsius", "uptime"}, by_certificate.stdout + by_certificate.stderr
    assert "</sensors/temperature>" in by_psk.stdout, by_psk.stdout + by_psk.stderr
    assert "</.well-known/core>" in by_psk.stdout
