"""Scaling past one process and one machine (issue 12): dtlskit nodes with ``SO_REUSEPORT``
workers, behind nginx ``stream`` (UDP, ``hash $remote_addr consistent``), on loopback.

Run ``python benchmarks/scaling.py`` for the figures of ``docs/scaling.md``: new handshakes per
second and echoed messages per second with 1 and 2 workers and through nginx with 2 nodes of 2
workers, each with the server CPU time they cost (``/proc/PID/stat`` utime + stime of every
server process: wall-clock rates are noise on a shared machine, CPU time much less so), and the
failover time after a node is killed. ``tests/test_balancer.py`` uses the same pieces.

A node is a child process (its own session, so that killing its process group ends its
workers) running ``dtlskit.sync.serve(..., workers=N)``: it answers ``who?`` with its name and
echoes anything else. nginx runs with its own prefix, configuration, pid file and logs in a
temporary directory (``nginx -p DIR -c FILE -e LOG``, ``daemon off``) and is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dtlskit
from dtlskit import sync

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
WAIT = 20.0


def nginx_available() -> str | None:
    """None if nginx with the stream module can run here, else why not."""
    if not os.path.exists(NGINX):
        return "nginx is not installed (apt-get install nginx libnginx-mod-stream)"
    if not os.path.exists(STREAM_MODULE):
        return f"nginx's stream module is missing ({STREAM_MODULE}: libnginx-mod-stream)"
    return None


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port_on_all(hosts: Sequence[str]) -> int:
    """A port free on every one of ``hosts`` a moment ago (the nodes share one port number)."""
    for _ in range(50):
        port = free_udp_port(hosts[0])
        socks = []
        try:
            for host in hosts[1:]:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no port free on every node address")


# -- nodes ---------------------------------------------------------------------------------------


class Node:
    """A dtlskit server process (with workers) on ``host``:``port``."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        certfile: str,
        keyfile: str,
        workers: int = 2,
        address_key: str = "address_and_port",
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "node",
                name,
                host,
                str(port),
                certfile,
                keyfile,
                str(workers),
                address_key,
            ],
            stdout=subprocess.PIPE,
            stderr=None if os.environ.get("DTLSKIT_SCALING_DEBUG") else subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the workers end with it
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if line != "ready":
            self.kill()
            raise RuntimeError(f"node {name} did not start: {line!r}")

    def wait_serving(self, pki: Any) -> None:
        """Return once a handshake with the node works: its workers bind their sockets after
        the supervisor said "ready"; until then the port may answer port-unreachable."""
        config = client_config(pki, handshake_timeout=5.0)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with sync.connect(self.host, self.port, config=config, timeout=5.0):
                    return
            except (dtlskit.ConnectionRefused, dtlskit.HandshakeTimeout):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)

    def pids(self) -> list[int]:
        """The node's processes (supervisor and workers)."""
        found = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                        found.append(int(entry))
        return found

    def kill(self) -> None:
        """End the node and its workers at once (SIGKILL to its process group), as a crash."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


def node_main(argv: Sequence[str]) -> None:
    name, host, port, certfile, keyfile, workers, address_key = argv
    config = dtlskit.DTLSConfiguration.server(
        certfile,
        keyfile,
        cookie_secret=b"scaling benchmark cookie secret!",
        limits=dtlskit.Limits(address_key=address_key, max_sessions_per_address=4),
    )
    reply = name.encode()

    def handler(channel: sync.Channel) -> None:
        for message in channel:
            channel.send(reply if message == b"who?" else message)

    server = sync.serve(handler, host, int(port), config=config, workers=int(workers))
    print("ready", flush=True)
    server.serve_forever()


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes so far (ended ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


# -- nginx ---------------------------------------------------------------------------------------

NGINX_CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 4096; }}
stream {{
    upstream dtls_nodes {{
        hash $remote_addr consistent;
{servers}
    }}
    server {{
        listen {listen} udp;
        proxy_pass dtls_nodes;
        proxy_timeout 60s;
    }}
}}
"""


class Nginx:
    """nginx ``stream`` balancing UDP over ``nodes``, listening on ``listen`` (host:port)."""

    def __init__(self, listen: str, nodes: Sequence[tuple[str, int]], directory: Path) -> None:
        self.listen = listen
        self.dir = directory
        servers = "\n".join(
            f"        server {host}:{port} max_fails=1 fail_timeout=30s;" for host, port in nodes
        )
        conf = directory / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(module=STREAM_MODULE, dir=directory, servers=servers, listen=listen)
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pid_file = directory / "nginx.pid"
        deadline = time.monotonic() + WAIT
        while not pid_file.exists():  # written once the listening sockets are open
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                raise RuntimeError(f"nginx did not start: {err}")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        found = [self.process.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:
                        found.append(int(entry))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM to the master, by PID: fast shutdown
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text() if path.exists() else ""


@contextlib.contextmanager
def deployment(
    pki: Any,
    nodes: int = 2,
    workers: int = 2,
    with_nginx: bool = True,
    hosts: Sequence[str] | None = None,
) -> Iterator[tuple[tuple[str, int], list[Node], Nginx | None]]:
    """Nodes on 127.0.0.2, 127.0.0.3, ... (or ``hosts``) and (optionally) nginx on 127.0.0.1
    in front. Yields (the address clients use, the nodes, nginx)."""
    if hosts is None:
        hosts = [f"127.0.0.{2 + i}" for i in range(nodes)]
    port = free_udp_port_on_all(hosts)
    started: list[Node] = []
    balancer: Nginx | None = None
    with tempfile.TemporaryDirectory(prefix="dtlskit-nginx-") as tmp:
        try:
            for i, host in enumerate(hosts):
                started.append(
                    Node(
                        f"node-{chr(65 + i)}",
                        host,
                        port,
                        str(pki.server_cert),
                        str(pki.server_key),
                        workers,
                    )
                )
            for node in started:
                node.wait_serving(pki)
            if with_nginx:
                front = ("127.0.0.1", free_udp_port("127.0.0.1"))
                balancer = Nginx(f"{front[0]}:{front[1]}", [(h, port) for h in hosts], Path(tmp))
                yield front, started, balancer
            else:
                yield (hosts[0], port), started, None
        finally:
            if balancer is not None:
                balancer.stop()
            for node in started:
                node.stop()


def client_config(pki: Any, **changes: Any) -> dtlskit.DTLSConfiguration:
    config = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", handshake_timeout=WAIT
    )
    return config.replace(**changes) if changes else config


def who(
    front: tuple[str, int],
    config: dtlskit.DTLSConfiguration,
    source: str,
    session: dtlskit.Session | None = None,
) -> tuple[str, bool, dtlskit.Session | None]:
    """One session from ``source``: (the node that served it, resumed?, its session)."""
    with sync.connect(
        front[0], front[1], config=config, local_addr=(source, 0), timeout=WAIT, session=session
    ) as channel:
        channel.send(b"who?")
        name = channel.recv(timeout=WAIT).decode()
        for n in range(3):
            channel.send(b"m%d" % n)
            if channel.recv(timeout=WAIT) != b"m%d" % n:
                raise RuntimeError("echo mismatch")
            channel.send(b"who?")
            if channel.recv(timeout=WAIT).decode() != name:
                raise RuntimeError("a session moved between nodes")
        return name, channel.session_reused, channel.session


# -- measurements --------------------------------------------------------------------------------


def _load(
    front: tuple[str, int],
    config: dtlskit.DTLSConfiguration,
    clients: int,
    handshakes: int,
    messages: int,
) -> tuple[int, int, float]:
    """``clients`` threads from 127.0.0.10.. each doing ``handshakes`` handshakes and
    ``messages`` echoes per session. Returns (handshakes, messages, wall seconds)."""
    done = [0, 0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(index: int) -> None:
        source = f"127.0.0.{10 + index % 200}"
        try:
            for _ in range(handshakes):
                with sync.connect(
                    front[0], front[1], config=config, local_addr=(source, 0), timeout=WAIT
                ) as channel:
                    for _ in range(messages):
                        channel.send(b"x" * 64)
                        channel.recv(timeout=WAIT)
                with lock:
                    done[0] += 1
                    done[1] += messages
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")
    return done[0], done[1], elapsed


def measure(
    pki: Any,
    label: str,
    nodes: int,
    workers: int,
    with_nginx: bool,
    clients: int,
    handshakes: int,
    messages: int,
) -> dict[str, Any]:
    config = client_config(pki)
    with deployment(pki, nodes, workers, with_nginx) as (front, started, balancer):
        server_pids = [pid for node in started for pid in node.pids()]
        proxy_pids = balancer.pids() if balancer is not None else []
        before, proxy_before = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
        hs, _, hs_wall = _load(front, config, clients, handshakes, 0)
        middle, proxy_middle = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
        _, msgs, msg_wall = _load(front, config, clients, 1, messages)
        after, proxy_after = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
    return {
        "setup": label,
        "handshakes": hs,
        "handshakes_per_s_wall": round(hs / hs_wall, 1),
        "server_cpu_ms_per_handshake": round(1000 * (middle - before) / hs, 2),
        "nginx_cpu_ms_per_handshake": round(1000 * (proxy_middle - proxy_before) / hs, 3)
        if balancer is not None
        else None,
        "messages": msgs,
        "echoes_per_s_wall": round(msgs / msg_wall, 1),
        "server_cpu_us_per_echo": round(1e6 * (after - middle) / msgs, 1),
        "nginx_cpu_us_per_echo": round(1e6 * (proxy_after - proxy_middle) / msgs, 1)
        if balancer is not None
        else None,
    }


def measure_c(
    pki: Any, label: str, nodes: int, workers: int, with_nginx: bool, seconds: float
) -> dict[str, Any]:
    """The same figures with the C load generator of ``benchmarks/cload.c`` (a client on the
    system libssl, each session from its own 127.x.y.z address) as the load: the Python
    clients of :func:`measure` saturate before one worker does. The generator aims at
    127.0.0.1, so a node measured without nginx listens there."""
    from benchmarks.cload import CLoad, build  # run as ``python -m benchmarks.scaling``

    binary, how = build()
    if binary is None:
        return {"setup": label, "skipped": how}
    load = CLoad(binary, how)
    load._pin = False  # servers, nginx and the load share the machine's cores
    hosts = ["127.0.0.1"] if not with_nginx else None
    with deployment(pki, nodes, workers, with_nginx, hosts=hosts) as (front, started, balancer):
        server_pids = [pid for node in started for pid in node.pids()]
        proxy_pids = balancer.pids() if balancer is not None else []
        cpu0, proxy0 = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
        hs = load.handshakes(port=front[1], server_pid=0, concurrency=16, seconds=seconds)
        cpu1, proxy1 = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
        echo = load.echo(
            protocol="dtls",
            port=front[1],
            server_pid=0,
            sessions=16,
            window=4,
            size=64,
            warmup=1.0,
            seconds=seconds,
            loss_timeout=2.0,
        )
        cpu2, proxy2 = cpu_seconds(server_pids), cpu_seconds(proxy_pids)
    done, replies = hs["completed"], echo["replies"]
    return {
        "setup": label,
        "load": "C (cload)",
        "handshakes_per_s": hs["per_s"],
        "handshakes_failed": hs["failed"],
        "server_cpu_ms_per_handshake": round(1000 * (cpu1 - cpu0) / max(done, 1), 2),
        "nginx_cpu_ms_per_handshake": round(1000 * (proxy1 - proxy0) / max(done, 1), 3)
        if balancer is not None
        else None,
        "echoes_per_s": echo["msgs_per_s"],
        "echo_lost": echo["lost"],
        "rtt_p50_ms": echo["rtt_p50_ms"],
        "server_cpu_us_per_echo": round(1e6 * (cpu2 - cpu1) / max(replies, 1), 1),
        "nginx_cpu_us_per_echo": round(1e6 * (proxy2 - proxy1) / max(replies, 1), 1)
        if balancer is not None
        else None,
    }


def measure_failover(pki: Any, lost_flights: int | None = 2) -> dict[str, Any]:
    """Kill the node serving one source address; time the next handshake from it."""
    config = client_config(pki, new_port_after_lost_flights=lost_flights)
    with deployment(pki, 2, 2, True) as (front, started, _):
        source = "127.0.0.10"
        first, _, _ = who(front, config, source)
        victim = next(node for node in started if node.name == first)
        victim.kill()
        start = time.monotonic()
        second, _, _ = who(front, config, source)
        elapsed = time.monotonic() - start
    return {
        "failover_seconds": round(elapsed, 2),
        "before": first,
        "after": second,
        "new_port_after_lost_flights": lost_flights,
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--handshakes", type=int, default=15, help="per client")
    parser.add_argument("--messages", type=int, default=300, help="per client")
    parser.add_argument("--runs", type=int, default=3, help="failover measurements per setting")
    parser.add_argument("--seconds", type=float, default=5.0, help="per C-load job")
    parser.add_argument("--skip-python-load", action="store_true")
    args = parser.parse_args(argv)
    why = nginx_available()
    if why is not None:
        print(why, file=sys.stderr)
        return 1
    from dtlskit.certs import create_pki

    with tempfile.TemporaryDirectory() as tmp:
        pki = create_pki(Path(tmp))
        setups = [
            ("1 node, 1 worker", 1, 1, False),
            ("1 node, 2 workers", 1, 2, False),
            ("nginx, 2 nodes x 2 workers", 2, 2, True),
        ]
        for label, nodes, workers, with_nginx in setups:
            row = measure_c(pki, label, nodes, workers, with_nginx, args.seconds)
            print(json.dumps(row), flush=True)
        rows = (
            []
            if args.skip_python_load
            else [
                measure(
                    pki,
                    "1 node, 1 worker",
                    1,
                    1,
                    False,
                    args.clients,
                    args.handshakes,
                    args.messages,
                ),
                measure(
                    pki,
                    "1 node, 2 workers",
                    1,
                    2,
                    False,
                    args.clients,
                    args.handshakes,
                    args.messages,
                ),
                measure(
                    pki,
                    "nginx, 2 nodes x 2 workers",
                    2,
                    2,
                    True,
                    args.clients,
                    args.handshakes,
                    args.messages,
                ),
            ]
        )
        for row in rows:
            print(json.dumps(row), flush=True)
        for lost in (2, None):
            times = [measure_failover(pki, lost)["failover_seconds"] for _ in range(args.runs)]
            print(
                json.dumps(
                    {
                        "new_port_after_lost_flights": lost,
                        "failover_seconds": times,
                        "median": sorted(times)[len(times) // 2],
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        node_main(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
