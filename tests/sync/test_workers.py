"""A 2-worker sync server (SO_REUSEPORT, forked) in a subprocess on a fixed port: both workers
serve clients, and SIGTERM to the supervisor ends everything with exit status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.certs import PKIFiles
from tests.helpers import WAIT
from tests.peers import free_udp_port

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dtlskit import DTLSConfiguration, sync

    def handler(channel):
        for message in channel:
            channel.send(str(os.getpid()).encode())

    cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = DTLSConfiguration.server(cert, key, handshake_timeout=5.0)
    server = sync.serve(handler, "127.0.0.1", port, config=config, workers=2)
    print("supervisor ready", flush=True)
    server.serve_forever()
    print("supervisor done", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers need os.fork")
def test_two_workers_serve_and_stop_on_sigterm(
    tmp_path: Path, pki: PKIFiles, client_config: dtlskit.DTLSConfiguration
) -> None:
    script = tmp_path / "workers.py"
    script.write_text(SCRIPT)
    port = free_udp_port()
    process = subprocess.Popen(
        [sys.executable, str(script), str(pki.server_cert), str(pki.server_key), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"supervisor ready"
        pids: set[int] = set()
        failures: list[BaseException] = []
        config = client_config.replace(handshake_timeout=3.0)
        for _ in range(200):  # bounded attempts; each uses a new source port
            try:
                with sync.connect("127.0.0.1", port, config=config) as channel:
                    channel.send(b"which pid?")
                    pids.add(int(channel.recv(timeout=WAIT)))
            except dtlskit.DTLSError as exc:  # workers still binding, or moved mid-handshake
                failures.append(exc)
                time.sleep(0.05)
            if len(pids) == 2:
                break
        assert len(pids) == 2, f"served by {pids}; failures: {failures[-3:]}"
        assert process.pid not in pids  # the supervisor itself serves nothing
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
        output = process.stdout.read().decode()
        assert "supervisor done" in output
        assert "Traceback" not in output
        for pid in pids:  # the workers are gone too
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT)
        if process.stdout is not None:
            process.stdout.close()
