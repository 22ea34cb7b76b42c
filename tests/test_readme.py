"""The README's Python examples run as written (in a directory holding the PKI files they name,
on a free port instead of 4433)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from dtlskit.certs import PKIFiles

from .peers import free_udp_port

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_asyncio_and_blocking_examples():
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert "dtlskit.serve" in blocks[0] and "dtlskit.connect" in blocks[0]
    assert "dtlskit.sync.serve" in blocks[1] and "dtlskit.sync.connect" in blocks[1]


def test_readme_examples_run(pki: PKIFiles, tmp_path, capsys):
    for name in ("ca.pem", "server.pem", "server.key"):
        shutil.copy(pki.directory / name, tmp_path / name)
    port = str(free_udp_port())
    namespace: dict[str, object] = {"__name__": "readme"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in python_blocks():
            exec(compile(block.replace("4433", port), "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert capsys.readouterr().out.splitlines() == [
        "b'hello'",
        "b'hello'",
        "b'hello'",
        "kernel drops: 0 dtlskit drops: {}",
        "b'21.5'",  # the CoAP over DTLS example (issue 13)
        "b'hello\\n'",  # TLS over TCP (issue 10)
        "b'hello'",  # QUIC
    ]
