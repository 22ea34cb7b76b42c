"""The benchmark's outputs: ratios, targets, the one-line summary, the table, JSON and the plot.

The JSON document (``--json``) is the source of everything printed::

    {
      "meta":     {"seconds", "sessions", "quick", "in_flight", "load_generator", ...},
      "rows":     {"udp-uvloop": {"role": "ceiling", "echo": {"64": {...}, "1024": {...}}},
                   "pyopenssl-floor": {"role": "floor", "echo": ..., "handshakes": {...},
                                       "memory": {...}},
                   "trio": {"role": "peer", ...},
                   "dtlskit-uvloop-iterator-accel-off": {"role": "dtlskit", "accelerator":
                                                         "python", ...}, ...},
      "ceilings": {"asyncio": {"row": "udp-asyncio-protocol", "why": "..."}, "uvloop": ..., ...},
      "newcomer": {"delivered", "sent", "counted_in_statistics", "uncounted", ...},
      "ratios":   [{"row", "measure", "value", "reference", "reference_row", "ratio",
                    "better", "target", "meets", "value_path", "reference_path"}, ...],
      "memory":   [{"row", "kib_per_session", "floor_kib_per_session", "adds_kib", "target"}],
      "targets":  [{"figure", "value", "target", "meets"}, ...],
      "summary":  "one line a newcomer understands",
      "skipped":  {"trio": "why"}, "errors": {"row": "what failed"}, "notes": ["..."]
    }

Each ratio names the places of its value and reference in the document (``*_path``, a list of
keys), and ``ratio == value / reference`` exactly: nothing is computed anywhere else.
``better`` says which way is good (``"lower"`` for CPU time and round trips, ``"higher"`` for
messages per second); ``target`` is the issue 14 figure to reach, where it set one.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ECHO_SIZES",
    "add_ratios",
    "can_plot",
    "lookup",
    "plot",
    "row_label",
    "table",
    "write_json",
]

ECHO_SIZES = (64, 1024)

Document = dict[str, Any]

_PLAIN_UDP = {
    "uvloop": ("udp-uvloop",),
    "asyncio": ("udp-asyncio-protocol", "udp-asyncio-drain"),
    "sync": ("udp-blocking",),
}
"""dtlskit's loop -> its plain UDP echo rows, the reference first. The reference is the ceiling
its target is measured against: on the default asyncio loop that is issue 14's reference,
asyncio's ``DatagramProtocol`` echo (``udp-asyncio-protocol``), not the cheaper reader draining 64
datagrams per wake-up (``udp-asyncio-drain``), whose ratio is printed beside it for information.
A later row stands in only when the reference was not measured."""

_MEMORY_TARGET_KIB = {"asyncio": 3.0, "sync": 8.0}
_HIBERNATED_CPU_TARGET = 1.2  # issue 15: echo on hibernated sessions vs the SSL-object path
_MANY_SESSIONS_KIB_TARGET = 8.0  # issue 15: RSS per established idle session
_PYTHON_CPU_TARGET = {"uvloop": 2.5, "sync": 2.5, "asyncio": 1.0}
_NATIVE_CPU_TARGET = {"uvloop": 1.0, "sync": 1.0}


def lookup(document: Document, path: Sequence[str]) -> Any:
    """The value at ``path`` (a list of keys) in the document."""
    node: Any = document
    for key in path:
        node = node[key]
    return node


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def row_label(key: str, kind: str, loop: str, style: str, accelerator: str | None) -> str:
    """How a row is named in the table."""
    names = {
        "udp": f"plain UDP, {loop}, DatagramProtocol",
        "udp-drain": f"plain UDP, {loop}, reader x64",
        "udp-block": "plain UDP, blocking recvfrom",
        "pyopenssl": "minimal pyOpenSSL (floor)",
        "trio": "trio DTLSEndpoint",
        "mbedtls": "python-mbedtls",
    }
    if kind in names:
        return names[kind]
    path = f", {accelerator}" if accelerator else ""
    hibernated = ", hibernated" if key.endswith("-hibernated") else ""
    return f"dtlskit {'blocking' if loop == 'sync' else loop}, {style}{path}{hibernated}"


def _ceiling_row(document: Document, loop: str) -> str | None:
    """The plain UDP row that is ``loop``'s ceiling: the first of ``_PLAIN_UDP[loop]`` measured."""
    for key in _PLAIN_UDP.get(loop, ()):
        try:
            cost = float(document["rows"][key]["echo"]["64"]["server_cpu_us_per_op"])
        except (KeyError, TypeError, ValueError):
            continue
        if cost > 0:
            return key
    return None


def add_ratios(document: Document) -> None:
    """Fill ``ratios``, ``ceilings``, ``memory``, ``targets`` and ``summary`` from the rows."""
    ratios: list[dict[str, Any]] = []
    rows = document["rows"]

    def add(
        row: str,
        measure: str,
        value_path: list[str],
        reference_path: list[str],
        better: str,
        target: float | None = None,
    ) -> dict[str, Any] | None:
        try:
            value = float(lookup(document, value_path))
            reference = float(lookup(document, reference_path))
        except (KeyError, TypeError):
            return None  # not measured (skipped or failed): no ratio
        if not value > 0 or not reference > 0:
            return None
        ratio = value / reference
        entry = {
            "row": row,
            "measure": measure,
            "value": value,
            "reference": reference,
            "reference_row": reference_path[1],
            "ratio": ratio,
            "better": better,
            "target": target,
            "meets": None
            if target is None
            else (ratio <= target if better == "lower" else ratio >= target),
            "value_path": value_path,
            "reference_path": reference_path,
        }
        ratios.append(entry)
        return entry

    ceilings: dict[str, Any] = {}
    for loop in _PLAIN_UDP:
        chosen = _ceiling_row(document, loop)
        if chosen is None:
            continue
        ceilings[loop] = {"row": chosen}
        if loop == "asyncio":
            reference = _PLAIN_UDP[loop][0]
            others = [k for k in _PLAIN_UDP[loop] if k != chosen and k in rows]
            why = (
                f"{chosen} is issue 14's reference for plain-UDP echo on the default loop "
                "(asyncio's DatagramProtocol)"
                if chosen == reference
                else f"{chosen} stands in: {reference} was not measured"
            )
            if others:
                why += "; the ratio to " + " and ".join(others) + " is shown for information"
            ceilings[loop]["why"] = why
    document["ceilings"] = ceilings

    def echo(row: str, size: int, field: str) -> list[str]:
        return ["rows", row, "echo", str(size), field]

    for key, figures in rows.items():
        if figures.get("role") != "dtlskit":
            continue
        loop = figures["loop"]
        native = figures.get("accelerator", "python") != "python"
        udp = ceilings.get(loop, {}).get("row")
        if udp is not None:
            targets = _NATIVE_CPU_TARGET if native else _PYTHON_CPU_TARGET
            for size in ECHO_SIZES:
                add(
                    key,
                    f"CPU/msg {_size_label(size)} vs plain UDP",
                    echo(key, size, "server_cpu_us_per_op"),
                    echo(udp, size, "server_cpu_us_per_op"),
                    "lower",
                    targets.get(loop) if size == 64 else None,
                )
            for other in _PLAIN_UDP[loop]:
                if other != udp:  # the other candidate, for information (no target)
                    add(
                        key,
                        f"CPU/msg 64 B vs {other}",
                        echo(key, 64, "server_cpu_us_per_op"),
                        echo(other, 64, "server_cpu_us_per_op"),
                        "lower",
                    )
            add(
                key,
                "msgs/s 64 B vs plain UDP",
                echo(key, 64, "msgs_per_s"),
                echo(udp, 64, "msgs_per_s"),
                "higher",
            )
            add(
                key,
                "p99 RTT 64 B vs plain UDP",
                echo(key, 64, "rtt_p99_ms"),
                echo(udp, 64, "rtt_p99_ms"),
                "lower",
                2.0,
            )
        add(
            key,
            "CPU/msg 64 B vs pyOpenSSL floor",
            echo(key, 64, "server_cpu_us_per_op"),
            echo("pyopenssl-floor", 64, "server_cpu_us_per_op"),
            "lower",
        )
        add(
            key,
            "CPU/msg 64 B vs trio",
            echo(key, 64, "server_cpu_us_per_op"),
            echo("trio", 64, "server_cpu_us_per_op"),
            "lower",
            None if native else 0.2,  # "at least 5x trio's DTLSEndpoint"
        )
        add(
            key,
            "CPU/msg 64 B vs python-mbedtls",
            echo(key, 64, "server_cpu_us_per_op"),
            echo("mbedtls", 64, "server_cpu_us_per_op"),
            "lower",
            1.0 if native else None,  # accelerated: "at least as fast as python-mbedtls"
        )
        add(
            key,
            "CPU/handshake vs pyOpenSSL floor",
            ["rows", key, "handshakes", "server_cpu_ms_per_op"],
            ["rows", "pyopenssl-floor", "handshakes", "server_cpu_ms_per_op"],
            "lower",
            1.3,
        )
    # Issue 15: hibernated sessions against the same server keeping OpenSSL's objects.
    for key, figures in rows.items():
        if figures.get("role") == "hibernated":
            base = key.removesuffix("-hibernated")
            for size in ECHO_SIZES:
                add(
                    key,
                    f"CPU/msg {_size_label(size)} vs SSL objects",
                    echo(key, size, "server_cpu_us_per_op"),
                    echo(base, size, "server_cpu_us_per_op"),
                    "lower",
                    _HIBERNATED_CPU_TARGET if size == 64 else None,
                )
    document["ratios"] = ratios
    document["memory"] = _memory(document)
    document["targets"] = _targets(document)
    document["summary"] = summary(document)


def _memory(document: Document) -> list[dict[str, Any]]:
    rows = document["rows"]
    floor = rows.get("pyopenssl-floor", {}).get("memory")
    entries = []
    for key, figures in rows.items():
        memory = figures.get("memory")
        if figures.get("role") != "dtlskit" or not memory:
            continue
        entry: dict[str, Any] = {
            "row": key,
            "sessions": memory["established"],
            "kib_per_session": memory["kib_per_session"],
            "floor_kib_per_session": floor["kib_per_session"] if floor else None,
            "adds_kib": memory["kib_per_session"] - floor["kib_per_session"] if floor else None,
            "target": _MEMORY_TARGET_KIB.get(figures["loop"]),
        }
        entry["meets"] = (
            None
            if entry["adds_kib"] is None or entry["target"] is None
            else entry["adds_kib"] <= entry["target"]
        )
        entries.append(entry)
    return entries


def _targets(document: Document) -> list[dict[str, Any]]:
    """Issue 14's figures to reach, each with what this run measured."""
    targets = []
    for entry in document["ratios"]:
        if entry["target"] is not None:
            label = document["rows"][entry["row"]].get("label", entry["row"])
            sign = "<=" if entry["better"] == "lower" else ">="
            targets.append(
                {
                    "figure": f"{label}: {entry['measure']}",
                    "value": entry["ratio"],
                    "unit": "x",
                    "target": f"{sign} {entry['target']:g}x",
                    "meets": entry["meets"],
                }
            )
    for entry in document["memory"]:
        if entry["adds_kib"] is not None and entry["target"] is not None:
            label = document["rows"][entry["row"]].get("label", entry["row"])
            targets.append(
                {
                    "figure": f"{label}: KiB/session beyond OpenSSL's SSL object",
                    "value": entry["adds_kib"],
                    "unit": "KiB",
                    "target": f"<= {entry['target']:g} KiB",
                    "meets": entry["meets"],
                }
            )
    many = document.get("many_sessions")
    if many:
        targets.append(
            {
                "figure": f"many sessions: KiB per idle session at {many['sessions_held']:,}",
                "value": many["kib_per_session_idle"],
                "unit": " KiB",
                "target": f"<= {_MANY_SESSIONS_KIB_TARGET:g} KiB",
                "meets": many["kib_per_session_idle"] <= _MANY_SESSIONS_KIB_TARGET,
            }
        )
        targets.append(
            {
                "figure": "many sessions: echo round messages lost",
                "value": many["echo"]["lost"],
                "unit": "",
                "target": "0",
                "meets": many["echo"]["lost"] == 0,
            }
        )
    newcomer = document.get("newcomer")
    if newcomer:
        targets.append(
            {
                "figure": "newcomer's program: delivered",
                "value": 100 * newcomer["delivered_share"],
                "unit": "%",
                "target": ">= 99%",
                "meets": newcomer["delivered_share"] >= 0.99,
            }
        )
        targets.append(
            {
                "figure": "newcomer's program: messages lost with no count anywhere",
                "value": newcomer["uncounted"],
                "unit": "",
                "target": "0",
                "meets": newcomer["uncounted"] == 0,
            }
        )
    return targets


def _pick_dtlskit(document: Document) -> str | None:
    """The row the summary speaks of: uvloop, else asyncio, else blocking; accelerator on."""
    rows = document["rows"]
    for loop in ("uvloop", "asyncio", "sync"):
        for switch in ("on", "off"):
            for key, figures in rows.items():
                if (
                    figures.get("role") == "dtlskit"
                    and figures["loop"] == loop
                    and figures.get("accelerator_switch") == switch
                    and figures["echo"].get("64")
                ):
                    return str(key)
    return None


def summary(document: Document) -> str:
    """One line a newcomer understands."""
    key = _pick_dtlskit(document)
    if key is None:
        return "no dtlskit figure was measured"
    figures = document["rows"][key]
    ratios = {e["measure"]: e for e in document["ratios"] if e["row"] == key}
    cost = figures["echo"]["64"]["server_cpu_us_per_op"]
    parts = [f"{figures['label']} spends {cost:.0f} us of server CPU per 64-byte message"]
    plain = ratios.get("CPU/msg 64 B vs plain UDP")
    if plain:
        parts[0] += (
            f", {cost - plain['reference']:.0f} us more than plain UDP echo on the same loop "
            f"({plain['ratio']:.1f}x)"
        )
    trio = ratios.get("CPU/msg 64 B vs trio")
    if trio:
        parts.append(f"{1 / trio['ratio']:.1f}x cheaper than trio")
    handshake = ratios.get("CPU/handshake vs pyOpenSSL floor")
    if handshake:
        parts.append(f"a new handshake costs {handshake['ratio']:.2f}x a minimal pyOpenSSL server")
    for entry in document["memory"]:
        if entry["adds_kib"] is not None and document["rows"][entry["row"]]["loop"] == "asyncio":
            parts.append(
                f"each session adds {entry['adds_kib']:.1f} KiB beyond OpenSSL's "
                f"{entry['floor_kib_per_session']:.0f} KiB"
            )
            break
    newcomer = document.get("newcomer")
    if newcomer:
        parts.append(
            f"the newcomer's program delivered {newcomer['delivered']:,} of "
            f"{newcomer['sent']:,} messages, {newcomer['uncounted']:,} lost with no count"
        )
    return "; ".join(parts) + "."


# -- the table ---------------------------------------------------------------------------------

SATURATED = 0.9
"""A process using this share of a core or more is marked ``*``: it may have set the pace."""
CONTENDED = 0.25
"""Other processes using this share of a core or more are marked ``!``: the figure is noisy."""


def _percent(share: Any, mark_at: float | None = None, mark: str = "*") -> str:
    if not isinstance(share, int | float):
        return "-"
    text = f"{100 * share:.0f}%"
    return text + mark if mark_at is not None and share >= mark_at else text + " "


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _row_lines(document: Document) -> list[str]:
    header = (
        f"  {'server':<40}{'size':>6}{'us/msg':>8}{'msgs/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'lost':>6}{'srv':>6}{'load':>6}{'other':>7}"
    )
    lines = [header]
    for key, figures in document["rows"].items():
        label = figures.get("label", key)
        for size_key, echo in figures.get("echo", {}).items():
            lines.append(
                f"  {label[:39]:<40}{_size_label(int(size_key)):>6}"
                f"{_number(echo.get('server_cpu_us_per_op')):>8}"
                f"{_number(echo.get('msgs_per_s')):>9}{_number(echo.get('rtt_p50_ms')):>8}"
                f"{_number(echo.get('rtt_p99_ms')):>8}{echo.get('lost', '-')!s:>6}"
                f"{_percent(echo.get('server_cpu_share'), SATURATED):>6}"
                f"{_percent(echo.get('load_cpu_share'), SATURATED):>6}"
                f"{_percent(echo.get('other_cpu_share'), CONTENDED, '!'):>7}"
            )
            label = ""
    lines += [
        "",
        f"  {'server':<40}{'ms/handshake':>13}{'hs/s':>8}{'failed':>8}{'srv':>6}"
        f"{'load':>6}{'other':>7}{'KiB/session':>13}",
    ]
    for key, figures in document["rows"].items():
        handshakes, memory = figures.get("handshakes"), figures.get("memory")
        if not handshakes and not memory:
            continue
        handshakes = handshakes or {}
        kib = f"{memory['kib_per_session']:.1f}" if memory else "-"
        lines.append(
            f"  {figures.get('label', key)[:39]:<40}"
            f"{_number(handshakes.get('server_cpu_ms_per_op')):>13}"
            f"{_number(handshakes.get('per_s')):>8}{handshakes.get('failed', '-')!s:>8}"
            f"{_percent(handshakes.get('server_cpu_share'), SATURATED):>6}"
            f"{_percent(handshakes.get('load_cpu_share'), SATURATED):>6}"
            f"{_percent(handshakes.get('other_cpu_share'), CONTENDED, '!'):>7}{kib:>13}"
        )
    return lines


def table(document: Document) -> str:
    """The human-readable report."""
    meta = document["meta"]
    lines = [
        f"dtlskit benchmark: loopback, {meta['seconds']:g} s per figure, {meta['cpus']} CPUs, "
        f"Python {meta['python']}, pyOpenSSL {meta['pyopenssl']}, {meta['openssl']}",
        f"dtlskit accelerator installed: {meta.get('accelerator_installed', 'python')}; "
        f"load generator: {meta.get('load_generator_description', '?')}",
        f"servers pinned to CPU {meta['server_cpu']}, the load to another; echo: "
        f"{meta['in_flight']} messages in flight ({meta['echo_sessions']} sessions x "
        f"{meta['window']}); handshakes: {meta['concurrency']} at a time, each from its own "
        "loopback address",
        "us/msg: server CPU time per echoed message; srv/load/other: share of one core used by "
        f"the server, the load generator and everything else; * = {100 * SATURATED:.0f}% or "
        f"more, ! = others took {100 * CONTENDED:.0f}% or more (a noisy figure)",
        f"load average at start {_loads(meta.get('load_average_at_start'))}, at end "
        f"{_loads(meta.get('load_average_at_end'))}",
        "",
        "Figures",
        *_row_lines(document),
    ]
    ceilings = document.get("ceilings", {})
    if ceilings:
        lines += [
            "",
            "Ceilings (plain UDP echo per loop): "
            + ", ".join(f"{loop} = {entry['row']}" for loop, entry in ceilings.items()),
        ]
        if "why" in ceilings.get("asyncio", {}):
            lines.append(f"  ({ceilings['asyncio']['why']})")
    lines += [
        "",
        "Ratios (value / reference of this run; 'better' says which way is good)",
        f"  {'server':<40}{'measure':<38}{'value':>9}{'ref':>9}{'ratio':>8}  better  target",
    ]
    for entry in document["ratios"]:
        label = document["rows"][entry["row"]].get("label", entry["row"])
        target = ""
        if entry["target"] is not None:
            sign = "<=" if entry["better"] == "lower" else ">="
            target = f"{sign}{entry['target']:g} {'ok' if entry['meets'] else 'NOT MET'}"
        lines.append(
            f"  {label[:39]:<40}{entry['measure']:<38}{_number(entry['value']):>9}"
            f"{_number(entry['reference']):>9}{entry['ratio']:>8.2f}  {entry['better']:<6}  "
            f"{target}"
        )
    if document.get("memory"):
        lines += ["", "Memory per established session (resident set)"]
        for entry in document["memory"]:
            label = document["rows"][entry["row"]].get("label", entry["row"])
            adds = "-" if entry["adds_kib"] is None else f"{entry['adds_kib']:.1f}"
            floor = entry["floor_kib_per_session"]
            lines.append(
                f"  {label[:39]:<40}{entry['kib_per_session']:.1f} KiB at {entry['sessions']:,}"
                f" sessions; OpenSSL's SSL object (floor) {_number(floor)} KiB; dtlskit adds "
                f"{adds} KiB (target <= {entry['target']:g})"
            )
    newcomer = document.get("newcomer")
    if newcomer:
        lines += [
            "",
            f"The newcomer's program ({newcomer['clients']} asyncio clients x "
            f"{newcomer['messages_per_client']} messages, fire and forget, default settings)",
            f"  delivered {newcomer['delivered']:,} of {newcomer['sent']:,} "
            f"({100 * newcomer['delivered_share']:.1f}%); missing {newcomer['missing']:,}: "
            f"counted in server statistics {newcomer['counted_in_statistics']:,}, reported to "
            f"clients {newcomer['unsent_after_client_error']:,}, counted nowhere "
            f"{newcomer['uncounted']:,}",
            f"  (the kernel dropped {newcomer['kernel_socket_drops']:,} datagrams at the server "
            "socket, /proc/net/udp; statistics() "
            + (
                "reports kernel_drops"
                if newcomer["statistics_has_kernel_drops"]
                else "has no kernel_drops field"
            )
            + ")",
        ]
    many = document.get("many_sessions")
    if many:
        echo_round = many["echo"]
        lines += [
            "",
            "Many sessions (hibernated, one asyncio server, callback handler, "
            f"{many['settings']['cipher']})",
            f"  {many['sessions_held']:,} sessions held ({many['sessions_hibernated']:,} "
            f"hibernated); {many['kib_per_session_idle']:.2f} KiB per idle session (RSS "
            f"{many['rss_warm_kib']:,} -> {many['rss_idle_kib']:,} KiB); load side "
            f"{many['load_rss_kib']:,} KiB",
            f"  echo round over {echo_round['seconds']:.0f} s: {echo_round['replies']:,} of "
            f"{echo_round['sent']:,} echoed, {echo_round['lost']:,} lost; "
            f"{many['echo_server_cpu_us_per_message']:.1f} us server CPU per message "
            f"(each wakes an idle session)",
        ]
    if document.get("targets"):
        lines += ["", "Issue 14 figures to reach (and issue 15's: hibernated sessions)"]
        for entry in document["targets"]:
            value = f"{entry['value']:.2f}{entry['unit']}"
            verdict = "ok" if entry["meets"] else "NOT MET"
            lines.append(
                f"  {entry['figure'][:78]:<80}{value:>10}  {entry['target']:<10} {verdict}"
            )
    for name, why in document.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    for name, what in document.get("errors", {}).items():
        lines.append(f"FAILED {name}: {what}")
    for note in document.get("notes", []):
        lines.append(f"note: {note}")
    lines += ["", f"Summary: {document.get('summary', '')}"]
    return "\n".join(lines)


def _loads(values: Any) -> str:
    if not values:
        return "-"
    return " ".join(f"{value:.2f}" for value in values)


def write_json(document: Document, path: str | Path) -> None:
    """Write the document as indented JSON."""
    Path(path).write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")


def can_plot() -> bool:
    """Whether matplotlib is installed (it is optional)."""
    return importlib.util.find_spec("matplotlib") is not None


def plot(document: Document, path: str | Path) -> None:
    """Every ratio as a bar, in two panels: lower is better, higher is better. Needs
    matplotlib. A target is drawn as a black tick on its bar."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    panels: dict[str, list[tuple[str, float, float | None]]] = {"lower": [], "higher": []}
    for entry in document["ratios"]:
        label = document["rows"][entry["row"]].get("label", entry["row"])
        panels[entry["better"]].append(
            (f"{label}: {entry['measure']}", entry["ratio"], entry["target"])
        )
    newcomer = document.get("newcomer")
    if newcomer:
        panels["higher"].append(
            ("newcomer's program: delivered / sent", newcomer["delivered_share"], 0.99)
        )
    heights = [max(1, len(items)) for items in panels.values()]
    figure, axes = pyplot.subplots(
        2, 1, figsize=(10, 0.3 * sum(heights) + 3), gridspec_kw={"height_ratios": heights}
    )
    titles = {
        "lower": "lower is better: server CPU per message / handshake, p99 round trip",
        "higher": "higher is better: messages per second, newcomer's delivery",
    }
    colours = {"lower": "tab:red", "higher": "tab:blue"}
    for ax, (better, items) in zip(axes, panels.items(), strict=True):
        labels = [item[0] for item in items]
        values = [item[1] for item in items]
        ax.barh(range(len(items)), values, color=colours[better])
        ax.set_yticks(range(len(items)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        for index, (_, value, target) in enumerate(items):
            ax.annotate(f" {value:.2f}", (value, index), va="center", fontsize=7)
            if target is not None:
                ax.plot([target], [index], marker="|", color="black", markersize=12)
        ax.set_title(titles[better], fontsize=9)
        ax.set_xlabel("ratio to the reference of the same run (| = issue 14 target)", fontsize=8)
    figure.suptitle(textwrap.fill(document.get("summary", ""), 140), fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
