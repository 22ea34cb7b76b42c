"""Naming the flights of a DTLS 1.2 handshake on the fake network, for scripted loss (used by
the release scenarios and the tests).

Full handshake with a cookie exchange (RFC 6347 §4.2.4's figure):

    1  C->S  ClientHello
    2  S->C  HelloVerifyRequest
    3  C->S  ClientHello (with cookie)
    4  S->C  ServerHello, Certificate, ServerKeyExchange, [CertificateRequest], ServerHelloDone
    5  C->S  [Certificate], ClientKeyExchange, [CertificateVerify], ChangeCipherSpec, Finished
    6  S->C  [NewSessionTicket], ChangeCipherSpec, Finished
"""

from __future__ import annotations

from .memory import Clock, Datagram

__all__ = [
    "CERTIFICATE",
    "CERTIFICATE_REQUEST",
    "CERTIFICATE_VERIFY",
    "CLIENT_HELLO",
    "CLIENT_KEY_EXCHANGE",
    "HELLO_VERIFY_REQUEST",
    "NEW_SESSION_TICKET",
    "SERVER_HELLO",
    "SERVER_HELLO_DONE",
    "SERVER_KEY_EXCHANGE",
    "DropFlight",
    "flight_of",
]

CLIENT_HELLO, SERVER_HELLO, HELLO_VERIFY_REQUEST, NEW_SESSION_TICKET = 1, 2, 3, 4
CERTIFICATE, SERVER_KEY_EXCHANGE, CERTIFICATE_REQUEST, SERVER_HELLO_DONE = 11, 12, 13, 14
CERTIFICATE_VERIFY, CLIENT_KEY_EXCHANGE = 15, 16


def flight_of(datagram: Datagram) -> int | None:
    """The handshake flight (1..6) a datagram belongs to, from its first record; None for
    application data and alerts."""
    data = datagram.data
    if len(data) < 13:
        return None
    content_type = data[0]
    epoch = int.from_bytes(data[3:5], "big")
    if content_type == 20 or (content_type == 22 and epoch > 0):
        return 5 if datagram.to_server else 6
    if content_type != 22 or len(data) < 25:
        return None
    message_type = data[13]
    message_seq = int.from_bytes(data[17:19], "big")
    if message_type == CLIENT_HELLO:
        return 1 if message_seq == 0 else 3
    if message_type == HELLO_VERIFY_REQUEST:
        return 2
    if message_type == NEW_SESSION_TICKET:
        return 6
    if datagram.to_server:
        return 5
    return 4


class DropFlight:
    """A FakeNetwork filter dropping the first ``times`` transmissions of one flight.

    A transmission is every datagram of the flight sent at one instant of the hand-advanced
    clock (the clock only moves when a timer fires, so a retransmission is a new instant).
    ``sent_at`` records the clock time of every transmission of the flight, dropped or not.
    """

    def __init__(self, flight: int, clock: Clock, times: int = 1) -> None:
        self.flight = flight
        self.clock = clock
        self.times = times
        self.sent_at: list[float] = []

    def __call__(self, datagram: Datagram) -> list[Datagram]:
        if flight_of(datagram) != self.flight:
            return [datagram]
        now = self.clock.now
        if not self.sent_at or self.sent_at[-1] != now:
            self.sent_at.append(now)
        if len(self.sent_at) <= self.times:
            return []
        return [datagram]
