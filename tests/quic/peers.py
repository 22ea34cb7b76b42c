"""Finding and running the independent QUIC peers: picoquic (aiopquic, Python >= 3.12) and
ngtcp2's HTTP/3 server (Debian ``ngtcp2-server``)."""

from __future__ import annotations

import contextlib
import glob
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("picoquic_peer.py")
PEER_VENV = ROOT / ".quic-peer-venv"
SETUP = (
    "python3.12 -m venv .quic-peer-venv && .quic-peer-venv/bin/pip install 'aiopquic>=0.6,<0.7' "
    "(.ci/run does this)"
)


def _runs_312(python: str) -> bool:
    """True if ``python`` really starts and is >= 3.12 (a pyenv shim on PATH may only print
    that the version is not selected)."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"],
            capture_output=True,
            timeout=60,
        )
    except OSError:
        return False
    return done.returncode == 0


def find_python312() -> str | None:
    """A working Python >= 3.12 on this machine: on PATH, or under pyenv's versions."""
    candidates = [found for name in ("python3.14", "python3.13", "python3.12")
                  if (found := shutil.which(name))]
    home = os.path.expanduser("~")
    for pattern in (f"{home}/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9]",
                    "/root/.pyenv/versions/3.1[2-9]*/bin/python3.1[2-9]"):
        candidates.extend(sorted(glob.glob(pattern), reverse=True))
    return next((python for python in candidates if _runs_312(python)), None)


def _usable(python: str) -> bool:
    check = subprocess.run([python, "-c", "import aiopquic"], capture_output=True, timeout=60)
    return check.returncode == 0


def _make_peer_venv(python312: str) -> str:
    """Make the picoquic peer's venv (what .ci/run does), so that the README's one test command
    runs the interop tests on a fresh machine too. Fails, naming the step, if it cannot."""
    python = str(PEER_VENV / "bin" / "python")
    for argv in (
        [python312, "-m", "venv", str(PEER_VENV)],
        [python, "-m", "pip", "install", "-q", "aiopquic>=0.6,<0.7"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(
                f"could not make the picoquic peer's venv ({' '.join(argv)}): "
                f"{done.stderr.strip()[-500:]}; by hand: {SETUP}"
            )
    return python


def picoquic_python() -> str:
    """The Python that runs the picoquic peer; skips (saying why) only where no Python >= 3.12
    exists; where one exists but the peer's venv does not, makes the venv (once)."""
    configured = os.environ.get("DTLSKIT_QUIC_PEER_PYTHON")
    candidates = [configured] if configured else []
    candidates.append(str(PEER_VENV / "bin" / "python"))
    for python in candidates:
        if python and os.path.exists(python) and _usable(python):
            return python
    python312 = find_python312()
    if python312 is None:
        pytest.skip(
            "picoquic interop needs aiopquic, which needs Python >= 3.12: "
            "no python3.12+ on PATH or under ~/.pyenv/versions"
        )
    python = _make_peer_venv(python312)
    if not _usable(python):
        pytest.fail(f"the picoquic peer's venv cannot import aiopquic: {SETUP}")
    return python


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Peer:
    """A running peer process and the lines it printed (read by a thread: no pipe stalls)."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> str:
        """Wait for a line containing ``text`` (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"{text!r} not printed within {timeout} s: {self.seen!r}")
            self.seen.append(line)
            if text in line:
                return line

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._reader.join(10)
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[Peer]:
    """Run a peer; end it by its PID afterwards."""
    peer = Peer(argv)
    try:
        yield peer
    finally:
        peer.stop()


def example(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "examples" / name)]
