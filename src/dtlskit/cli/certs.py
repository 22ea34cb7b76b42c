"""``dtlskit certs init | sign-csr | show``: a development PKI, signing a CSR, reading a
certificate."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import certs
from ._common import (
    DEFAULT_PORT,
    UsageError,
    out,
    subject,
)


def _cmd_certs_init(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    hosts = [host.strip() for host in args.hosts.split(",") if host.strip()]
    if not hosts:
        raise UsageError("--hosts names no host")
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    names = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
    existing = [name for name in names if (directory / name).exists()]
    if existing and not args.force:
        raise UsageError(
            f"{directory} already holds {', '.join(existing)}: choose another directory, "
            "or pass --force to replace them"
        )
    files = certs.create_pki(
        directory,
        key_type=args.key_type,
        rsa_bits=args.rsa_bits,
        hosts=hosts,
        days=args.days,
        password=args.password,
    )
    key = "EC P-256" if args.key_type == "ec" else f"RSA {args.rsa_bits}"
    password = " --key-password PASSWORD" if args.password else ""
    out(f"wrote a CA, a server and a client certificate ({key}, {args.days} days) to {directory}:")
    out("  " + "  ".join(names))
    out(f"the server certificate is for {', '.join(hosts)}; try:")
    out(f"  dtlskit server --cert {files.server_cert} --key {files.server_key}{password}")
    out(f"  dtlskit client {hosts[0]} {DEFAULT_PORT} --ca {files.ca_cert}")
    return 0


def _cmd_certs_sign_csr(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    csr_path = Path(args.csr)
    try:
        csr_pem = csr_path.read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read CSR ({exc.strerror})", str(csr_path)) from exc
    ca = (
        certs.load_certificate(args.ca_cert),
        certs.load_private_key(args.ca_key, args.ca_password),
    )
    cert = certs.sign_csr(csr_pem, ca, days=args.days, server=not args.client, client=args.client)
    pem = certs.certificate_pem(cert)
    if args.output is None:
        sys.stdout.buffer.write(pem)
        sys.stdout.flush()
        return 0
    Path(args.output).write_bytes(pem)
    kind = "client" if args.client else "server"
    out(
        f"wrote {args.output}: {kind} certificate for {subject(cert)}, valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
    return 0


def _cmd_certs_show(args: argparse.Namespace) -> int:
    found = certs.load_certificates(args.file)
    now = datetime.now(timezone.utc)
    for index, cert in enumerate(found, 1):
        if len(found) > 1:
            out(f"Certificate {index} of {len(found)}")
        out(certs.describe_certificate(cert))
        if now < cert.not_valid_before_utc:
            status = "not yet valid"
        elif now > cert.not_valid_after_utc:
            status = "EXPIRED"
        else:
            days = round((cert.not_valid_after_utc - now).total_seconds() / 86400)
            status = f"valid, expires in {days} days"
        out(f"Status:            {status}")
        if index < len(found):
            out()
    return 0


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    certs_parser = commands.add_parser(
        "certs",
        help="create, sign and inspect certificates",
        description="Create a small PKI, sign certificate requests, describe certificates.",
    )
    actions = certs_parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        parents=[common],
        help="write a CA, a server and a client certificate with their keys",
        description="Write ca.pem, ca.key, server.pem, server.key, client.pem and client.key "
        "to DIR (created if missing; keys readable by the owner only).",
    )
    init.add_argument("directory", metavar="DIR", help="directory to write the files to")
    init.add_argument(
        "--key-type", choices=("ec", "rsa"), default="ec", help="key algorithm (default: ec, P-256)"
    )
    init.add_argument(
        "--rsa-bits",
        type=int,
        choices=(2048, 3072, 4096),
        default=2048,
        help="RSA key size with --key-type rsa (default: 2048)",
    )
    init.add_argument(
        "--hosts",
        default="localhost,127.0.0.1,::1",
        help="comma-separated DNS names and IP addresses of the server certificate "
        "(default: localhost,127.0.0.1,::1)",
    )
    init.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    init.add_argument(
        "--password",
        help="encrypt the key files with this password (visible to other local users in the "
        "process list: prefer it for throwaway set-ups)",
    )
    init.add_argument("--force", action="store_true", help="replace files that already exist")
    init.set_defaults(func=_cmd_certs_init)

    sign = actions.add_parser(
        "sign-csr",
        parents=[common],
        help="issue a certificate for a certificate signing request",
        description="Issue a certificate for CSR (PEM), keeping its subject and "
        "subjectAltName, signed by the given CA.",
    )
    sign.add_argument("csr", metavar="CSR", help="PEM certificate signing request")
    sign.add_argument("--ca-cert", required=True, metavar="FILE", help="CA certificate (PEM)")
    sign.add_argument("--ca-key", required=True, metavar="FILE", help="CA private key (PEM)")
    sign.add_argument("--ca-password", metavar="PASS", help="password of an encrypted CA key")
    sign.add_argument("--days", type=int, default=365, help="validity in days (default: 365)")
    sign.add_argument(
        "--client",
        action="store_true",
        help="issue a client certificate (clientAuth) instead of a server one (serverAuth)",
    )
    sign.add_argument(
        "-o", "--output", metavar="OUT", help="write the certificate here (default: stdout)"
    )
    sign.set_defaults(func=_cmd_certs_sign_csr)

    show = actions.add_parser(
        "show",
        parents=[common],
        help="describe the certificates in a file",
        description="Print subject, issuer, subjectAltNames, validity, key and SHA-256 "
        "fingerprint of every certificate in FILE (PEM or DER).",
    )
    show.add_argument("file", metavar="FILE", help="certificate file (PEM chain or DER)")
    show.set_defaults(func=_cmd_certs_show)
