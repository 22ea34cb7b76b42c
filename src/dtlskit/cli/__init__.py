"""The ``dtlskit`` command: ``certs``, ``demo``, ``server``, ``client`` and ``bench``.

Each subcommand is one module of this package (:mod:`.certs`, :mod:`.demo`, :mod:`.server`,
:mod:`.client`, :mod:`.bench`) with an ``add_parser`` function declaring its flags and the
function the parsed arguments are handed to; what they share is in :mod:`._common`.
:func:`build_parser` lists the modules. Errors are reported by :func:`main` as one line on
stderr (``dtlskit: error: ...``) naming the cause; ``--debug`` shows the traceback instead.

Exit status: 0 success, 1 failure (refused, timeout, certificate problem, ...), 2 usage error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from .._frontend.accel import ACCELERATOR
from . import bench, certs, client, demo, server
from ._common import UsageError, common_options, describe_error

__all__ = ["build_parser", "describe_error", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dtlskit`` command line; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:
        # The benchmark harness parses its own flags (`dtlskit bench --help` lists them).
        return bench.run(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    _setup_logging(args)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        if args.debug:
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "certs_command", None))))
        print(f"dtlskit {command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"dtlskit: error: {describe_error(exc, args)}", file=sys.stderr)
        return 1


def _setup_logging(args: argparse.Namespace) -> None:
    """Default: warnings (the server: its INFO lines too). ``-v``: INFO, plus the handshake
    trace (``dtlskit.handshake``: flights, retransmissions, alerts, session resumption).
    ``-vv`` and ``--debug``: everything, including each datagram (``dtlskit.datagrams``)."""
    verbosity = 2 if args.debug else args.verbose
    level = args.log_level
    if verbosity == 1:
        level = min(level, logging.INFO)
    elif verbosity >= 2:
        level = logging.DEBUG
    if verbosity >= 1:
        logging.getLogger("dtlskit.handshake").setLevel(logging.DEBUG)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dtlskit`` command: one ``add_parser`` call per subcommand
    module."""
    parser = argparse.ArgumentParser(
        prog="dtlskit",
        description="Secure sessions over UDP (DTLS 1.2): certificates, an echo server and "
        "client, and a self-contained demo. Start with: dtlskit demo",
        epilog="Environment: SSLKEYLOGFILE=PATH appends the session secrets (NSS key log "
        "format, for Wireshark) to PATH, created mode 0600 (a symbolic link or a file others "
        "can read is refused), with a warning on stderr; for debugging only. Exit status: 0 "
        "success, 1 failure "
        "(one line on stderr names the cause), 2 usage error, 130 interrupted.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dtlskit {__version__} (accelerator: {ACCELERATOR})",
        help="show the version and which record path is active: native (the C extension) or "
        "python (DTLSKIT_NATIVE=0, or no compiler at install time), then exit",
    )
    parser.set_defaults(log_level=logging.WARNING)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()
    demo.add_parser(commands, common)
    server.add_parser(commands, common)
    client.add_parser(commands, common)
    certs.add_parser(commands, common)
    bench.add_parser(commands)
    return parser
