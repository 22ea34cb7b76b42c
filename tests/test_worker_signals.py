"""SIGTERM while SO_REUSEPORT workers start, in both flavours, and how worker exit statuses
count (`dtlskit._frontend.workers`).

Every server runs on loopback, every wait is bounded, and every process a test starts runs in a
session of its own and is ended through its own process group.
"""

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dtlskit.certs import PKIFiles
from tests.helpers import WAIT, needs_fork
from tests.peers import free_udp_port

# -- 1. SIGTERM while the workers start ---------------------------------------------------------

WORKERS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from dtlskit import DTLSConfiguration
    from dtlskit import asyncio as aio, sync

    PARENT = os.getpid()

    class Announcing(DTLSConfiguration):
        # run_server builds the context in the parent after it started holding the signals:
        # "starting" then means run_server is running (a signal before it is entered would kill
        # the process by its default action, which no library can prevent).
        def build_context(self, server):
            context = super().build_context(server)
            if os.getpid() == PARENT:
                sys.stderr.write("starting\\n")
                sys.stderr.flush()
            return context

    def sync_echo(channel):
        for message in channel:
            channel.send(message)

    async def async_echo(channel):
        async for message in channel:
            await channel.send(message)

    flavour, cert, key, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    config = Announcing.server(cert, key)
    run_server = sync.run_server if flavour == "sync" else aio.run_server
    handler = sync_echo if flavour == "sync" else async_echo
    sys.exit(run_server(handler, "127.0.0.1", port, config=config, workers=2))
    """
)

SIGNAL_TRIALS = 15


@needs_fork
@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_sigterm_while_workers_start_exits_0(flavour: str, tmp_path: Path, pki: PKIFiles) -> None:
    """SIGTERM to the process group at once after start-up: every run ends, with status 0."""
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)
    rng = random.Random(1234)
    outcomes: list[str] = []
    details: list[str] = []
    for _ in range(SIGNAL_TRIALS):
        port = free_udp_port()
        argv = [sys.executable, str(script), flavour, str(pki.server_cert), str(pki.server_key)]
        process = subprocess.Popen(
            [*argv, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert process.stderr is not None
            assert process.stderr.readline() == b"starting\n"
            time.sleep(rng.uniform(0.001, 0.03))
            os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                outcomes.append("hung")
                continue
            errors = process.stderr.read().decode()
            if code != 0 or "Traceback" in errors:
                details.append(f"exit {code}:\n{errors[-2000:]}")
            outcomes.append(f"exit {code}" + (" with a traceback" if "Traceback" in errors else ""))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT)
            if process.stderr is not None:
                process.stderr.close()
    assert outcomes == ["exit 0"] * SIGNAL_TRIALS, "\n".join(details)


RUN_WORKERS_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from dtlskit._frontend import workers

    def worker(mode):
        def run_one(index):
            if index == 0:
                return  # a worker that served and stopped
            if mode == "raise":
                raise RuntimeError("worker failed")
            os.kill(os.getpid(), {"term": signal.SIGTERM, "int": signal.SIGINT,
                                  "kill": signal.SIGKILL}[mode])
            signal.pause()  # pragma: no cover - the signal ends it first
        return run_one

    results = {mode: workers.run_workers(2, worker(mode)) for mode in sys.argv[1:]}
    print(" ".join(f"{mode}={code}" for mode, code in results.items()))
    """
)


@needs_fork
def test_run_workers_counts_a_stop_signal_as_a_clean_exit(tmp_path: Path) -> None:
    script = tmp_path / "run_workers.py"
    script.write_text(RUN_WORKERS_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), "term", "int", "kill", "raise"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.stdout.split() == ["term=0", "int=0", "kill=1", "raise=1"], result.stderr
