"""Device clocks: ``DTLSConfiguration.verify_time`` checks certificate dates against a given
time instead of the system clock, in both flavours and both roles; date failures say which
clock was used, what it read, and the certificate's validity window."""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

import pytest

import dtlskit
from dtlskit import sync
from dtlskit.certs import (
    PKIFiles,
    certificate_pem,
    create_ca,
    create_pki,
    issue_certificate,
    private_key_pem,
)

UTC = timezone.utc
#: The backdated PKI is valid in 2020 only: expired by any real clock today.
START, END = datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)
IN_2020 = datetime(2020, 6, 1, 12, 0, tzinfo=UTC)
WINDOW = "valid from 2020-01-01 00:00:00 UTC to 2021-01-01 00:00:00 UTC"
WAIT = 30.0


@pytest.fixture(scope="module")
def pki_2020(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    directory = tmp_path_factory.mktemp("pki-2020")
    ca = create_ca("clock test CA", not_before=START, not_after=END)
    server = issue_certificate(ca, "localhost", hosts=["localhost", "127.0.0.1"],
                               not_before=START, not_after=END)  # fmt: skip
    client = issue_certificate(ca, "device 7", hosts=["device-7"], server=False, client=True,
                               not_before=START, not_after=END)  # fmt: skip
    files = {}
    for name, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        (directory / f"{name}.pem").write_bytes(certificate_pem(cert))
        (directory / f"{name}.key").write_bytes(private_key_pem(key))
        files[name] = directory / f"{name}.pem"
    return PKIFiles(
        directory=directory,
        ca_cert=files["ca"],
        ca_key=directory / "ca.key",
        server_cert=files["server"],
        server_key=directory / "server.key",
        client_cert=files["client"],
        client_key=directory / "client.key",
    )


def client_config(pki: PKIFiles, **extra: object) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert,
        server_hostname="localhost",
        **extra,  # type: ignore[arg-type]
    )


def mutual_server(pki: PKIFiles, **extra: object) -> dtlskit.DTLSConfiguration:
    return dtlskit.DTLSConfiguration.server(
        pki.server_cert, pki.server_key, cafile=pki.ca_cert,
        verify_mode=ssl.CERT_REQUIRED, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


async def echo(channel: dtlskit.asyncio.Channel) -> None:
    async for message in channel:
        await channel.send(message)


def sync_echo(channel: sync.Channel) -> None:
    for message in channel:
        channel.send(message)


async def aio_round_trip(
    server: dtlskit.DTLSConfiguration, client: dtlskit.DTLSConfiguration
) -> bytes:
    async with dtlskit.serve(echo, "127.0.0.1", 0, config=server) as running:
        port = running.addresses[0][1]
        async with dtlskit.connect("127.0.0.1", port, config=client, timeout=WAIT) as channel:
            await channel.send(b"tick")
            return await channel.recv()


def sync_round_trip(server: dtlskit.DTLSConfiguration, client: dtlskit.DTLSConfiguration) -> bytes:
    with sync.serve(sync_echo, "127.0.0.1", 0, config=server) as running:
        port = running.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=client, timeout=WAIT) as channel:
            channel.send(b"tick")
            return channel.recv(timeout=WAIT)


def round_trip(
    flavour: str, server: dtlskit.DTLSConfiguration, client: dtlskit.DTLSConfiguration
) -> bytes:
    if flavour == "asyncio":
        return asyncio.run(asyncio.wait_for(aio_round_trip(server, client), 60))
    return sync_round_trip(server, client)


FLAVOURS = ["asyncio", "sync"]


class BrokenZone(tzinfo):
    """A time zone whose offset cannot be had (a missing tz database, say)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no tz database")

    def dst(self, dt: datetime | None) -> timedelta:
        raise RuntimeError("no tz database")

    def tzname(self, dt: datetime | None) -> str:
        return "broken"


# -- clients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_accepts_a_certificate_valid_at_verify_time(
    flavour: str, pki_2020: PKIFiles
) -> None:
    server = dtlskit.DTLSConfiguration.server(pki_2020.server_cert, pki_2020.server_key)
    # By the system clock the chain expired years ago ...
    with pytest.raises(dtlskit.CertificateVerificationError) as caught:
        round_trip(flavour, server, client_config(pki_2020))
    assert caught.value.reason is dtlskit.VerificationReason.EXPIRED
    assert "(system clock)" in str(caught.value) and WINDOW in str(caught.value)
    # ... at the device's time it is valid: a datetime, a timestamp, a callable.
    for when in (IN_2020, IN_2020.timestamp(), lambda: IN_2020):
        assert round_trip(flavour, server, client_config(pki_2020, verify_time=when)) == b"tick"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_client_error_names_local_time_and_validity_window(flavour: str, pki: PKIFiles) -> None:
    server = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key)
    ca = x509_of(pki.ca_cert)
    window = (
        f"valid from {ca.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC "
        f"to {ca.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    )
    late = ca.not_valid_after_utc + timedelta(days=1)
    with pytest.raises(dtlskit.CertificateVerificationError) as expired:
        round_trip(flavour, server, client_config(pki, verify_time=late))
    assert expired.value.reason is dtlskit.VerificationReason.EXPIRED
    assert f"local time {late:%Y-%m-%d %H:%M:%S} UTC (verify_time)" in str(expired.value)
    assert window in str(expired.value)

    with pytest.raises(dtlskit.CertificateVerificationError) as early:
        round_trip(flavour, server, client_config(pki, verify_time=0))  # a clock that never ran
    assert early.value.reason is dtlskit.VerificationReason.NOT_YET_VALID
    assert "local time 1970-01-01 00:00:00 UTC (verify_time)" in str(early.value)
    assert window in str(early.value)


# -- servers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_server_checks_client_certificates_at_verify_time(
    flavour: str, pki_2020: PKIFiles, pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    # A server with a current certificate; the device's client certificate is from 2020.
    trust_both = Path(pki.directory / "both-cas.pem")
    trust_both.write_bytes(pki.ca_cert.read_bytes() + pki_2020.ca_cert.read_bytes())
    server = mutual_server(pki).replace(cafile=trust_both)
    client = client_config(pki, certfile=pki_2020.client_cert, keyfile=pki_2020.client_key)

    caplog.set_level(logging.WARNING, logger="dtlskit.server")
    with pytest.raises(dtlskit.CertificateVerificationError) as refused:
        round_trip(flavour, server, client)
    assert refused.value.reason is dtlskit.VerificationReason.REJECTED_BY_PEER
    failures = [r.getMessage() for r in caplog.records if "handshake with" in r.getMessage()]
    assert any("(system clock)" in f and WINDOW in f for f in failures), failures

    # Certificate dates both sides check against 2020-06-01 (the server's certificate is not
    # valid then either: the client keeps the system clock).
    at_2020 = server.replace(verify_time=IN_2020)
    assert round_trip(flavour, at_2020, client) == b"tick"


def test_server_with_a_failing_clock_refuses_that_handshake_and_keeps_serving(
    pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """The clock callable raising fails that one handshake (logged, naming the cause), not the
    server: the client's retransmitted ClientHello is served once the clock answers again."""
    calls = []

    def clock() -> datetime:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("RTC not readable")
        return datetime.now(UTC)

    server = mutual_server(pki, verify_time=clock)
    client = client_config(pki, certfile=pki.client_cert, keyfile=pki.client_key)

    async def main() -> bytes:
        async with dtlskit.serve(echo, "127.0.0.1", 0, config=server) as running:
            port = running.addresses[0][1]
            async with dtlskit.connect("127.0.0.1", port, config=client) as channel:
                await channel.send(b"still here")
                return await channel.recv()

    caplog.set_level(logging.WARNING, logger="dtlskit.server")
    assert asyncio.run(asyncio.wait_for(main(), 60)) == b"still here"
    refused = [r.getMessage() for r in caplog.records if "RTC not readable" in r.getMessage()]
    assert len(refused) == 1 and "verify_time callable raised OSError" in refused[0], refused
    assert len(calls) >= 2


JUNK_TIMES = {"1e30 s": (1e30, "year 9999"), "broken zone": (None, "no tz database")}


@pytest.mark.parametrize("junk", list(JUNK_TIMES))
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_server_clock_answering_junk_refuses_that_handshake_and_keeps_serving(
    flavour: str, junk: str, pki: PKIFiles, caplog: pytest.LogCaptureFixture
) -> None:
    """A clock callable answering a time no certificate check can use (1e30 s: OpenSSL's
    time_t overflows; a datetime whose time zone raises) fails that one handshake like a
    clock that raises; it used to escape raw (OverflowError, RuntimeError) and, in the
    blocking flavour, end the server's I/O thread."""
    calls = []
    value, words = JUNK_TIMES[junk]
    if value is None:
        value = datetime(2020, 1, 1, tzinfo=BrokenZone())

    def clock() -> object:
        calls.append(1)
        return value if len(calls) == 1 else datetime.now(UTC).timestamp()

    server = mutual_server(pki, verify_time=clock)
    client = client_config(pki, certfile=pki.client_cert, keyfile=pki.client_key)
    caplog.set_level(logging.WARNING, logger="dtlskit.server")
    assert round_trip(flavour, server, client) == b"tick"
    refused = [r.getMessage() for r in caplog.records if words in r.getMessage()]
    assert len(refused) == 1, refused
    assert len(calls) >= 2


def test_client_clock_answering_out_of_range_is_a_configuration_error(pki: PKIFiles) -> None:
    config = client_config(pki, verify_time=lambda: 1e30)
    with pytest.raises(dtlskit.ConfigurationError, match="year 9999"):
        sync.connect("127.0.0.1", 9, config=config)
    with pytest.raises(dtlskit.ConfigurationError, match="year 9999"):
        asyncio.run(asyncio.wait_for(dtlskit.connect("127.0.0.1", 9, config=config), 30))


def test_describe_dates_never_fails_on_far_times(pki: PKIFiles) -> None:
    from dtlskit.core import _verify_time

    certificate = x509_of(pki.ca_cert)
    words = _verify_time.describe_dates(certificate, _verify_time.MAX_TIMESTAMP)
    assert "9999-12-31 23:59:59 UTC (verify_time)" in words and "valid from" in words


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        datetime(2020, 6, 1),
        True,
        -1,
        float("nan"),
        "2020-06-01",
        1e30,
        2**70,
        253_402_300_800,
        datetime(1969, 12, 31, tzinfo=UTC),
        datetime(2020, 1, 1, tzinfo=BrokenZone()),
    ],
    ids=[
        "naive datetime",
        "bool",
        "negative",
        "nan",
        "string",
        "huge float",
        "huge int",
        "after 9999",
        "before 1970",
        "broken zone",
    ],
)
def test_bad_verify_time_is_a_configuration_error(value: object) -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="verify_time"):
        dtlskit.DTLSConfiguration.client(verify_time=value)  # type: ignore[arg-type]


def test_a_client_clock_that_fails_is_a_configuration_error(pki: PKIFiles) -> None:
    def broken() -> datetime:
        raise OSError("no time yet")

    config = client_config(pki, verify_time=broken)
    with pytest.raises(dtlskit.ConfigurationError, match="no time yet"):
        sync.connect("127.0.0.1", 9, config=config)
    with pytest.raises(dtlskit.ConfigurationError, match="no time yet"):
        asyncio.run(asyncio.wait_for(dtlskit.connect("127.0.0.1", 9, config=config), 30))


def x509_of(path: Path) -> object:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def test_create_pki_certificates_are_current(tmp_path: Path) -> None:
    """The other tests' premise: a fresh PKI is valid now and the 2020 one is not."""
    files = create_pki(tmp_path)
    cert = x509_of(files.server_cert)
    now = datetime.now(UTC)
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc  # type: ignore[attr-defined]


def test_a_session_checked_at_verify_time_is_not_resumed_under_the_system_clock(
    pki_2020: PKIFiles,
) -> None:
    """Resuming skips certificate checks: a session whose certificate was valid only at
    verify_time must not be resumed by a configuration that checks against the system clock."""
    server = dtlskit.DTLSConfiguration.server(pki_2020.server_cert, pki_2020.server_key)
    in_2020 = client_config(pki_2020, verify_time=IN_2020)
    with sync.serve(sync_echo, "127.0.0.1", 0, config=server) as running:
        port = running.addresses[0][1]
        with sync.connect("127.0.0.1", port, config=in_2020, timeout=WAIT) as channel:
            session = channel.session
        assert session is not None
        with sync.connect("127.0.0.1", port, config=in_2020, timeout=WAIT, session=session) as ch:
            assert ch.session_reused  # the same policy resumes
        with pytest.raises(dtlskit.CertificateVerificationError) as caught:
            sync.connect(
                "127.0.0.1", port, config=client_config(pki_2020), timeout=WAIT, session=session
            )
    assert caught.value.reason is dtlskit.VerificationReason.EXPIRED
