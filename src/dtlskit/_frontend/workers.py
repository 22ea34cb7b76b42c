"""Worker processes for servers with ``workers=N`` (``SO_REUSEPORT``), shared by both flavours.

Workers and signals
-------------------
:func:`run_workers` forks with SIGINT and SIGTERM blocked, so a signal that arrives while the
workers start is held, never lost: each child resets both signals to their defaults *before* it
unblocks them (a signal sent early ends it at once; the worker's own handlers, installed once it
serves, take over after that), and the parent installs its forwarder before it unblocks them. A
worker ended by SIGINT or SIGTERM stopped as asked: that counts as a clean exit.
:func:`stop_signals_held` extends the blocked window back to the start of a ``run_server``, so
that a signal received while the server is being set up is forwarded too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..exceptions import ConfigurationError, TransportError

__all__ = ["run_workers", "stop_signals_held"]

# -- worker processes ----------------------------------------------------------------------------

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOPPED_BY_SIGNAL = frozenset(-int(sig) for sig in _STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held(enabled: bool = True) -> Iterator[None]:
    """Hold SIGINT and SIGTERM (blocked, pending) while the block runs; restore the mask after.

    A ``run_server`` with workers wraps its whole set-up in it: :func:`run_workers`, called
    inside, releases the signals once its forwarder is installed, so one received meanwhile
    reaches the workers instead of killing the parent or being lost. Main thread only.
    """
    if not enabled:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_workers(
    count: int, run_one: Callable[[int], None], *, stop_requested: Callable[[], bool] | None = None
) -> int:
    """Fork ``count`` worker processes each running ``run_one(index)``; wait for all.

    Call it from the main thread before any other thread or event loop exists (fork copies
    only the calling thread). Build the OpenSSL context and cookie secret first: the children
    inherit them, so session tickets and cookies issued by one worker are accepted by every
    other. SIGINT and SIGTERM received by the parent are forwarded to every worker; one that
    arrives while the workers start is held until they can take it (see the module docstring).
    ``stop_requested`` (checked once the signals are held) returns True when the server was
    asked to stop before the workers started: then none is started.

    Returns 0 if every worker exited 0 or was ended by SIGINT/SIGTERM, else 1.
    """
    if count < 1:
        raise ConfigurationError(f"workers must be at least 1, not {count}")
    if not hasattr(os, "fork"):
        raise ConfigurationError("workers need os.fork, which this platform lacks")
    entry_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        if stop_requested is not None and stop_requested():
            return 0
        return _fork_and_wait(count, run_one, entry_mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, entry_mask)


def _fork_and_wait(count: int, run_one: Callable[[int], None], entry_mask: Any) -> int:
    """:func:`run_workers` with SIGINT/SIGTERM blocked on entry."""
    live: list[int] = []  # worker PIDs, until reaped

    def forward(signum: int, frame: Any) -> None:
        for pid in list(live):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for stream in (sys.stdout, sys.stderr):  # or each child would write the parent's buffer
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, measured by the worker tests
                code = 1
                try:
                    code = _worker(index, run_one, entry_mask)
                finally:
                    os._exit(code)
            live.append(pid)
    except OSError as exc:
        forward(signal.SIGTERM, None)
        _reap(live)
        raise TransportError(exc.errno, f"cannot start worker processes: {exc}") from exc
    previous = {sig: signal.signal(sig, forward) for sig in _STOP_SIGNALS}
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held signals: forwarded now
        return _reap(live)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _reap(live: list[int]) -> int:
    """Wait for every child in ``live`` (removing each once reaped); the overall exit status."""
    status = 0
    for pid in list(live):
        _, raw = os.waitpid(pid, 0)  # PEP 475: retried after a signal handler runs
        live.remove(pid)
        code = os.waitstatus_to_exitcode(raw)
        if code != 0 and code not in _STOPPED_BY_SIGNAL:
            status = 1
    return status


def _worker(index: int, run_one: Callable[[int], None], mask: Any) -> int:  # pragma: no cover
    """The body of a worker process (SIGINT/SIGTERM still blocked); its exit status."""
    code = 0
    try:
        # Defaults first, then unblock: a signal held since the fork ends this worker now
        # (SIGTERM kills it, SIGINT raises KeyboardInterrupt), never a handler the parent had.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        run_one(index)
    except KeyboardInterrupt:
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return code
