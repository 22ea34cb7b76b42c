"""``dtlskit.core.session``: a Session survives serialisation, refuses damaged input with a
``ConfigurationError`` naming the file, and is saved privately."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import dtlskit
from dtlskit.core.session import Session
from dtlskit.testing import MemoryPair


@pytest.fixture
def session(server_config, client_config) -> Session:
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    taken = pair.client.session
    assert taken is not None
    return taken


def test_round_trip_keeps_name_policy_and_session(session: Session) -> None:
    again = Session.from_bytes(session.to_bytes())
    assert again.server_name == session.server_name == "localhost"
    assert again.policy == session.policy and again.policy is not None
    assert again.to_bytes() == session.to_bytes()
    assert "localhost" in repr(again)
    assert "an unnamed server" in repr(Session(session._der))


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda data: b"not a session" + data, "bad header"),
        (lambda data: data[:18], "truncated"),
    ],
)
def test_damaged_bytes_are_configuration_errors(session: Session, damage, words) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match=words):
        Session.from_bytes(damage(session.to_bytes()))


def test_a_bad_name_or_a_bad_der_is_refused(session: Session) -> None:
    data = session.to_bytes()
    magic = data[:16]
    bad_name = magic + b"\x00\x02\xff\xfe" + data[16 + 2 + len(b"localhost") :]
    with pytest.raises(dtlskit.ConfigurationError, match="bad server name"):
        Session.from_bytes(bad_name)
    header = magic + b"\x00\x00" + b"\x00"
    with pytest.raises(dtlskit.DTLSError):
        Session.from_bytes(header + b"\x30\x03garbage")


def test_save_is_private_and_load_names_the_file(session: Session, tmp_path: Path) -> None:
    path = tmp_path / "session.bin"
    session.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Session.load(path).to_bytes() == session.to_bytes()
    with pytest.raises(dtlskit.ConfigurationError, match=f"cannot read session file {path}x"):
        Session.load(str(path) + "x")
    path.write_bytes(b"junk")
    with pytest.raises(dtlskit.ConfigurationError, match=f"{path}: not a serialised"):
        Session.load(path)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(dtlskit.ConfigurationError):
        session.save(link)


def test_a_server_engine_refuses_a_session(server_config, client_config, session) -> None:
    from dtlskit.core import DTLSConnection

    with pytest.raises(dtlskit.ConfigurationError, match="for client engines"):
        DTLSConnection(server_config, server=True, session=session)
    with pytest.raises(dtlskit.ConfigurationError, match="must be a dtlskit Session"):
        DTLSConnection(client_config, server=False, session=b"bytes")  # type: ignore[arg-type]
