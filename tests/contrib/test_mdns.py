"""mDNS/DNS-SD discovery (dtlskit.contrib.mdns), in a private network namespace holding only
``lo`` with multicast on and 224.0.0.0/4 routed to it, so no multicast leaves the machine:
``mdns_scenario.py`` re-runs there (``unshare --net``) and reports what it saw, step by step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtlskit.certs import PKIFiles

pytest.importorskip("zeroconf", reason="zeroconf is not installed: pip install 'dtlskit[mdns]'")
pytest.importorskip("aiocoap", reason="aiocoap is not installed: pip install 'dtlskit[coap]'")

from dtlskit.contrib import mdns

SCENARIO = Path(__file__).with_name("mdns_scenario.py")
ROOT = Path(__file__).resolve().parents[2]
SETUP = (
    "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo && "
    'exec "$0" "$@"'
)


def namespace_argv(*argv: str) -> list[str]:
    """``argv`` in a new network namespace with only a multicast-capable ``lo``; skips, saying
    why, where this machine cannot make one (no unshare/ip, or no permission)."""
    missing = [tool for tool in ("unshare", "ip", "dig") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (util-linux, iproute2, bind9-dnsutils)")
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", SETUP, "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace here: {probe.stderr.strip()}")
    return ["unshare", "--net", "sh", "-c", SETUP, *argv]


def test_advertise_check_with_dig_find_and_connect(pki: PKIFiles, other_pki: PKIFiles) -> None:
    argv = namespace_argv(sys.executable, "-W", "error", str(SCENARIO),
                          str(pki.directory), str(other_pki.directory))  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = {}
    for line in result.stdout.splitlines():
        entry = json.loads(line)
        steps[entry.pop("step")] = entry
    fingerprint = mdns.certificate_fingerprint(pki.server_cert)

    # Nothing but loopback where the multicast went.
    assert steps["interfaces"]["names"] == ["lo"]
    # BIND's dig, an independent resolver, reads the advertisement back.
    dug = steps["dig"]
    assert dug["ptr"] == "sensor-1._coaps._udp.local."
    assert dug["srv"] == f"0 0 {dug['port']} sensor-1.local."
    assert f'"fp=sha256:{fingerprint}"' in dug["txt"] and '"rt=temperature"' in dug["txt"]
    assert dug["a"] == "127.0.0.1"
    # Browsing found and resolved it; the coaps request went to what was found.
    found = steps["found"]
    assert found == {
        "name": "sensor-1",
        "addresses": ["127.0.0.1"],
        "port": dug["port"],
        "fingerprint": fingerprint,
        "properties": {"proto": "dtls1.2", "fp": f"sha256:{fingerprint}", "rt": "temperature"},
    }
    assert steps["coaps"] == {
        "code": "2.05 Content",
        "payload": "CN=dtlskit client",
        "server_sha256": fingerprint,
    }
    # The blocking flavour: advertise a sync server as _dtls._udp, find it, connect, echo.
    assert steps["sync"]["echoed"] == "found you"
    assert steps["sync"]["port"] == steps["sync"]["advertised_port"]
    # A certificate other than the advertised one is refused.
    refused = steps["pin"]["refused"]
    assert refused is not None and mdns.certificate_fingerprint(other_pki.server_cert) in refused
    assert "done" in steps


def test_found_fingerprint_parsing() -> None:
    base = {"name": "a", "service_type": mdns.DTLS, "host": "a.local", "addresses": (), "port": 1}
    assert mdns.Found(**base, properties={"fp": "SHA256:ABCD"}).fingerprint == "abcd"  # type: ignore[arg-type]
    assert mdns.Found(**base, properties={"fp": "sha1:abcd"}).fingerprint is None  # type: ignore[arg-type]
    assert mdns.Found(**base).fingerprint is None  # type: ignore[arg-type]


def test_names_that_never_resolve_do_not_stretch_the_timeout() -> None:
    """Anyone on the link can announce names with nothing behind them; each resolution is cut
    to the time the caller has left (it used to take 3 s each, after the timeout too)."""
    flood = Path(__file__).with_name("mdns_flood_scenario.py")
    argv = namespace_argv(sys.executable, "-W", "error", str(flood))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["found"] == [0, 0]
    for flavour in ("sync", "asyncio"):
        timeouts = report["timeouts"][flavour]
        assert timeouts, f"{flavour}: no announced name was seen"  # the flood reached it
        assert all(0 < t <= 1000 for t in timeouts), (flavour, timeouts)
