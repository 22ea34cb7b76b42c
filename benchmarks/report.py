"""The benchmark's outputs: the ratios, the table on stdout, the JSON document, the bar chart.

The JSON document (``--json``) is the source of everything printed::

    {
      "meta":     {"seconds": ..., "sessions": ..., "quick": ..., "python": ..., ...},
      "ceilings": {"in_memory": {<figures of benchmarks.engine.measure>},
                   "plain_udp": {"asyncio": {"64": {echo figures}, "1024": {...}}, ...}},
      "servers":  {"asyncio": {"handshakes": {...}, "echo": {"64": {...}, "1024": {...}},
                               "rss": {...}, "statistics": {...}}, ...},
      "ratios":   [{"server", "measure", "value", "ceiling", "ratio",
                    "value_path", "ceiling_path"}, ...],
      "skipped":  {"uvloop": "why"},
      "errors":   {"sync": "what failed"},
      "notes":    ["..."]
    }

Each ratio names the places of its value and ceiling in the document (``*_path``, a list of
keys), and ``ratio == value / ceiling`` exactly: nothing is computed anywhere else.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ECHO_SIZES", "add_ratios", "can_plot", "lookup", "plot", "table", "write_json"]

ECHO_SIZES = (64, 1024)

Document = dict[str, Any]


def lookup(document: Document, path: Sequence[str]) -> Any:
    """The value at ``path`` (a list of keys) in the document."""
    node: Any = document
    for key in path:
        node = node[key]
    return node


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def add_ratios(document: Document) -> None:
    """Fill ``document["ratios"]`` from the figures already in it (skipping absent ones)."""
    ratios: list[dict[str, Any]] = []

    def add(server: str, measure: str, value_path: list[str], ceiling_path: list[str]) -> None:
        try:
            value = float(lookup(document, value_path))
            ceiling = float(lookup(document, ceiling_path))
        except (KeyError, TypeError):
            return  # not measured (skipped or failed): no ratio
        ratios.append(
            {
                "server": server,
                "measure": measure,
                "value": value,
                "ceiling": ceiling,
                "ratio": value / ceiling if ceiling else float("nan"),
                "value_path": value_path,
                "ceiling_path": ceiling_path,
            }
        )

    for server in document["servers"]:
        add(
            server,
            "handshakes/s",
            ["servers", server, "handshakes", "per_s"],
            ["ceilings", "in_memory", "raw_pyopenssl_handshakes_per_s"],
        )
        for size in ECHO_SIZES:
            key = str(size)
            for field, label in (
                ("msgs_per_s", "msgs/s"),
                ("rtt_p50_ms", "RTT p50 ms"),
                ("rtt_p99_ms", "RTT p99 ms"),
            ):
                add(
                    server,
                    f"echo {_size_label(size)} {label}",
                    ["servers", server, "echo", key, field],
                    ["ceilings", "plain_udp", server, key, field],
                )
    document["ratios"] = ratios


SATURATED = 0.9
"""A process using this share of a core or more is marked ``*``: it, not the server, may have
set the pace (a figure measured with a saturated load generator is a lower bound)."""
CONTENDED = 0.25
"""Other processes using this share of a core or more are marked ``!``: the figure is noisy."""


def _percent(share: Any, mark_at: float | None = None, mark: str = "*") -> str:
    if not isinstance(share, int | float):
        return "-"
    text = f"{100 * share:.0f}%"
    return text + mark if mark_at is not None and share >= mark_at else text + " "


def _shares(figures: dict[str, Any]) -> str:
    """The server, load and other CPU columns of one measurement."""
    return (
        f"{_percent(figures.get('server_cpu_share'), SATURATED):>9}"
        f"{_percent(figures.get('load_cpu_share'), SATURATED):>10}"
        f"{_percent(figures.get('other_cpu_share'), CONTENDED, '!'):>7}"
    )


def _cost(figures: dict[str, Any]) -> str:
    """Server CPU time per operation: microseconds per echoed message, ms per handshake."""
    if "server_cpu_us_per_op" in figures:
        return f"{figures['server_cpu_us_per_op']:.0f} us"
    if "server_cpu_ms_per_op" in figures:
        return f"{figures['server_cpu_ms_per_op']:.2f} ms"
    return "-"


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(document: Document) -> str:
    """The human-readable report."""
    meta = document["meta"]
    lines = [
        f"dtlskit benchmark: loopback, {meta['seconds']:g} s per measurement, "
        f"{meta['cpus']} CPUs, Python {meta['python']}, pyOpenSSL {meta['pyopenssl']}, "
        f"{meta['openssl']}",
        f"load: a separate process on the default asyncio loop; handshakes {meta['concurrency']}"
        f" at a time; echo {meta['clients']} clients x {meta['window']} messages in flight; "
        "every client from its own loopback address (127.1.x.y); default server Limits",
        "CPU columns: share of one core used by the server, the load generator and all other "
        "processes during the measurement; srv/op: server CPU time per echoed message or per "
        "handshake; drops: datagrams the kernel dropped for want of socket receive-buffer room; "
        f"* = {100 * SATURATED:.0f}% of a core or more (that process may have set the pace), "
        f"! = other processes took {100 * CONTENDED:.0f}% or more (a noisy figure)",
        "",
        "Ceilings measured in this run",
    ]
    memory = document["ceilings"].get("in_memory")
    if memory:
        lines.append(
            f"  in-memory raw pyOpenSSL, client and server on one core: "
            f"{_number(memory['raw_pyopenssl_handshakes_per_s'])} handshakes/s, "
            f"{_number(memory['raw_pyopenssl_records_per_s'])} 64-byte records/s "
            "(other processes meanwhile: "
            f"{_percent(memory.get('other_cpu_share'), CONTENDED, '!').strip()} of a core)"
        )
        lines.append(
            f"  in-memory dtlskit engine (cookie exchange, re-packing, events): "
            f"{_number(memory['dtlskit_engine_handshakes_per_s'])} handshakes/s "
            f"({memory['handshake_ratio']:.2f} of raw), "
            f"{_number(memory['dtlskit_engine_records_per_s'])} records/s "
            f"({memory['record_ratio']:.2f} of raw)"
        )
    plain = document["ceilings"].get("plain_udp", {})
    if plain:
        lines.append("  plain UDP echo, same server loop and same load generator:")
        lines.append(
            f"    {'server':<9}{'size':>7}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'lost':>7}{'drops':>7}{'srv CPU':>9}{'load CPU':>10}{'other':>7}{'srv/msg':>10}"
        )
        for server, sizes in plain.items():
            for key, echo in sizes.items():
                lines.append(
                    f"    {server:<9}{_size_label(int(key)):>7}{_number(echo['msgs_per_s']):>10}"
                    f"{echo['rtt_p50_ms']:>9.2f}{echo['rtt_p99_ms']:>9.2f}{echo['lost']:>7}"
                    f"{echo.get('socket_drops', '-')!s:>7}{_shares(echo)}{_cost(echo):>10}"
                )
    lines += [
        "",
        "dtlskit servers: ratio = value / ceiling (handshakes: in-memory raw pyOpenSSL; echo: "
        "plain UDP on the same loop; for RTT, lower is better)",
        f"  {'server':<9}{'measure':<22}{'value':>10}{'ceiling':>10}{'ratio':>8}"
        f"{'lost/failed':>12}{'drops':>7}{'srv CPU':>9}{'load CPU':>10}{'other':>7}"
        f"{'srv/op':>10}",
    ]
    for entry in document["ratios"]:
        source = lookup(document, entry["value_path"][:-1])
        line = (
            f"  {entry['server']:<9}{entry['measure']:<22}{_number(entry['value']):>10}"
            f"{_number(entry['ceiling']):>10}{entry['ratio']:>8.2f}"
        )
        if "RTT" not in entry["measure"]:  # RTT rows share the msgs/s row's measurement
            handshakes = entry["measure"].startswith("handshakes")
            missing = source.get("failed" if handshakes else "lost", 0)
            drops = source.get("server_socket_drops" if handshakes else "socket_drops", "-")
            line += f"{missing!s:>12}{drops!s:>7}{_shares(source)}{_cost(source):>10}"
        lines.append(line)
    for server, figures in document["servers"].items():
        rss = figures.get("rss")
        if rss:
            lines.append(
                f"  {server:<9}{'RSS KiB/session':<22}{rss['kib_per_session']:>10.1f}"
                f"{'-':>10}{'-':>8}{rss['failed']!s:>12}"
                f"{'':>7}  ({rss['established']} sessions: {rss['before_kib']} -> "
                f"{rss['after_kib']} KiB)"
            )
    for server, figures in document["servers"].items():
        drops = figures.get("statistics", {}).get("drops")
        if drops:
            lines.append(f"  {server:<9}server drops by reason: {drops}")
    for name, why in document.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    for name, what in document.get("errors", {}).items():
        lines.append(f"FAILED {name}: {what}")
    for note in document.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def write_json(document: Document, path: str | Path) -> None:
    """Write the document as indented JSON."""
    Path(path).write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def can_plot() -> bool:
    """Whether matplotlib is installed (it is optional)."""
    return importlib.util.find_spec("matplotlib") is not None


def plot(document: Document, path: str | Path) -> None:
    """A horizontal bar chart of every ratio, to ``path`` (PNG). Needs matplotlib."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    entries = document["ratios"]
    labels = [f"{e['server']}: {e['measure']}" for e in entries]
    values = [e["ratio"] for e in entries]
    colours = [
        "tab:red" if "RTT" in m else "tab:blue" if "msgs" in m else "tab:green"
        for m in (e["measure"] for e in entries)
    ]
    figure, axes = pyplot.subplots(figsize=(9, 0.32 * len(entries) + 1.5))
    axes.barh(range(len(entries)), values, color=colours)
    axes.set_yticks(range(len(entries)), labels)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    for index, value in enumerate(values):
        axes.annotate(f" {value:.2f}", (value, index), va="center", fontsize=8)
    axes.set_xlabel("value / ceiling of the same run (for RTT, lower is better)")
    axes.set_title("dtlskit on loopback: ratios to ceilings")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
