"""Project-wide promises: the sans-I/O core, the public API, the exception tree."""

from __future__ import annotations

import ast
import pathlib

import dtlskit
import dtlskit.exceptions

SRC = pathlib.Path(dtlskit.__file__).parent
FORBIDDEN = {"socket", "asyncio", "threading", "select", "selectors", "time"}


def forbidden_imports(paths: list[pathlib.Path]) -> list[str]:
    """``file:line imports name`` for every import of I/O or clocks in ``paths``."""
    offenders = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    return offenders


def test_core_imports_no_io_or_clock():
    paths = sorted((SRC / "core").rglob("*.py"))
    assert len(paths) >= 8
    assert forbidden_imports(paths) == []


def test_the_forbidden_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import json\nimport time\nfrom socket import socket\nfrom . import x\n"
        "def f():\n    import asyncio.events\n"
    )
    assert forbidden_imports([bad]) == [
        "bad.py:2 imports time",
        "bad.py:3 imports socket",
        "bad.py:6 imports asyncio.events",
    ]


def runtime_imports_of(path: pathlib.Path, target: str) -> list[str]:
    """``file:line`` of every import of ``target`` (a relative module name such as ``config``
    one level up) that runs: at module level outside ``if TYPE_CHECKING:``, or inside a
    function (a lazy import)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped.update(id(child) for child in ast.walk(node))
    return [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and id(node) not in skipped
        and (node.module or "").split(".")[0] == target
        and node.level >= 2
    ]


def test_core_refers_to_the_configuration_for_types_only(tmp_path):
    # config.py builds on core.context; the core must not import config back (no cycle, no
    # lazy imports working around one).
    paths = sorted((SRC / "core").rglob("*.py"))
    assert [hit for path in paths for hit in runtime_imports_of(path, "config")] == []
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..config import A\n"
        "def f():\n    from ..config import B\n"
    )
    assert runtime_imports_of(bad, "config") == ["bad.py:5"]


def test_public_names_exist():
    for name in dtlskit.__all__:
        assert hasattr(dtlskit, name), name


def test_every_exception_is_a_dtls_error_and_documented():
    doc = dtlskit.exceptions.__doc__ or ""
    for name in dtlskit.exceptions.__all__:
        cls = getattr(dtlskit.exceptions, name)
        if cls is dtlskit.VerificationReason:  # the values of CertificateVerificationError.reason
            assert name in doc
            continue
        assert issubclass(cls, dtlskit.DTLSError)
        assert name in doc, f"{name} missing from the tree drawn in exceptions.py"


def test_configuration_refuses_nan_and_contradictions():
    import math
    import ssl

    import pytest

    for name in ("handshake_timeout", "initial_retransmit_timeout", "idle_timeout"):
        with pytest.raises(dtlskit.ConfigurationError, match=name):
            dtlskit.DTLSConfiguration(**{name: math.nan})
    with pytest.raises(dtlskit.ConfigurationError, match="hello_verify_per_second"):
        dtlskit.Limits(hello_verify_per_second=math.inf)
    with pytest.raises(dtlskit.ConfigurationError, match="PSK"):
        dtlskit.DTLSConfiguration.client(psk=("id", b"k" * 16), verify_mode=ssl.CERT_REQUIRED)


def test_bad_server_hostname_is_a_configuration_error():
    import pytest

    from dtlskit.core import DTLSConnection

    config = dtlskit.DTLSConfiguration.client(server_hostname="x" * 70 + ".example")
    with pytest.raises(dtlskit.ConfigurationError, match="not a valid host name"):
        DTLSConnection(config, server=False)
    with pytest.raises(dtlskit.ConfigurationError):
        DTLSConnection(dtlskit.DTLSConfiguration.client(server_hostname="a\0b"), server=False)


def test_the_benchmark_harness_stays_out_of_the_import_path():
    # A fresh interpreter: importing the library, its front ends and the CLI loads nothing of
    # the harness; only running `dtlskit bench` does.
    import subprocess
    import sys

    probe = (
        "import sys, dtlskit, dtlskit.sync, dtlskit.asyncio, dtlskit.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('dtlskit.benchmarks')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert loaded == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "dtlskit", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "--quick" in help_text.stdout
