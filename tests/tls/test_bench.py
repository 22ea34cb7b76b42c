"""The TLS benchmark (benchmarks/tls.py) measures both servers and computes its ratios from
figures of the same run. Nothing here asserts a speed."""

from __future__ import annotations

import sys
from pathlib import Path

from dtlskit.certs import PKIFiles

ROOT = Path(__file__).resolve().parents[2]

try:
    from dtlskit.benchmarks import tls as tls_bench
except ImportError:  # a checkout without the installed mapping
    sys.path.insert(0, str(ROOT))
    from benchmarks import tls as tls_bench  # type: ignore[no-redef]


def test_measure_reports_both_servers_and_exact_ratios(pki: PKIFiles) -> None:
    document = tls_bench.measure(0.3, pki, rounds=2)
    assert document["errors"] == {}
    rows = document["rows"]
    assert set(rows) == set(tls_bench.IMPLEMENTATIONS)
    for row in rows.values():
        assert row["rounds"] == 2
        assert row["echo"]["replies"] > 0 and row["echo"]["server_cpu_us_per_message"] >= 0
        assert row["handshakes"]["handshakes"] > 0
    ours, theirs = rows["dtlskit.tls"], rows["asyncio-ssl"]
    ratios = document["ratios"]
    assert ratios["echo msgs/s"] == (
        ours["echo"]["messages_per_second"] / theirs["echo"]["messages_per_second"]
    )
    assert ratios["handshakes/s"] == (
        ours["handshakes"]["handshakes_per_second"] / theirs["handshakes"]["handshakes_per_second"]
    )
    text = tls_bench.table(document)
    assert "ratio dtlskit.tls vs asyncio-ssl, echo msgs/s:" in text
    assert "asyncio-ssl" in text and "dtlskit.tls" in text
