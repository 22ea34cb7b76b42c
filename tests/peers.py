"""Independent DTLS peers for interop tests: ``openssl s_server/s_client`` and GnuTLS's
``gnutls-serv/gnutls-cli``, run as child processes on loopback and ended by their PID.

Output is read by a thread into a queue so a test can wait for a line with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

OPENSSL = shutil.which("openssl")
GNUTLS_SERV = shutil.which("gnutls-serv")
GNUTLS_CLI = shutil.which("gnutls-cli")

needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command is not installed (.ci/run installs it)"
)
needs_gnutls = pytest.mark.skipif(
    GNUTLS_SERV is None or GNUTLS_CLI is None,
    reason="gnutls-bin is not installed (.ci/run installs it)",
)


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Peer:
    """A child process whose combined output is collected line by line. It runs in a process
    group of its own, so :meth:`stop` also ends any worker processes it forked."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str] | None = None, stdin: bool = True
    ) -> None:
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        """Wait until a line containing ``text`` appears; fail with the output so far."""
        return self.wait_for_lines(text, 1, timeout)[0]

    def wait_for_lines(self, text: str, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until ``count`` lines containing ``text`` appeared (bounded by ``timeout``);
        fail with the output so far, or as soon as the process exits without them."""
        deadline = time.monotonic() + timeout
        found = [line for line in self.seen if text in line]
        while len(found) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.argv[0]} printed {len(found)} of {count} line(s) with {text!r}; "
                    "output:\n" + "\n".join(self.seen)
                )
            try:
                line = self.lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"{self.argv[0]} exited ({self.process.returncode}) before printing "
                        f"{text!r}; output:\n" + "\n".join(self.seen)
                    ) from None
                continue
            self.seen.append(line)
            if text in line:
                found.append(line)
        return found[:count]

    def write(self, data: bytes) -> None:
        """Write to the child's standard input."""
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def stop(self) -> None:
        """End the process group we started, by PID, and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        # The group is dead, so the reader meets end of file: let it finish before closing its
        # pipe. Closing a buffered pipe under a thread still in readline() races (CPython
        # raises "PyMemoryView_FromBuffer(): info->buf must not be NULL" in that thread).
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            with contextlib.suppress(OSError):
                self.process.stdout.close()


@contextlib.contextmanager
def running(argv: Sequence[str], ready: str | None = None) -> Iterator[Peer]:
    """Start a peer, optionally wait for a readiness line, and always stop it."""
    peer = Peer(argv)
    try:
        if ready is not None:
            peer.wait_for(ready)
        yield peer
    finally:
        peer.stop()


def openssl_s_server(
    port: int, cert: str, key: str, *extra: str, host: str = "127.0.0.1"
) -> list[str]:
    """argv of ``openssl s_server -dtls1_2`` on loopback."""
    assert OPENSSL is not None
    accept = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [OPENSSL, "s_server", "-dtls1_2", "-accept", accept, "-cert", cert, "-key", key, *extra]


def openssl_psk_s_server(port: int, hex_key: str, identity: str, *extra: str) -> list[str]:
    """argv of a certificate-less ``openssl s_server -dtls1_2`` accepting one PSK."""
    assert OPENSSL is not None
    return [
        OPENSSL,
        "s_server",
        "-dtls1_2",
        "-accept",
        f"127.0.0.1:{port}",
        "-nocert",
        "-psk",
        hex_key,
        "-psk_identity",
        identity,
        *extra,
    ]


def openssl_s_client(port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """argv of ``openssl s_client -dtls1_2`` to a loopback port."""
    assert OPENSSL is not None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return [OPENSSL, "s_client", "-dtls1_2", "-connect", target, *extra]


def gnutls_serv(port: int, cert: str, key: str, *extra: str) -> list[str]:
    """argv of ``gnutls-serv --udp --echo``. It binds the wildcard address (it has no option to
    bind one); the tests only ever send to it over loopback."""
    assert GNUTLS_SERV is not None
    return [
        GNUTLS_SERV,
        "--udp",
        "--echo",
        "-p",
        str(port),
        "--x509certfile",
        cert,
        "--x509keyfile",
        key,
        *extra,
    ]


def gnutls_psk_serv(port: int, passwd_file: str) -> list[str]:
    """argv of a PSK-only ``gnutls-serv --udp --echo`` (identities and keys in ``passwd_file``,
    ``identity:hexkey`` lines)."""
    assert GNUTLS_SERV is not None
    return [
        GNUTLS_SERV,
        "--udp",
        "--echo",
        "-p",
        str(port),
        "--pskpasswd",
        passwd_file,
        "--priority",
        "NORMAL:+PSK:+ECDHE-PSK",
    ]


def gnutls_cli(port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """argv of ``gnutls-cli --udp`` to a loopback port."""
    assert GNUTLS_CLI is not None
    return [GNUTLS_CLI, "--udp", "-p", str(port), *extra, host]
