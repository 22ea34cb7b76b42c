"""Record protection without OpenSSL (dtlskit.core.record_protection): the PRF against
OpenSSL's TLS1-PRF, our records read by OpenSSL and OpenSSL's by ours for every implemented
suite in both directions, and the replay window, epoch and framing checks at their edges."""

from __future__ import annotations

import itertools
import subprocess

import pytest

import dtlskit
from dtlskit.core import record_protection as rp
from dtlskit.core.record_protection import SUITES, RecordProtection, prf, suite_for
from dtlskit.testing import MemoryPair

from .. import peers

KEY = bytes(range(16))

# (cipher list both sides use, whether it needs the certificate PKI)
PSK_SUITES = [
    "PSK-AES128-GCM-SHA256",
    "PSK-AES256-GCM-SHA384",
    "PSK-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "PSK-AES128-CCM",
    "PSK-AES256-CCM",
    "PSK-AES128-CCM8:@SECLEVEL=0",
    "PSK-AES256-CCM8:@SECLEVEL=0",
]
CERT_SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-CCM",
    "ECDHE-ECDSA-AES256-CCM",
    "ECDHE-ECDSA-AES128-CCM8:@SECLEVEL=0",
    "ECDHE-ECDSA-AES256-CCM8:@SECLEVEL=0",
]


def psk_pair(ciphers: str) -> MemoryPair:
    server = dtlskit.DTLSConfiguration.server(psk_lookup={"dev1": KEY}, ciphers=ciphers)
    client = dtlskit.DTLSConfiguration.client(psk=("dev1", KEY), ciphers=ciphers)
    return MemoryPair(server, client)


def cert_pair(pki, ciphers: str) -> MemoryPair:
    server = dtlskit.DTLSConfiguration.server(pki.server_cert, pki.server_key, ciphers=ciphers)
    client = dtlskit.DTLSConfiguration.client(
        cafile=pki.ca_cert, server_hostname="localhost", ciphers=ciphers
    )
    return MemoryPair(server, client)


def protection_of(engine, **kwargs) -> RecordProtection:
    """A RecordProtection for an engine that still holds OpenSSL (keys from its SSL object)."""
    ssl = engine.ssl_object
    suite = suite_for(engine.cipher)
    assert suite is not None, engine.cipher
    return RecordProtection(
        suite,
        ssl.master_key(),
        ssl.client_random(),
        ssl.server_random(),
        server=engine.is_server,
        **kwargs,
    )


# -- the PRF -------------------------------------------------------------------------------------


@peers.needs_openssl
@pytest.mark.parametrize("digest", ["sha256", "sha384"])
@pytest.mark.parametrize("length", [1, 32, 48, 100, 130])
def test_prf_matches_openssl_tls1_prf(digest, length):
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    assert peers.OPENSSL is not None
    out = subprocess.run(
        [
            peers.OPENSSL,
            "kdf",
            "-keylen",
            str(length),
            "-kdfopt",
            f"digest:{digest.upper()}",
            "-kdfopt",
            f"hexsecret:{secret.hex()}",
            "-kdfopt",
            "seed:test label",
            "-kdfopt",
            f"hexseed:{seed.hex()}",
            "TLS1-PRF",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert prf(digest, secret, b"test label", seed, length).hex() == out.replace(":", "").lower()


def test_published_prf_sha256_vector():
    # The TLS 1.2 PRF test vector circulated on the IETF TLS list (first 32 of 100 bytes).
    out = prf(
        "sha256",
        bytes.fromhex("9bbe436ba940f017b17652849a71db35"),
        b"test label",
        bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c"),
        32,
    )
    assert out.hex() == "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"


def test_every_implemented_suite_is_tested_against_openssl():
    tested = {c.split(":")[0] for c in PSK_SUITES + CERT_SUITES}
    assert tested == set(SUITES)


def test_unknown_suites_are_refused():
    for name in (
        "AES128-SHA",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-ARIA128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",  # untested here (no RSA certificate): refused
        "",
        None,
    ):
        assert suite_for(name) is None
    # Every suite name maps to a consistent description.
    for name, suite in SUITES.items():
        assert suite.tag_length == (8 if "CCM8" in name else 16)
        assert suite.prf_hash == ("sha384" if name.endswith("SHA384") else "sha256")
        assert suite.explicit_nonce_length == (0 if "CHACHA20" in name else 8)


# -- known answers against OpenSSL, every suite, both directions ---------------------------------


def exchange_with_openssl(pair: MemoryPair) -> None:
    """Our records (each side in turn) read by the other side's OpenSSL, and OpenSSL's records
    read by ours; nothing hibernates here, the keys are taken from the SSL objects."""
    assert pair.handshake(), pair.client.error
    server = pair.server_connection
    assert server is not None
    for ours, theirs in ((pair.client, server), (server, pair.client)):
        # OpenSSL -> us: a record theirs sealed, opened by a RecordProtection of ours.
        protection = protection_of(ours)
        theirs_record = theirs.seal(b"from OpenSSL")
        assert theirs_record is not None
        assert protection.open(theirs_record) == (23, b"from OpenSSL")
        assert protection.open(theirs_record) == "bad_record"  # replayed
        # us -> OpenSSL: continue ours' write sequence where its OpenSSL stands.
        ssl = ours.ssl_object
        ssl.write(b"p")
        probe = ours._drain_openssl()[0]
        sequence = int.from_bytes(probe[5:11], "big")
        writer = protection_of(
            ours, write_sequence=sequence, write_explicit=int.from_bytes(probe[13:21], "big")
        )
        assert writer.seal(23, b"p") == probe  # byte for byte what OpenSSL wrote
        record = writer.seal(23, b"to OpenSSL")
        assert record is not None
        before = theirs.statistics().messages_received
        if theirs is server:
            pair.server.receive_datagram(record, pair.client_address, pair.clock.now)
            pair.pump()
            assert pair.server_messages()[-1] == b"to OpenSSL"
        else:
            theirs.receive_datagram(record, pair.clock.now)
            pair.pump()
            assert pair.client_messages()[-1] == b"to OpenSSL"
        assert theirs.statistics().messages_received == before + 1


@pytest.mark.parametrize("ciphers", PSK_SUITES)
def test_psk_suites_against_openssl_both_directions(ciphers):
    exchange_with_openssl(psk_pair(ciphers))


@pytest.mark.parametrize("ciphers", CERT_SUITES)
def test_certificate_suites_against_openssl_both_directions(pki, ciphers):
    exchange_with_openssl(cert_pair(pki, ciphers))


# -- the replay window, epochs and framing at their edges ----------------------------------------


def twins(
    ciphers: str = "PSK-AES128-GCM-SHA256", read_high: int = -1
) -> tuple[RecordProtection, RecordProtection]:
    """A (client, server) pair of RecordProtections of one real session (the server's window
    starting at ``read_high``)."""
    pair = psk_pair(ciphers)
    assert pair.handshake()
    assert pair.server_connection is not None
    return (
        protection_of(pair.client),
        protection_of(pair.server_connection, read_high=read_high),
    )


def sealed(writer: RecordProtection, count: int) -> list[bytes]:
    out = []
    for i in range(count):
        record = writer.seal(23, b"m%d" % i)
        assert record is not None
        out.append(record)
    return out


@pytest.mark.parametrize(
    "ciphers", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305", "PSK-AES128-CCM8:@SECLEVEL=0"]
)
def test_replay_window_edges(ciphers):
    client, server = twins(ciphers)
    records = sealed(client, 300)
    assert server.open(records[200]) == (23, b"m200")
    assert server.open(records[200]) == "bad_record"  # duplicate
    assert server.open(records[137]) == (23, b"m137")  # 63 behind: the window's oldest slot
    assert server.open(records[136]) == "bad_record"  # 64 behind: outside the window
    assert server.open(records[137]) == "bad_record"  # replay of the oldest slot
    assert server.open(records[199]) == (23, b"m199")
    assert server.open(records[201]) == (23, b"m201")  # the right edge moves by one
    assert server.read_high == 201
    assert server.open(records[137]) == "bad_record"  # now 64 behind
    assert server.open(records[138]) == (23, b"m138")  # 63 behind, never seen
    assert server.open(records[265]) == (23, b"m265")  # a jump of 64: a fresh window
    assert server.open(records[202]) == (23, b"m202")  # 63 behind, never seen
    assert server.open(records[201]) == "bad_record"  # 64 behind
    assert server.open(records[265]) == "bad_record"
    assert server.open(records[299]) == (23, b"m299")  # the seen bit of 265 slides along
    assert server.open(records[265]) == "bad_record"
    assert server.open(records[240]) == (23, b"m240")  # 59 behind, never seen


def test_window_starts_above_what_openssl_accepted():
    # At hibernation the engine passes the highest sequence number OpenSSL authenticated:
    # everything up to it counts as seen, even what OpenSSL never received.
    client, server = twins(read_high=40)
    records = sealed(client, 80)
    for i in (0, 10, 39, 40):
        assert server.open(records[i]) == "bad_record"
    assert server.open(records[41]) == (23, b"m41")
    assert server.open(records[79]) == (23, b"m79")


def test_forged_records_never_move_the_window():
    client, server = twins()
    records = sealed(client, 5)
    forged = bytearray(records[4])
    forged[5:11] = (2**48 - 1).to_bytes(6, "big")  # the highest sequence number
    assert server.open(bytes(forged)) == "bad_record"  # the header is authenticated
    assert server.read_high == -1
    for i, record in enumerate(records):
        assert server.open(record) == (23, b"m%d" % i)


@pytest.mark.parametrize("ciphers", ["PSK-AES128-GCM-SHA256", "PSK-CHACHA20-POLY1305"])
def test_every_single_bit_flip_fails_authentication(ciphers):
    client, server = twins(ciphers)
    (record,) = sealed(client, 1)
    for bit in range(len(record) * 8):
        mutated = bytearray(record)
        mutated[bit // 8] ^= 1 << (bit % 8)
        assert type(server.open(bytes(mutated))) is str, bit
    assert server.open(record) == (23, b"m0")


def test_epoch_and_framing_checks():
    client, server = twins()
    (record,) = sealed(client, 1)
    other_epoch = record[:3] + b"\x00\x02" + record[5:]
    assert server.open(other_epoch) == "wrong_epoch"
    assert server.open(record[:3] + b"\x00\x00" + record[5:]) == "wrong_epoch"
    assert server.open(record[:12]) == "malformed_record"  # truncated header
    assert server.open(record[:-1]) == "malformed_record"  # length field disagrees
    assert server.open(record + b"\x00") == "malformed_record"
    assert server.open(b"\x17\xfe\xff" + record[3:]) == "malformed_record"  # DTLS 1.0
    assert server.open(b"\x18" + record[1:]) == "malformed_record"  # content type 24
    # Shorter than explicit nonce + tag: rejected before any decryption.
    short = record[:11] + (23).to_bytes(2, "big") + record[13:36]
    assert server.open(short) == "malformed_record"
    # Longer than 2**14 plaintext + expansion.
    body = b"\x00" * (2**14 + 25)
    assert server.open(record[:11] + len(body).to_bytes(2, "big") + body) == "malformed_record"
    assert server.open(b"") == "malformed_record"
    assert server.open(record) == (23, b"m0")


def test_tag_length_is_the_suites_not_the_records():
    # The same key under CCM (16-byte tag) and CCM-8: a record of one, cut or padded to look
    # like the other, never opens. The tag length is fixed by the suite at construction.
    secrets = (b"\x11" * 48, b"\x22" * 32, b"\x33" * 32)
    ccm16, ccm8 = SUITES["PSK-AES128-CCM"], SUITES["PSK-AES128-CCM8"]
    writer16 = RecordProtection(ccm16, *secrets, server=False)
    writer8 = RecordProtection(ccm8, *secrets, server=False)
    reader16 = RecordProtection(ccm16, *secrets, server=True)
    reader8 = RecordProtection(ccm8, *secrets, server=True)
    message = b"sixteen bytes!!!" * 2
    r16 = writer16.seal(23, message)
    r8 = writer8.seal(23, message)
    assert r16 is not None and r8 is not None
    assert len(r16) - len(r8) == 8
    assert r16[13:-16] == r8[13:-8]  # the same ciphertext: only the tags differ
    cut = r16[:11] + (len(r16) - 21).to_bytes(2, "big") + r16[13:-8]  # 16-byte tag cut to 8
    assert reader8.open(cut) == "bad_record"
    padded = r8[:11] + (len(r8) - 5).to_bytes(2, "big") + r8[13:] + b"\x00" * 8
    assert reader16.open(padded) == "bad_record"
    assert reader16.open(r8) == "bad_record"  # read as 8 bytes shorter plaintext + tag
    assert reader8.open(r16) == "bad_record"
    assert reader8.open(r8) == (23, message)
    assert reader16.open(r16) == (23, message)


@pytest.mark.parametrize("ciphers", ["PSK-AES128-GCM-SHA256", "PSK-AES128-CCM"])
def test_explicit_nonces_never_repeat(ciphers):
    client, _ = twins(ciphers)
    records = sealed(client, 500)
    nonces = [record[13:21] for record in records]
    assert len(set(nonces)) == len(nonces)
    values = [int.from_bytes(n, "big") for n in nonces]
    assert all(b - a == 1 for a, b in itertools.pairwise(values))
    sequences = [int.from_bytes(record[5:11], "big") for record in records]
    assert sequences == list(range(sequences[0], sequences[0] + 500))


def test_write_sequence_exhaustion_refuses_to_seal():
    client, _ = twins()
    client.write_sequence = 2**48 - 1
    assert client.seal(23, b"x") is not None  # the last sequence number
    assert client.seal(23, b"x") is None
    with pytest.raises(ValueError):
        RecordProtection(
            rp.SUITES["PSK-AES128-GCM-SHA256"],
            b"\x00" * 48,
            b"\x00" * 32,
            b"\x00" * 32,
            server=False,
            write_sequence=2**48,
        )


@pytest.mark.parametrize("name", sorted(SUITES))
def test_open_never_raises_for_any_bytes(name):
    # open() checks the framing itself; open_as() trusts the caller's check, and still only
    # returns a reason when that check was skipped (a cut record, a length field that lies).
    import random

    rng = random.Random(name)
    secrets = (bytes(48), bytes(range(32)), bytes(range(32, 64)))
    reader = RecordProtection(SUITES[name], *secrets, server=True)
    writer = RecordProtection(SUITES[name], *secrets, server=False)
    record = writer.seal(23, b"hello")
    assert record is not None
    accepted = 0
    for _ in range(2000):
        data = bytearray(record[: rng.randrange(len(record) + 8)])
        if len(data) > 13 and rng.random() < 0.5:
            data[11:13] = rng.randrange(65536).to_bytes(2, "big")
        if data and rng.random() < 0.3:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        for result in (reader.open(bytes(data)), reader.open_as(bytes(data), 23)):
            if type(result) is not str:
                # (open_as takes the content type from its caller, not from byte 0)
                assert bytes(data)[1:] == record[1:] and result in ((23, b"hello"), b"hello")
                accepted += 1
    assert accepted <= 1  # only the record itself, and only once
    assert reader.open(record) in ((23, b"hello"), "bad_record")
