"""Retransmission bookkeeping of one association (RFC 6347 §4.2.4), as plain state.

The engine (:mod:`dtlskit.core.connection`) owns OpenSSL; this module owns the decisions that
do not need it, so each can be read and tested on its own:

* **Flights and timers.** Every flight we send starts a timer: 1 s at first, doubling on each
  loss up to 60 s. Per §4.2.4.1 a backed-off value is kept for the next flight after a lossy
  one and reset to the initial value after a flight that went through without loss.
* **Telling a new flight from a repeat.** A flight is named by the set of (epoch, content
  type, handshake message_seq) of its records; OpenSSL re-sending the current flight on its own
  wall-clock timer produces the same name and is not a new flight.
* **Hearing the peer repeat itself.** The peer datagram that made OpenSSL produce our current
  flight (or complete the handshake) is what that flight answers. Its *fingerprints* (records
  without their sequence numbers, see :meth:`Record.fingerprint`) let us recognise the peer
  retransmitting it — which means our flight was lost, so we re-send at once instead of
  waiting for our timer (§4.2.4, "read retransmit"). After the handshake, the side that sent
  the last flight keeps it and re-sends it the same way, since no timer covers a final flight.
  Only a datagram that made OpenSSL progress is remembered: junk, even well framed, never is,
  so a spoofed datagram cannot arm re-sends.
* **Rate.** Such re-sends go out at most once per initial retransmission timeout (RELIABILITY
  rule 8).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from .records import (
    CONTENT_HANDSHAKE,
    BadPacket,
    handshake_message_sequence_trusted,
    record_fingerprints_untrusted,
)

__all__ = ["Flights", "flight_name"]

_MAX_FINGERPRINTS = 64

FlightName = frozenset[tuple[int, int, int | None]]


def flight_name(records: list[bytes]) -> FlightName:
    """What tells one of our flights from another (records are OpenSSL's, trusted)."""
    return frozenset(
        (
            int.from_bytes(record[3:5], "big"),
            record[0],
            handshake_message_sequence_trusted(record) if record[0] == CONTENT_HANDSHAKE else None,
        )
        for record in records
    )


def _fingerprints(data: bytes) -> set[bytes]:
    try:
        return record_fingerprints_untrusted(data, _MAX_FINGERPRINTS)
    except BadPacket:
        return set()


_NOTHING: frozenset[bytes] = frozenset()  # shared: an empty set costs 216 bytes per session
_NO_NAME: FlightName = frozenset()  # the same, for a flight's name
_NO_RECORDS: list[bytes] = []  # the same, for no flight (never appended to)


class Flights:
    """Timers, the current flight, and what the peer sent, for one association."""

    __slots__ = (
        "_answered",
        "_final_answers",
        "_final_resent_at",
        "_final_until",
        "_initial",
        "_last_heard",
        "_lossy",
        "_max",
        "_name",
        "_sent_at",
        "consecutive_timeouts",
        "deadline",
        "deferred_for_skew",
        "final",
        "records",
        "timeout",
    )

    def __init__(self, initial_timeout: float, max_timeout: float) -> None:
        self._initial = initial_timeout
        self._max = max_timeout
        self.timeout = initial_timeout
        """The current retransmission timeout (RTO)."""
        self.deadline: float | None = None
        """When to retransmit the current flight, or None when no flight awaits an answer."""
        self.records: list[bytes] = _NO_RECORDS
        """The records of the current flight, as last sent (replaced, never appended to)."""
        self.consecutive_timeouts = 0
        self.deferred_for_skew = False
        """Set while waiting a moment for OpenSSL's slightly later wall-clock timer."""
        self._name: FlightName = _NO_NAME
        self._lossy = False
        self._sent_at: float | None = None
        self._last_heard: AbstractSet[bytes] = _NOTHING
        self._answered: AbstractSet[bytes] = _NOTHING
        self._final_answers: tuple[int, ...] = ()
        self.final: list[bytes] = []
        """Our final flight (its datagrams, packed as sent), kept until the peer shows it
        arrived (or the window closes)."""
        self._final_until = 0.0
        self._final_resent_at: float | None = None

    # -- during the handshake -------------------------------------------------------------------

    def heard(self, data: bytes) -> bool:
        """Note a datagram from the peer, about to be fed to OpenSSL; True if it repeats the
        datagram our current flight answers. If feeding it makes a new flight or completes the
        handshake, :meth:`sent` / :meth:`completed` remember it as what that answers."""
        prints = _fingerprints(data)
        self._last_heard = prints
        return bool(self._answered & prints)

    def sent(self, records: list[bytes], now: float) -> bool:
        """Note output OpenSSL produced mid-handshake; True if it is a new flight, False if it
        is OpenSSL re-sending the current one on its own timer (our timer is kept then)."""
        name = flight_name(records)
        self.records = records
        if name == self._name:
            return False
        if not self._lossy:
            self.timeout = self._initial
        self._lossy = False
        self.consecutive_timeouts = 0
        self.deferred_for_skew = False
        self._name = name
        self._answered = self._last_heard
        self._sent_at = now
        self.deadline = now + self.timeout
        return True

    def current_name(self) -> FlightName:
        """The name of the flight last sent (compare before and after feeding OpenSSL)."""
        return self._name

    def timed_out(self) -> int:
        """Our timer fired and we are about to retransmit; returns the consecutive count."""
        self.deferred_for_skew = False
        self.consecutive_timeouts += 1
        self._lossy = True
        return self.consecutive_timeouts

    def retransmitted(self, now: float, rebuilt: list[bytes]) -> None:
        """The flight went out again (``rebuilt`` by OpenSSL, or empty if re-sent as stored)."""
        if rebuilt:
            self.records = rebuilt
        self._sent_at = now
        self.timeout = min(self.timeout * 2, self._max)
        self.deadline = now + self.timeout

    def resend_early(self, now: float) -> bool:
        """The peer repeated what our flight answers: True if we may re-send it now."""
        if not self.records or not self._allowed(now, self._sent_at):
            return False
        self._sent_at = now
        self.deadline = now + self.timeout
        return True

    # -- after the handshake --------------------------------------------------------------------

    def completed(self, final: list[bytes], now: float, window: float) -> None:
        """The handshake is done; ``final`` is our last flight if we sent it (else empty), as
        the datagrams it went out in. What only the handshake compared with (the name of our
        last flight, what the peer's last datagram held unless our final flight answers it)
        is forgotten now: an established session keeps no more than it needs."""
        self.deadline = None
        self.records = _NO_RECORDS
        self.final = final
        self._final_until = now + window
        # Kept for the window as the hashes of the peer's last records (a tuple of ints: about
        # 250 bytes less than the records' fingerprints). A collision costs at most one early
        # re-send of our final flight, rate-limited as any other.
        self._final_answers = tuple(map(hash, self._last_heard)) if final else ()
        self._answered = _NOTHING
        self._last_heard = _NOTHING
        self._name = _NO_NAME

    @property
    def final_deadline(self) -> float | None:
        """When the window to re-send our final flight closes (None once it was forgotten):
        the engine forgets the flight then, so an idle session does not keep it."""
        return self._final_until if self.final else None

    def final_repeat(self, data: bytes) -> bool:
        """Whether ``data`` repeats the peer's last flight while we still keep ours."""
        answers = self._final_answers
        if not self.final or not answers:
            return False
        return any(hash(fingerprint) in answers for fingerprint in _fingerprints(data))

    def resend_final(self, now: float) -> bool:
        """True if our final flight may be re-sent now (window open, rate respected)."""
        if now > self._final_until:
            self.peer_finished()
            return False
        if not self._allowed(now, self._final_resent_at):
            return False
        self._final_resent_at = now
        return True

    def peer_finished(self) -> None:
        """Authenticated data arrived: the peer has our final flight; forget it (and what
        the handshake left: nothing will be compared with it again)."""
        self.final = []
        self._final_answers = ()
        self._last_heard = _NOTHING
        self._name = _NO_NAME

    def clear(self) -> None:
        """The session ended: drop every flight and timer."""
        self.deadline = None
        self.records = _NO_RECORDS
        self.final = []
        self._last_heard = _NOTHING
        self._answered = _NOTHING
        self._final_answers = ()

    def _allowed(self, now: float, last_sent: float | None) -> bool:
        """At most one re-send per initial retransmission timeout: a peer that really lost our
        flight waits at least that long before repeating its own."""
        return last_sent is None or now - last_sent >= self._initial
