"""EdgerOS's "Multi-Task Server" in Python: a main process accepts, two worker processes
handshake and serve.

In EdgerOS (JSRE ``dtls`` module) the main task calls ``dtls.accept()``, sends the new
object's ``sockFd`` to a task with ``Task.send``, and calls ``flyAway()`` so that it does not
close the descriptor; the task calls ``Dtls.createByFd(name, sockFd[, timeout | callback])``,
which does the handshake there. The same in dtlskit:

=========================================  ====================================================
EdgerOS ``dtls``                            dtlskit
=========================================  ====================================================
``Dtls.createServer({name, ...}, saddr)``  ``sync.listen_handoff(host, port, config=...)``
``server.accept()``                        ``listener.accept(timeout=)`` → ``Handoff``
``Task.send(id, {sockFd})`` + ``flyAway``  ``handoff.send(unix_socket)`` (SCM_RIGHTS)
``Task.recv()``                            ``dtlskit.handoff.receive(unix_socket)``
``Dtls.createByFd(name, fd, timeout)``     ``sync.from_handoff(handoff, config=, timeout=)``
``Dtls.createByFd(name, fd, callback)``    ``await dtlskit.from_handoff(handoff, config=)``
=========================================  ====================================================

The main process never handshakes: it only answers ClientHellos with stateless cookies. Each
accepted peer's socket (bound to the server's port, connected to the peer) goes to the workers
in turn, as ``next = (next + 1) % 2`` does in the EdgerOS example. Worker 0 uses the blocking
mode, worker 1 the asyncio one. Several clients connect; each asks which worker serves it and
checks its echoes; the script exits 0 when every echo came back. Run it with no arguments.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading

import dtlskit
import dtlskit.handoff
from dtlskit import sync
from dtlskit.certs import create_pki

CLIENTS = 6
MESSAGES = 3
TIMEOUT = 20.0


# -- worker processes (task.js) ------------------------------------------------------------------


def worker_blocking(name: str, unix: socket.socket, config: dtlskit.DTLSConfiguration) -> None:
    """Dtls.createByFd(name, fd, timeout): one thread per handed-off peer."""

    def serve(channel: sync.Channel) -> None:
        with channel:
            for message in channel:
                channel.send(name.encode() if message == b"who?" else message)

    while True:
        try:
            handoff = dtlskit.handoff.receive(unix)  # Task.recv()
        except dtlskit.ConnectionLost:
            return  # the main process is done
        try:
            channel = sync.from_handoff(handoff, config=config, timeout=TIMEOUT)
        except dtlskit.HandshakeError as exc:
            print(f"{name}: handshake failed: {exc}", flush=True)
            continue
        threading.Thread(target=serve, args=(channel,), daemon=True).start()


async def worker_async(name: str, unix: socket.socket, config: dtlskit.DTLSConfiguration) -> None:
    """Dtls.createByFd(name, fd, callback): one task per handed-off peer."""

    async def serve(handoff: dtlskit.handoff.Handoff) -> None:
        try:
            channel = await dtlskit.from_handoff(handoff, config=config, timeout=TIMEOUT)
        except dtlskit.HandshakeError as exc:
            print(f"{name}: handshake failed: {exc}", flush=True)
            return
        try:
            async for message in channel:
                await channel.send(name.encode() if message == b"who?" else message)
        finally:
            channel.close()

    tasks = set()
    while True:
        try:
            handoff = await dtlskit.handoff.receive_async(unix)
        except dtlskit.ConnectionLost:
            break
        task = asyncio.create_task(serve(handoff))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def worker_main(index: int, fd: int, certfile: str, keyfile: str, secret: bytes) -> None:
    config = dtlskit.DTLSConfiguration.server(certfile, keyfile, cookie_secret=secret)
    unix = socket.socket(fileno=fd)
    name = f"worker-{index}"
    if index == 0:
        worker_blocking(name, unix, config)
    else:
        asyncio.run(worker_async(name, unix, config))
    unix.close()


# -- main process (main.js) ----------------------------------------------------------------------


def client(index: int, port: int, config: dtlskit.DTLSConfiguration, results: dict) -> None:
    with sync.connect("127.0.0.1", port, config=config, timeout=TIMEOUT) as channel:
        channel.send(b"who?")
        worker = channel.recv(timeout=TIMEOUT).decode()
        for n in range(MESSAGES):
            message = f"client {index} message {n}".encode()
            channel.send(message)
            echoed = channel.recv(timeout=TIMEOUT)
            if echoed != message:
                raise SystemExit(f"client {index}: sent {message!r}, got {echoed!r}")
    results[index] = worker
    print(f"client {index}: served by {worker}, {MESSAGES} echoes checked", flush=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(tmp)
        secret = os.urandom(32)  # shared: a worker re-checks the cookie the main task verified
        config = dtlskit.DTLSConfiguration.server(
            pki.server_cert, pki.server_key, cookie_secret=secret
        )
        tasks = []  # task[0] = new Task('./task.js'); task[1] = ...
        for index in range(2):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            process = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    str(index),
                    str(theirs.fileno()),
                    str(pki.server_cert),
                    str(pki.server_key),
                    secret.hex(),
                ],
                pass_fds=[theirs.fileno()],
            )
            theirs.close()
            tasks.append((process, ours))
        listener = sync.listen_handoff("127.0.0.1", 0, config=config)
        port = listener.getsockname()[1]
        print(f"main: listening on 127.0.0.1:{port}, handing peers to 2 workers", flush=True)
        stop = threading.Event()

        def accept_loop() -> None:
            next_task = 0
            while not stop.is_set():
                try:
                    handoff = listener.accept(timeout=0.2)  # dtls.accept()
                except dtlskit.DTLSTimeoutError:
                    continue
                print(
                    f"main: accepted {handoff.peer_address[0]}:{handoff.peer_address[1]}, "
                    f"to worker-{next_task}",
                    flush=True,
                )
                handoff.send(tasks[next_task][1])  # Task.send(...) + newDtls.flyAway()
                next_task = (next_task + 1) % 2

        acceptor = threading.Thread(target=accept_loop)
        acceptor.start()
        client_config = dtlskit.DTLSConfiguration.client(
            cafile=pki.ca_cert, server_hostname="localhost"
        )
        results: dict[int, str] = {}
        threads = [
            threading.Thread(target=client, args=(i, port, client_config, results))
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        acceptor.join()
        listener.close()
        for process, ours in tasks:
            ours.close()  # the worker's receive() sees the end and returns
            process.wait(timeout=TIMEOUT)
        workers = sorted(set(results.values()))
        ok = len(results) == CLIENTS and workers == ["worker-0", "worker-1"]
        ok = ok and all(process.returncode == 0 for process, _ in tasks)
        if not ok:
            print(f"FAILED: results {results}", flush=True)
            return 1
        print(
            f"done: {CLIENTS} clients handshaken in 2 worker processes, "
            f"{CLIENTS * MESSAGES} echoes checked",
            flush=True,
        )
        return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        index, fd, cert, key, secret = sys.argv[2:7]
        worker_main(int(index), int(fd), cert, key, bytes.fromhex(secret))
    else:
        sys.exit(main())
