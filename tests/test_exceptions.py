"""One exception tree: every error a user can get is a DTLSError, the documented public names
are the exported ones, certificate rejections carry stable reasons, and the engine's clean-end
event no longer shares its name with the exception."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import dtlskit
import dtlskit.exceptions
import dtlskit.sync
from dtlskit import certs
from dtlskit.core import events
from dtlskit.core.connection import DTLSConnection
from dtlskit.core.cookies import CookieJar
from dtlskit.testing import MemoryPair

ROOT = Path(__file__).resolve().parent.parent


def _exception_classes() -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(dtlskit.exceptions).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]


def test_every_exception_class_is_a_dtls_error_and_exported() -> None:
    classes = _exception_classes()
    assert classes
    for cls in classes:
        assert issubclass(cls, dtlskit.DTLSError), cls
        assert cls.__name__ in dtlskit.__all__, cls
        assert getattr(dtlskit, cls.__name__) is cls


def test_the_tree_in_the_docstring_names_every_exception() -> None:
    drawn = set(re.findall(r"[├└]── (\w+)", dtlskit.exceptions.__doc__ or ""))
    names = {cls.__name__ for cls in _exception_classes()}
    assert drawn | {"DTLSError"} == names


def test_exports_match_the_documented_set() -> None:
    """docs/features.md "Public names" lists dtlskit.__all__ exactly (its bullets)."""
    text = (ROOT / "docs" / "features.md").read_text()
    section = text[text.index("## Public names") :]
    section = section[: section.index("Every error dtlskit raises")]
    documented: set[str] = set()
    for line in section.splitlines():
        if line.startswith("- ") or line.startswith("  "):
            documented.update(re.findall(r"`(\w+)`", line))
    members = {m.name for m in dtlskit.VerificationReason}
    assert members <= documented  # every reason is documented, as a member, not an export
    documented -= members | {"str"}
    assert documented == set(dtlskit.__all__)


def test_second_bases_keep_standard_library_code_working() -> None:
    assert issubclass(dtlskit.ConfigurationError, ValueError)
    assert issubclass(dtlskit.InvalidArgument, ValueError)
    assert issubclass(dtlskit.InvalidArgument, TypeError)
    assert issubclass(dtlskit.UsageError, RuntimeError)
    assert issubclass(dtlskit.HandshakeTimeout, dtlskit.DTLSTimeoutError)
    assert issubclass(dtlskit.HandshakeTimeout, dtlskit.HandshakeError)
    assert issubclass(dtlskit.HandshakeTimeout, TimeoutError)


def test_certs_errors_are_dtls_errors(tmp_path: Path) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="unknown key type"):
        certs.generate_key("dsa")  # type: ignore[arg-type]
    with pytest.raises(dtlskit.InvalidArgument, match="common name must be a str"):
        certs.create_ca(42)  # type: ignore[arg-type]
    missing = tmp_path / "missing.pem"
    with pytest.raises(dtlskit.ConfigurationError, match="not found"):
        certs.load_certificate(missing)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(dtlskit.ConfigurationError, match="cannot read private key"):
        certs.load_private_key(tmp_path / "junk.key")


def test_cookie_errors_are_configuration_errors() -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="at least 16 bytes"):
        CookieJar(b"short")
    with pytest.raises(dtlskit.ConfigurationError, match="positive"):
        CookieJar(tick_seconds=0)
    with pytest.raises(dtlskit.ConfigurationError):
        CookieJar().rotate(b"short")


def test_keying_material_arguments_and_engine_misuse(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    pair = MemoryPair(server_config, client_config)
    assert pair.handshake()
    for args in [(b"", 16), (b"label", 0), (b"label", 16, "text")]:
        with pytest.raises(dtlskit.InvalidArgument):
            pair.client.export_keying_material(*args)  # type: ignore[arg-type]
    with pytest.raises(dtlskit.UsageError, match="has not started"):
        pair.client.connect(0.0)
    server = DTLSConnection(server_config, server=True, peer_address=("127.0.0.1", 1))
    with pytest.raises(dtlskit.UsageError):
        server.connect(0.0)


def test_negative_timeouts_are_invalid_arguments(
    server_config: dtlskit.DTLSConfiguration,
) -> None:
    with (
        dtlskit.sync.listen("127.0.0.1", 0, config=server_config) as listener,
        pytest.raises(dtlskit.InvalidArgument, match="timeout"),
    ):
        listener.accept(timeout=-1)


def test_verification_reason_is_stable_and_compares_to_its_words(
    server_config: dtlskit.DTLSConfiguration, client_config: dtlskit.DTLSConfiguration
) -> None:
    pair = MemoryPair(server_config, client_config.replace(server_hostname="example.com"))
    assert not pair.handshake()
    error = pair.client.error
    assert isinstance(error, dtlskit.CertificateVerificationError)
    assert error.reason == "hostname mismatch"
    assert error.reason is dtlskit.VerificationReason.HOSTNAME_MISMATCH
    assert str(error.reason) == "hostname mismatch"
    assert "hostname mismatch (depth 0, subject CN=localhost" in str(error)


def test_the_clean_end_event_is_session_closed() -> None:
    assert "SessionClosed" in events.__all__
    assert not hasattr(events, "ConnectionClosed")
    assert events.SessionClosed is dtlskit.core.SessionClosed
    assert not issubclass(events.SessionClosed, BaseException)
