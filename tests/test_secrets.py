"""Secrets on disk and the warnings about weakened security (issue 8, defect 9).

A saved session holds a master secret and the key log every session's secrets: both are written
mode 0600, never through a symbolic link; a session file is replaced atomically. A client that
does not verify the server, and a key log being written, are logged at WARNING on the
``dtlskit.security`` logger (the CLI side is in tests/test_cli.py)."""

from __future__ import annotations

import logging
import os
import resource
import signal
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtlskit
from dtlskit import _secrets
from dtlskit.certs import PKIFiles
from dtlskit.testing import MemoryPair


@pytest.fixture(autouse=True)
def fresh_warnings() -> Iterator[None]:
    """Each test sees the once-per-process security warnings afresh."""
    _secrets._warned.clear()
    yield
    _secrets._warned.clear()


@pytest.fixture
def session(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> dtlskit.Session:
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    session = pair.client.session
    assert session is not None
    return session


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name not in keep)


# -- Session.save -------------------------------------------------------------------------------


def test_session_file_is_created_owner_only(session: dtlskit.Session, tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask gives 0600
    try:
        session.save(tmp_path / "s.bin")
    finally:
        os.umask(old_umask)
    assert mode(tmp_path / "s.bin") == 0o600
    assert dtlskit.Session.load(tmp_path / "s.bin").to_bytes() == session.to_bytes()


def test_session_file_replacing_a_readable_file_becomes_owner_only(
    session: dtlskit.Session, tmp_path: Path
) -> None:
    path = tmp_path / "s.bin"
    path.write_bytes(b"old")
    path.chmod(0o644)
    session.save(path)
    assert mode(path) == 0o600
    assert path.read_bytes() == session.to_bytes()
    assert leftovers(tmp_path, {"s.bin"}) == []


def test_session_file_refuses_a_symbolic_link(session: dtlskit.Session, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"not yours")
    elsewhere.chmod(0o644)
    link = tmp_path / "s.bin"
    link.symlink_to(elsewhere)
    with pytest.raises(dtlskit.ConfigurationError, match=r"s\.bin: it is a symbolic link"):
        session.save(link)
    assert elsewhere.read_bytes() == b"not yours" and mode(elsewhere) == 0o644
    assert link.is_symlink()
    assert leftovers(tmp_path, {"s.bin", "elsewhere"}) == []


def test_session_file_refuses_a_dangling_symbolic_link(
    session: dtlskit.Session, tmp_path: Path
) -> None:
    link = tmp_path / "s.bin"
    link.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(dtlskit.ConfigurationError, match="symbolic link"):
        session.save(link)
    assert not (tmp_path / "would-be-created").exists()


def test_session_file_failed_write_leaves_the_old_file_whole(
    session: dtlskit.Session, tmp_path: Path
) -> None:
    """A write that fails half-way (here: the file-size limit, EFBIG) leaves the previous
    session file as it was, and no temporary file behind."""
    path = tmp_path / "s.bin"
    old = b"previous session " * 20
    path.write_bytes(old)
    path.chmod(0o600)
    assert len(session.to_bytes()) > 64
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, previous_limit[1]))
    try:
        with pytest.raises(dtlskit.ConfigurationError, match="cannot write session file"):
            session.save(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert path.read_bytes() == old
    assert leftovers(tmp_path, {"s.bin"}) == []


def test_session_file_in_a_missing_directory(session: dtlskit.Session, tmp_path: Path) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match=r"cannot write session file .*missing"):
        session.save(tmp_path / "missing" / "s.bin")


# -- the key log --------------------------------------------------------------------------------


def handshake_with_keylog(
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    keylog: Path,
) -> None:
    pair = MemoryPair(server_config, client_config.replace(keylog_file=keylog))
    assert pair.handshake()


def test_keylog_is_created_owner_only_and_appended_to(
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    tmp_path: Path,
) -> None:
    keylog = tmp_path / "keys.log"
    old_umask = os.umask(0)
    try:
        handshake_with_keylog(server_config, client_config, keylog)
    finally:
        os.umask(old_umask)
    assert mode(keylog) == 0o600
    handshake_with_keylog(server_config, client_config, keylog)  # a second configuration
    lines = keylog.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("CLIENT_RANDOM ") for line in lines)


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_keylog_refuses_a_symbolic_link(
    client_config: dtlskit.DTLSConfiguration, tmp_path: Path, dangling: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    if not dangling:
        elsewhere.write_bytes(b"")
        elsewhere.chmod(0o600)
    link = tmp_path / "keys.log"
    link.symlink_to(elsewhere)
    config = client_config.replace(keylog_file=link)
    with pytest.raises(dtlskit.ConfigurationError, match=r"keys\.log: it is a symbolic link"):
        config.build_context(server=False)
    assert elsewhere.exists() != dangling


def test_keylog_refuses_a_file_others_can_read(
    client_config: dtlskit.DTLSConfiguration, tmp_path: Path
) -> None:
    keylog = tmp_path / "keys.log"
    keylog.write_bytes(b"")
    keylog.chmod(0o640)
    config = client_config.replace(keylog_file=keylog)
    with pytest.raises(dtlskit.ConfigurationError, match=r"mode 0640 .*chmod 600"):
        config.build_context(server=False)


def test_keylog_refuses_a_file_of_another_user(
    client_config: dtlskit.DTLSConfiguration, tmp_path: Path
) -> None:
    keylog = tmp_path / "keys.log"
    keylog.write_bytes(b"")
    keylog.chmod(0o600)
    try:
        os.chown(keylog, os.geteuid() + 1, -1)
    except PermissionError:
        pytest.skip("only root can give a file to another user")
    config = client_config.replace(keylog_file=keylog)
    with pytest.raises(dtlskit.ConfigurationError, match="belongs to another user"):
        config.build_context(server=False)


def test_keylog_replaced_by_a_link_later_is_not_written_through(
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    keylog = tmp_path / "keys.log"
    config = client_config.replace(keylog_file=keylog)
    config.context(server=False)  # built (file opened and checked) and kept here...
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    keylog.unlink()
    keylog.symlink_to(victim)  # ...then swapped for a link before any line is written
    with caplog.at_level(logging.WARNING, logger="dtlskit.security"):
        pair = MemoryPair(server_config, config)
        assert pair.handshake()
    assert victim.read_bytes() == b""
    assert any("key log lines are being dropped" in r.message for r in caplog.records)


# -- warnings -----------------------------------------------------------------------------------


def security_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "dtlskit.security" and record.levelno == logging.WARNING
    ]


def test_client_without_verification_warns_once(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    config = dtlskit.DTLSConfiguration.client(verify_mode=ssl.CERT_NONE, check_hostname=False)
    with caplog.at_level(logging.WARNING, logger="dtlskit.security"):
        config.build_context(server=False)
        config.replace(mtu=1000).build_context(server=False)  # said once per process
    (message,) = security_records(caplog)
    assert "does not verify the server's certificate" in message


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"psk": ("device", b"k" * 16)},  # PSK authenticates the server: no certificate at all
        {"verify_mode": ssl.CERT_NONE, "psk": ("device", b"k" * 16)},
    ],
    ids=["verifying", "psk-only", "psk-only-cert-none"],
)
def test_clients_that_authenticate_the_server_do_not_warn(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture, settings: dict[str, object]
) -> None:
    config = dtlskit.DTLSConfiguration.client(cafile=pki.ca_cert, **settings)
    with caplog.at_level(logging.DEBUG, logger="dtlskit.security"):
        config.build_context(server=False)
    assert security_records(caplog) == []


def test_server_not_asking_for_client_certificates_does_not_warn(
    server_config: dtlskit.DTLSConfiguration, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="dtlskit.security"):
        server_config.build_context(server=True)
    assert security_records(caplog) == []


@pytest.mark.parametrize("server", [False, True], ids=["client", "server"])
def test_keylog_warns(
    server_config: dtlskit.DTLSConfiguration,
    client_config: dtlskit.DTLSConfiguration,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    server: bool,
) -> None:
    keylog = tmp_path / "keys.log"
    config = (server_config if server else client_config).replace(keylog_file=keylog)
    with caplog.at_level(logging.WARNING, logger="dtlskit.security"):
        config.build_context(server=server)
    (message,) = security_records(caplog)
    assert str(keylog) in message and "decrypt" in message
