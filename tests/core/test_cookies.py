"""``dtlskit.core.cookies``: stateless cookies bound to an address, the ClientHello fields and a
time tick; a rotated secret invalidates every cookie issued before."""

from __future__ import annotations

import pytest

import dtlskit
from dtlskit.core.cookies import CookieJar

PEER = ("192.0.2.7", 5684)
FIELDS = b"\xfe\xfd" + bytes(32) + b"\x00"


def test_a_cookie_verifies_for_its_address_and_fields_within_two_ticks() -> None:
    jar = CookieJar(b"s" * 16, tick_seconds=30.0)
    cookie = jar.issue(PEER, FIELDS, now=100.0)
    assert len(cookie) == 32
    assert jar.verify(cookie, PEER, FIELDS, now=100.0)
    assert jar.verify(cookie, PEER, FIELDS, now=119.9)  # next tick: still accepted
    assert not jar.verify(cookie, PEER, FIELDS, now=150.0)  # two ticks later: expired


def test_a_cookie_does_not_verify_for_another_address_fields_or_length() -> None:
    jar = CookieJar(b"s" * 16)
    cookie = jar.issue(PEER, FIELDS, now=0.0)
    assert not jar.verify(cookie, ("192.0.2.8", 5684), FIELDS, now=0.0)
    assert not jar.verify(cookie, ("192.0.2.7", 5685), FIELDS, now=0.0)
    assert not jar.verify(cookie, PEER, FIELDS[:-1] + b"\x01", now=0.0)
    assert not jar.verify(cookie[:-1], PEER, FIELDS, now=0.0)
    assert not jar.verify(b"", PEER, FIELDS, now=0.0)
    ipv6 = ("2001:db8::1", 5684, 0, 0)
    assert jar.verify(jar.issue(ipv6, FIELDS, now=0.0), ipv6, FIELDS, now=0.0)


def test_jars_sharing_a_secret_accept_each_others_cookies_and_rotation_revokes() -> None:
    secret = b"shared by every worker"
    one, other = CookieJar(secret), CookieJar(secret)
    cookie = one.issue(PEER, FIELDS, now=5.0)
    assert other.verify(cookie, PEER, FIELDS, now=5.0)
    assert not CookieJar(b"x" * 16).verify(cookie, PEER, FIELDS, now=5.0)
    one.rotate(b"a fresh secret, long enough")
    assert not one.verify(cookie, PEER, FIELDS, now=5.0)
    one.rotate()  # random
    assert one.verify(one.issue(PEER, FIELDS, now=5.0), PEER, FIELDS, now=5.0)


def test_bad_secrets_and_ticks_are_configuration_errors() -> None:
    with pytest.raises(dtlskit.ConfigurationError, match="at least 16 bytes"):
        CookieJar(b"short")
    with pytest.raises(dtlskit.ConfigurationError, match="tick must be positive"):
        CookieJar(tick_seconds=0)
    with pytest.raises(dtlskit.ConfigurationError, match="at least 16 bytes"):
        CookieJar().rotate(b"short")
    assert CookieJar(tick_seconds=7.5).tick_seconds == 7.5


def test_many_ticks_keep_a_bounded_key_cache() -> None:
    jar = CookieJar(b"s" * 16, tick_seconds=1.0)
    for now in range(100):
        assert jar.verify(jar.issue(PEER, FIELDS, float(now)), PEER, FIELDS, float(now))
    assert len(jar._key_cache) <= 5
