"""Project-wide promises: the sans-I/O core, the public API, the exception tree."""

from __future__ import annotations

import ast
import pathlib

import dtlskit
import dtlskit.exceptions

SRC = pathlib.Path(dtlskit.__file__).parent
FORBIDDEN = {"socket", "asyncio", "threading", "select", "selectors", "time"}


def test_core_imports_no_io_or_clock():
    offenders = []
    for path in sorted((SRC / "core").rglob("*.py")):
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
    assert offenders == []


def test_the_forbidden_import_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom socket import socket\n")
    tree = ast.parse(bad.read_text())
    found = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
    ]
    assert len(found) == 2


def test_public_names_exist():
    for name in dtlskit.__all__:
        assert hasattr(dtlskit, name), name


def test_every_exception_is_a_dtls_error_and_documented():
    doc = dtlskit.exceptions.__doc__ or ""
    for name in dtlskit.exceptions.__all__:
        cls = getattr(dtlskit.exceptions, name)
        assert issubclass(cls, dtlskit.DTLSError)
        assert name in doc, f"{name} missing from the tree drawn in exceptions.py"
