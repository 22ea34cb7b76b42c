"""The load generators: the C one (:file:`cload.c`, built on the fly) and the Python fallback.

The C load generator is an independent DTLS peer on the system OpenSSL (libssl), so that the
load is never the bottleneck: the Python one (:mod:`.loadgen`, on asyncio and dtlskit's own
client) spent more CPU per message than the fastest servers it measured. :func:`build` compiles
:file:`cload.c` with ``cc`` once and caches the binary under the user's cache directory, keyed
by a hash of the source and the compiler command; where ``cc`` or the OpenSSL headers are
missing, :func:`open_load` falls back to the Python load generator and says why.

Both answer the same two requests with the same JSON fields (see :class:`Load`):

``echo``
    ``sessions`` sessions, each from its own loopback source address, each keeping ``window``
    messages of ``size`` bytes in flight; figures over ``seconds`` after a ``warmup``.
``handshakes``
    ``concurrency`` new DTLS handshakes at a time (cookie exchange when the server asks), each
    from a new source address, for ``seconds`` or until ``count`` completed; ``keep`` leaves
    the sessions established on the server (the memory figure) instead of closing them.

Both take ``min_work`` and ``min_ticks`` (by default: for echo, one reply per message in
flight, and no tick; for handshakes, none; 0 and 0 is a window of wall time only): the window
rule of :func:`.common.window_state`. A measured window goes on past its ``seconds`` until it
saw that many replies (handshakes) and clock ticks of the server's CPU time, up to
:data:`.common.WINDOW_LIMIT` times ``seconds``; a window still short then ("starved") raises
:class:`.common.BenchmarkError` naming the machine's load, never a figure divided by zero.

The C process pins itself to :data:`LOAD_CPU`; the server runs on the other core.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .common import WINDOW_LIMIT, BenchmarkError, Child, progress, starved_message

__all__ = ["LOAD_CPU", "CLoad", "Load", "PythonLoad", "build", "open_load"]

LOAD_CPU = 1
"""The core the load generator is pinned to (when the machine has two or more)."""

SOURCE = Path(__file__).with_name("cload.c")
_CFLAGS = ["-O2", "-Wall"]
_LIBS = ["-lssl", "-lcrypto"]
_ADDRESS_BLOCK = 100_000
"""Source addresses reserved per job, so that no job re-uses another's (16 million exist)."""


def _cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dtlskit-bench"


def build() -> tuple[str | None, str]:
    """(path of the C load generator, how it was obtained) or (None, why it could not be)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) on PATH"
    if not SOURCE.exists():
        return None, f"{SOURCE} is missing"
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_CFLAGS, *_LIBS]).encode()).hexdigest()
    for directory in (_cache_directory(), Path(tempfile.gettempdir()) / "dtlskit-bench"):
        binary = directory / f"cload-{key[:16]}"
        if binary.exists() and os.access(binary, os.X_OK):
            return str(binary), f"cached {binary}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, partial = tempfile.mkstemp(prefix="cload-", dir=directory)
            os.close(fd)
        except OSError:
            continue  # not writable: try the next place
        command = [compiler, *_CFLAGS, "-o", partial, str(SOURCE), *_LIBS]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            os.unlink(partial)
            return None, f"{compiler} failed: {exc}"
        if done.returncode != 0:
            os.unlink(partial)
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            return None, f"{' '.join(command)} failed (OpenSSL headers missing?): {last}"
        os.replace(partial, binary)  # atomic: a concurrent run sees the whole binary or none
        return str(binary), f"built {binary}"
    return None, "no writable cache directory for the C load generator"


class Load:
    """What the benchmark asks of a load generator (both answer with the same fields)."""

    kind = "none"
    description = ""

    def echo(self, **spec: Any) -> dict[str, Any]:
        raise NotImplementedError

    def handshakes(self, **spec: Any) -> dict[str, Any]:
        raise NotImplementedError

    def release(self) -> None:
        """Let go of the sessions a ``keep`` handshakes job left established."""

    def close(self) -> None:
        """End the generator's processes."""


class CLoad(Load):
    """The C load generator: one process per job, its JSON on stdout."""

    kind = "c"

    def __init__(self, binary: str, how: str) -> None:
        self.binary = binary
        self.description = f"C, system {_system_openssl()} ({how})"
        self._next_address = 0
        self._pin = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else False

    def _run(self, mode: str, options: dict[str, Any], timeout: float) -> dict[str, Any]:
        options = {**options, "first-address": self._next_address}
        self._next_address += _ADDRESS_BLOCK
        if self._pin:
            options["cpu"] = LOAD_CPU
        command = [self.binary, mode]
        for name, value in options.items():
            if value is True:
                command.append(f"--{name}")
            elif value is not None and value is not False:
                command += [f"--{name}", str(value)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:  # run() has ended it by its PID
            raise BenchmarkError(f"the C load generator ran over {timeout:g} s") from exc
        if done.returncode != 0:
            raise BenchmarkError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr}")
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except ValueError as exc:
            raise BenchmarkError(f"the C load generator printed {done.stdout!r}") from exc
        return result

    def echo(self, **spec: Any) -> dict[str, Any]:
        spec = _echo_minimums(spec)
        options = {
            "proto": spec["protocol"],
            "port": spec["port"],
            "server-pid": spec["server_pid"],
            "sessions": spec["sessions"],
            "window": spec["window"],
            "size": spec["size"],
            "warmup": spec["warmup"],
            "seconds": spec["seconds"],
            "loss-timeout": spec["loss_timeout"],
            "buffer": spec.get("socket_buffer") or None,
            "min-work": spec["min_work"],
            "min-ticks": spec["min_ticks"],
        }
        timeout = spec["warmup"] + WINDOW_LIMIT * spec["seconds"] + spec["loss_timeout"] + 60.0
        result = self._run("echo", options, timeout)
        _check_window(f"echo of {spec['size']}-byte messages", result, "replies", spec)
        return result

    def handshakes(self, **spec: Any) -> dict[str, Any]:
        count = spec.get("count")
        options = {
            "port": spec["port"],
            "server-pid": spec["server_pid"],
            "concurrency": spec["concurrency"],
            "seconds": spec.get("seconds") or 3600.0,
            "count": count,
            "keep": bool(spec.get("keep")),
            "addresses": max(_ADDRESS_BLOCK - 1, 1),
            "min-work": spec.get("min_work", 0),
            "min-ticks": spec.get("min_ticks", 0),
        }
        timeout = WINDOW_LIMIT * (spec.get("seconds") or 0) + (count or 0) / 20 + 60.0
        result = self._run("handshakes", options, timeout)
        _check_window("new handshakes", result, "completed", spec)
        return result


def _echo_minimums(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the echo window's minimums filled in: by default one reply per message in
    flight (a window that saw none has measured nothing) and no clock tick."""
    defaults = {"min_work": int(spec["sessions"]) * int(spec["window"]), "min_ticks": 0}
    return {**spec, **{k: v if spec.get(k) is None else spec[k] for k, v in defaults.items()}}


def _check_window(what: str, result: dict[str, Any], work: str, spec: dict[str, Any]) -> None:
    """Raise :class:`BenchmarkError` naming the load when the window rule gave up (starved)."""
    if result.get("starved"):
        raise BenchmarkError(
            starved_message(
                what,
                float(result.get("wall_s", 0.0)),
                f"{result.get(work)} {work}",
                int(result.get("server_ticks", 0)),
                int(spec.get("min_work", 0)),
                int(spec.get("min_ticks", 0)),
            )
        )


def _system_openssl() -> str:
    try:
        done = subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "libssl"
    return done.stdout.strip() or "libssl"


class PythonLoad(Load):
    """The fallback: :mod:`.loadgen` (asyncio clients, dtlskit's own client) in a child."""

    kind = "python"

    def __init__(self, why: str, cafile: str) -> None:
        from .loadgen import start_load

        self.description = f"Python fallback (asyncio and dtlskit's client): {why}"
        self._cafile = cafile
        self._start_load = start_load
        self._child: Child = start_load()
        self._holding = False

    def _job(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._child.request(("job", spec), timeout)[1]
        except BenchmarkError:
            self._child.end()  # it may be mid-job: the next job gets a fresh one
            self._child = self._start_load()
            raise
        return {"generator": "python", **result}

    def echo(self, **spec: Any) -> dict[str, Any]:
        spec = _echo_minimums(spec)
        job = {
            "job": "echo",
            "cafile": self._cafile,
            "clients": spec["sessions"],
            **{k: spec[k] for k in ("protocol", "port", "server_pid", "window", "size")},
            **{k: spec[k] for k in ("warmup", "seconds", "loss_timeout", "socket_buffer")},
            "min_work": spec["min_work"],
            "min_ticks": spec["min_ticks"],
        }
        timeout = spec["warmup"] + WINDOW_LIMIT * spec["seconds"] + spec["loss_timeout"] + 60.0
        result = self._job(job, timeout)
        _check_window(f"echo of {spec['size']}-byte messages", result, "replies", spec)
        result["sessions"] = result.pop("clients", spec["sessions"])
        result["in_flight"] = spec["sessions"] * spec["window"]
        return result

    def handshakes(self, **spec: Any) -> dict[str, Any]:
        common = {"cafile": self._cafile, "port": spec["port"], "server_pid": spec["server_pid"]}
        if spec.get("keep"):
            count = int(spec["count"])
            job = {**common, "job": "hold", "sessions": count, "hold_timeout": 600.0}
            job["concurrency"] = spec["concurrency"]
            answer = self._child.request(("job", job), 60.0 + count / 5)
            self._holding = True
            held = dict(answer[1])
            return {"generator": "python", "completed": held["established"], "kept": True, **held}
        job = {**common, "job": "handshakes", "concurrency": spec["concurrency"]}
        job["seconds"] = spec["seconds"]
        job["min_work"] = spec.get("min_work", 0)
        job["min_ticks"] = spec.get("min_ticks", 0)
        result = self._job(job, WINDOW_LIMIT * spec["seconds"] + 60.0)
        _check_window("new handshakes", result, "completed", spec)
        return result

    def release(self) -> None:
        if self._holding:
            self._holding = False
            self._child.request(("release",), 120.0)

    def close(self) -> None:
        self._child.end()


def open_load(prefer: str, cafile: str) -> Load:
    """The C load generator (``prefer`` ``"auto"`` or ``"c"``) or the Python fallback."""
    if prefer != "python":
        binary, how = build()
        if binary is not None:
            return CLoad(binary, how)
        if prefer == "c":
            raise BenchmarkError(f"the C load generator is not available: {how}")
        progress(f"note: {how}; falling back to the Python load generator")
        return PythonLoad(how, cafile)
    return PythonLoad("--load python", cafile)
