"""The few primitives an established datagram goes through, in C when the accelerator is built.

Theory of operation
-------------------
Once a handshake is over, an application datagram needs only four things: the socket's
datagrams read in a batch, one record given to OpenSSL and its plaintext read back, one message
written to OpenSSL and its record read back, and the records sent in a batch. Everything else —
which peer a datagram belongs to, whether it may be queued, deadlines, counters, errors — is
policy, and policy stays in Python (the engine in :mod:`dtlskit.core`, the drivers in
``asyncio/`` and ``sync/``).

This module offers those four primitives with one contract and two implementations:

* **python**: direct calls through the cffi binding of ``cryptography`` (the OpenSSL pyOpenSSL
  uses), skipping pyOpenSSL's per-call wrappers, and ``socket.recvfrom``/``sendto`` loops;
* **native**: the optional C extension :mod:`dtlskit._native`, which calls the *same* OpenSSL
  through function pointers taken from that binding (``ffi.addressof(lib, "SSL_read")``; it
  never links an OpenSSL of its own) and uses ``recvmmsg``/``sendmmsg``.

The native one is used when it was built and imports, unless the environment variable
``DTLSKIT_NATIVE`` is ``0`` (or ``off``/``no``/``false``). :data:`ACCELERATOR` says which is
active. Both must behave identically: the test suite runs once each way.

The contract
------------
``handle = make_handle(connection)``
    once per established session (``connection``: its ``OpenSSL.SSL.Connection`` on memory
    BIOs; ValueError otherwise). The handle keeps the connection alive (``handle.connection``)
    and stays safe to use after the connection shut down: OpenSSL then returns error codes.
``open_record(handle, datagram) -> bytes | int``
    write one datagram into OpenSSL and read one record's plaintext: the plaintext (never
    empty), or OpenSSL's ``SSL_get_error`` code: :data:`WANT_READ` (OpenSSL consumed it and
    produced no data: a replay, a bad MAC, a record it handled itself), :data:`ZERO_RETURN`
    (close_notify), anything else an error whose details wait on OpenSSL's error queue of this
    thread: call :func:`raise_error` at once, on the same thread. An empty datagram is
    :data:`WANT_READ` (it holds no record). Each call empties this thread's error queue first
    (the native one wipes it only when ``ERR_peek_error`` says it holds an error).
``seal_record(handle, message) -> bytes | int``
    encrypt one message (at most the cleartext MTU, checked by the caller) and return every
    byte OpenSSL wrote (one record, plus anything OpenSSL had left in its write BIO), or an
    ``SSL_get_error`` code as above. OpenSSL cannot write an empty message: ``b""`` gives
    ``SSL_ERROR_SYSCALL``, so callers must not seal one.
``stream_open(handle, data) -> (plaintext, code, output)``
    the TLS (stream) counterpart of both record primitives in one call: write ``data`` (any
    number of bytes of the stream, possibly none) into OpenSSL, read back every record's
    plaintext OpenSSL can decrypt now (joined, ``b""`` for none), and take everything OpenSSL
    wrote meanwhile (``output``: answers such as KeyUpdate responses or alerts, ``b""`` for
    none). ``code`` is the ``SSL_get_error`` code that ended the reading: :data:`WANT_READ`
    (all taken), :data:`ZERO_RETURN` (the peer's close_notify came after ``plaintext``), or an
    error as above (:func:`raise_error` at once).
``stream_seal(handle, data) -> bytes | int``
    TLS: encrypt all of ``data`` (any size; OpenSSL cuts it into records, and with partial
    writes, which pyOpenSSL enables, each ``SSL_write`` may take only a record's worth) and
    return every byte OpenSSL wrote, or an ``SSL_get_error`` code as above (the records of a
    failed call stay in OpenSSL's write BIO). ``data`` must not be empty.
``recv_batch(sock, max_count, timeout=0.0, wake=-1) -> (list of (datagram, address), error)``
    read up to ``max_count`` datagrams without blocking from a non-blocking ``socket.socket``
    (not the wrappers event loops hand out: they refuse ``recvfrom``/``sendto``); stops at
    the first would-block. An error ends the batch and is returned (``OSError | None``)
    beside what was read.
    With ``timeout`` not 0 (seconds, or None for no limit) and nothing waiting, it first
    waits, the GIL released, until a datagram arrives, ``timeout`` passes or the file
    descriptor ``wake`` (if >= 0; e.g. one end of a socketpair) becomes readable, whose
    bytes it then reads and discards; an empty batch then means "timed out or woken". A
    negative timeout counts as 0. The wait is one ``poll`` on the two descriptors, made only
    when the socket had nothing (a loaded server reads without it).
    Addresses are what ``sock.recvfrom`` returns. A datagram larger than 65,536 bytes (only
    possible off UDP, e.g. AF_UNIX) is dropped rather than delivered truncated: it counts
    toward ``max_count`` and the batch returns ``OSError(EMSGSIZE)`` unless another error
    ended it.
``send_batch(sock, items) -> (number sent, OSError | None)``
    send ``(datagram, address)`` pairs in order (address None on a connected socket); stops at
    the first failure and returns it with how many went out before it.
``receive_established``
    None on the pure-Python path. Native: ``receive_established(connections, batch, start,
    now, server_statistics) -> (stop, error, address)``,
    :meth:`DTLSConnection.receive_record`'s fast path for a run of a server's read batch, in
    C (see ``_native.c``); only :meth:`dtlskit.core.ServerEngine.receive_batch` calls it,
    and runs the same steps in Python when it is None.
``ProtocolCall(received, failed)``
    a callable for a callback-style session's messages (the engine's ``on_message``): calling
    it with a message calls ``received(message)``; if that raises an :class:`Exception`,
    ``failed(exception)`` is called and nothing is raised (other ``BaseException`` s
    propagate). Returns None. The native one has no Python frame of its own per message.

Every byte given to these functions is untrusted; none of them decides anything.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import threading
from typing import Any

from OpenSSL import SSL

from ..core._bindings import _ffi, _lib

__all__ = [
    "ACCELERATOR",
    "WANT_READ",
    "ZERO_RETURN",
    "ProtocolCall",
    "make_handle",
    "open_record",
    "raise_error",
    "receive_established",
    "recv_batch",
    "seal_record",
    "send_batch",
    "stream_open",
    "stream_seal",
]

WANT_READ: int = int(getattr(_lib, "SSL_ERROR_WANT_READ", 2))
ZERO_RETURN: int = int(getattr(_lib, "SSL_ERROR_ZERO_RETURN", 6))

_RECORD_PLAINTEXT_MAX = 16384 + 2048  # 2**14 plus what OpenSSL may hand back with it
_DATAGRAM_MAX = 65536  # more than any UDP payload; a larger datagram is reported, not delivered
_TRUNCATED = "a datagram larger than 65536 bytes was truncated by the socket and dropped"
_alloc = _ffi.new_allocator(should_clear_after_alloc=False)


class _Handle:
    """The pure-Python handle: the pointers a record needs, and the connection they live in."""

    __slots__ = ("connection", "rbio", "ssl", "wbio")

    def __init__(self, connection: SSL.Connection) -> None:
        if connection._into_ssl is None or connection._from_ssl is None:
            raise ValueError(
                "make_handle: the connection is not on memory BIOs (it was given a socket)"
            )
        self.connection = connection
        self.ssl = connection._ssl
        self.rbio = connection._into_ssl
        self.wbio = connection._from_ssl


def _py_make_handle(connection: SSL.Connection) -> Any:
    return _Handle(connection)


# The primitives' OpenSSL functions, bound once: each ``_lib.NAME`` look-up costs about as
# much as the call (cryptography's ``lib`` is a module whose attributes resolve lazily).
_ERR_clear_error = _lib.ERR_clear_error
_BIO_write = _lib.BIO_write
_BIO_read = _lib.BIO_read
_BIO_get_mem_data = _lib.BIO_get_mem_data
_SSL_read = _lib.SSL_read
_SSL_write = _lib.SSL_write
_SSL_get_error = _lib.SSL_get_error
_unpack = _ffi.unpack
_SYSCALL = int(_lib.SSL_ERROR_SYSCALL)


class _Scratch(threading.local):
    """A plaintext buffer per thread that opens records (an I/O thread: cffi releases the GIL in
    every OpenSSL call, so threads driving other sockets must not share one), made at its first
    record instead of per record. That thread seals into it too; a thread that only seals (a
    blocking handler's ``send``) keeps none and takes an exact-size buffer per record."""

    buf: Any = None


_scratch = _Scratch()


def _py_open_record(handle: Any, datagram: bytes) -> bytes | int:
    if not datagram:
        return WANT_READ
    _ERR_clear_error()
    if _BIO_write(handle.rbio, datagram, len(datagram)) <= 0:
        return _SYSCALL
    buf = _scratch.buf
    if buf is None:
        buf = _scratch.buf = _alloc("char[]", _RECORD_PLAINTEXT_MAX)
    result = _SSL_read(handle.ssl, buf, _RECORD_PLAINTEXT_MAX)
    if result > 0:
        return _unpack(buf, result)  # type: ignore[no-any-return]
    return int(_SSL_get_error(handle.ssl, result))


def _py_seal_record(handle: Any, message: bytes) -> bytes | int:
    _ERR_clear_error()
    result = _SSL_write(handle.ssl, message, len(message))
    if result <= 0:
        return int(_SSL_get_error(handle.ssl, result))
    wbio = handle.wbio
    buf = _scratch.buf
    if buf is None:
        pending = int(_BIO_get_mem_data(wbio, _ffi.NULL))
        if pending <= 0:  # pragma: no cover - a successful write always produces a record
            return b""
        buf = _alloc("char[]", pending)
        return _unpack(buf, max(_BIO_read(wbio, buf, pending), 0))  # type: ignore[no-any-return]
    # Everything OpenSSL wrote, in buffer-sized pieces until the BIO is empty (one piece for a
    # record, which is at most the buffer's size).
    read = _BIO_read(wbio, buf, _RECORD_PLAINTEXT_MAX)
    if read <= 0:  # pragma: no cover - a successful write always produces a record
        return b""
    record: bytes = _unpack(buf, read)
    while read == _RECORD_PLAINTEXT_MAX:  # pragma: no cover - more than one record's worth
        read = _BIO_read(wbio, buf, _RECORD_PLAINTEXT_MAX)
        if read > 0:
            record += _unpack(buf, read)
    return record


def _py_stream_open(handle: Any, data: bytes) -> tuple[bytes, int, bytes]:
    _lib.ERR_clear_error()
    ssl = handle.ssl
    code = WANT_READ
    chunks: list[bytes] = []
    if data and _lib.BIO_write(handle.rbio, data, len(data)) != len(data):
        code = int(_lib.SSL_ERROR_SYSCALL)  # pragma: no cover - a memory BIO takes any write
    else:
        buf = _alloc("char[]", _RECORD_PLAINTEXT_MAX)
        while True:  # bounded: each round decrypts a record of the bytes given, or ends
            result = _lib.SSL_read(ssl, buf, _RECORD_PLAINTEXT_MAX)
            if result <= 0:
                code = int(_lib.SSL_get_error(ssl, result))
                break
            chunks.append(_ffi.buffer(buf, result)[:])
    plaintext = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
    wbio = handle.wbio
    pending = int(_lib.BIO_get_mem_data(wbio, _ffi.NULL))
    if pending <= 0:
        return plaintext, code, b""
    out = _alloc("char[]", pending)
    read = _lib.BIO_read(wbio, out, pending)
    return plaintext, code, _ffi.buffer(out, max(read, 0))[:]


def _py_stream_seal(handle: Any, data: bytes) -> bytes | int:
    _lib.ERR_clear_error()
    ssl, size = handle.ssl, len(data)
    done = _lib.SSL_write(ssl, data, size)  # the common case: all of it in one call
    if done <= 0:
        return int(_lib.SSL_get_error(ssl, done))
    if done < size:  # a partial write (a record's worth): the rest through a pointer
        view = _ffi.from_buffer(data)
        while done < size:  # bounded: each successful write takes at least one byte
            result = _lib.SSL_write(ssl, view + done, size - done)
            if result <= 0:
                return int(_lib.SSL_get_error(ssl, result))
            done += result
    wbio = handle.wbio
    pending = int(_lib.BIO_get_mem_data(wbio, _ffi.NULL))
    if pending <= 0:  # pragma: no cover - a successful write always produces a record
        return b""
    out = _alloc("char[]", pending)
    read = _lib.BIO_read(wbio, out, pending)
    return _ffi.buffer(out, max(read, 0))[:]  # type: ignore[no-any-return]


def _py_recv_batch(
    sock: Any, max_count: int, timeout: float | None = 0.0, wake: int = -1
) -> tuple[list[tuple[bytes, Any]], OSError | None]:
    received: list[tuple[bytes, Any]] = []
    recvfrom = sock.recvfrom
    truncated = False
    count = 0
    waited = timeout is not None and timeout <= 0
    while count < max_count:
        try:
            datagram, address = recvfrom(_DATAGRAM_MAX + 1)
        except (BlockingIOError, InterruptedError):
            if waited or count:
                break
            waited = True
            if not _wait_readable(sock, timeout, wake):
                break
            continue
        except OSError as exc:
            return received, exc
        count += 1
        if len(datagram) > _DATAGRAM_MAX:  # cut short by the socket: drop it, say so
            truncated = True
            continue
        received.append((datagram, address))
    return received, OSError(errno.EMSGSIZE, _TRUNCATED) if truncated else None


def _wait_readable(sock: Any, timeout: float | None, wake: int) -> bool:
    """Wait for ``sock`` or ``wake`` to be readable (``wake``'s bytes read and discarded);
    True if ``sock`` may have a datagram."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if wake >= 0:
        poller.register(wake, select.POLLIN)
    # poll's milliseconds rounded up: a deadline is never woken for early
    ms = None if timeout is None else min(max(0, math.ceil(timeout * 1000)), 2**31 - 1)
    try:
        ready = poller.poll(ms)
    except InterruptedError:  # pragma: no cover - PEP 475 retries; a signal handler raised
        return True
    readable = False
    for fd, _ in ready:
        if fd == wake:
            _discard(wake)
        else:
            readable = True
    return readable


def _discard(fd: int) -> None:
    with contextlib.suppress(OSError):  # drained (BlockingIOError) or closed under us
        for _ in range(64):
            if len(os.read(fd, 4096)) < 4096:
                return


def _py_send_batch(sock: Any, items: list[tuple[bytes, Any]]) -> tuple[int, OSError | None]:
    sent = 0
    try:
        for datagram, address in items:
            if address is None:
                sock.send(datagram)
            else:
                sock.sendto(datagram, address)
            sent += 1
    except OSError as exc:
        return sent, exc
    return sent, None


class _PyProtocolCall:
    """The pure-Python ``ProtocolCall`` (see the contract above)."""

    __slots__ = ("failed", "received")

    def __init__(self, received: Any, failed: Any) -> None:
        if not callable(received) or not callable(failed):
            raise TypeError("ProtocolCall(received, failed) takes two callables")
        self.received = received
        self.failed = failed

    def __call__(self, data: bytes) -> None:
        try:
            self.received(data)
        except Exception as exc:
            self.failed(exc)


def raise_error(connection: SSL.Connection, code: int) -> None:
    """Raise the pyOpenSSL exception for the error a primitive returned as ``code`` (the
    caller translates it at its one boundary). Must run on the thread that got ``code``."""
    if code == WANT_READ:
        raise SSL.WantReadError()
    if code == ZERO_RETURN:
        raise SSL.ZeroReturnError()
    connection._raise_ssl_error(connection._ssl, -1)
    raise SSL.Error([("dtlskit", "record", f"SSL_get_error {code}")])  # pragma: no cover


def _native_wanted() -> bool:
    return os.environ.get("DTLSKIT_NATIVE", "1").strip().lower() not in ("0", "off", "no", "false")


make_handle = _py_make_handle
open_record = _py_open_record
seal_record = _py_seal_record
recv_batch = _py_recv_batch
send_batch = _py_send_batch
ProtocolCall: Any = _PyProtocolCall
receive_established: Any = None
stream_open = _py_stream_open
stream_seal = _py_stream_seal
ACCELERATOR = "python"
"""Which implementation is active: ``"native"`` (the C extension) or ``"python"``."""

if _native_wanted():  # pragma: no branch
    try:
        from .. import _native  # type: ignore[attr-defined]
    except ImportError:
        pass
    else:  # pragma: no cover - only where the extension was built
        # cryptography's Binding.lib is a module copied from the cffi Lib; addressof needs the
        # Lib itself.
        from cryptography.hazmat.bindings._rust import _openssl

        _native.init(_ffi, _openssl.lib)
        make_handle = _native.make_handle
        open_record = _native.open_record
        seal_record = _native.seal_record
        recv_batch = _native.recv_batch
        send_batch = _native.send_batch
        ProtocolCall = _native.ProtocolCall
        receive_established = _native.receive_established
        stream_open = _native.stream_open
        stream_seal = _native.stream_seal
        ACCELERATOR = "native"
