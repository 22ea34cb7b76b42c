"""``dtlskit.core.flights``: telling a new flight from a repeat, the retransmission timer
(RFC 6347 §4.2.4: doubling, capped, reset after a loss-free flight), early re-sends when the
peer repeats, and the final flight's window. Records are built here byte by byte."""

from __future__ import annotations

from dtlskit.core.flights import Flights, flight_name


def handshake(message_seq: int, epoch: int = 0, record_seq: int = 0, body: bytes = b"x") -> bytes:
    payload = bytes([1]) + len(body).to_bytes(3, "big") + message_seq.to_bytes(2, "big")
    payload += bytes(3) + len(body).to_bytes(3, "big") + body
    return (
        bytes([22, 0xFE, 0xFD])
        + epoch.to_bytes(2, "big")
        + record_seq.to_bytes(6, "big")
        + len(payload).to_bytes(2, "big")
        + payload
    )


def test_a_flight_is_named_by_epoch_type_and_message_sequence_not_record_sequence() -> None:
    first = [handshake(0, record_seq=0)]
    renumbered = [handshake(0, record_seq=9)]
    assert flight_name(first) == flight_name(renumbered) == frozenset({(0, 22, 0)})
    assert flight_name([handshake(1)]) != flight_name(first)
    ccs = bytes([20, 0xFE, 0xFD, 0, 0]) + bytes(6) + b"\x00\x01\x01"
    assert flight_name([ccs]) == frozenset({(0, 20, None)})


def test_a_repeat_keeps_the_timer_and_a_new_flight_restarts_it() -> None:
    flights = Flights(1.0, 60.0)
    assert flights.sent([handshake(0)], now=0.0)
    assert flights.deadline == 1.0
    assert not flights.sent([handshake(0, record_seq=5)], now=0.5)  # OpenSSL re-sent it
    assert flights.deadline == 1.0
    assert flights.sent([handshake(1)], now=2.0)
    assert flights.deadline == 3.0


def test_the_timeout_doubles_to_its_cap_and_resets_after_a_clean_flight() -> None:
    flights = Flights(1.0, 4.0)
    flights.sent([handshake(0)], now=0.0)
    deadlines = []
    for now in (1.0, 3.0, 7.0, 11.0):
        assert flights.timed_out() >= 1
        flights.retransmitted(now, rebuilt=[])
        deadlines.append(flights.deadline)
    assert deadlines == [3.0, 7.0, 11.0, 15.0]  # 2, 4, then capped at 4
    assert flights.consecutive_timeouts == 4
    flights.sent([handshake(1)], now=20.0)  # after a lossy flight: the timeout is kept
    assert flights.deadline == 24.0 and flights.consecutive_timeouts == 0
    flights.sent([handshake(2)], now=30.0)  # after a clean one: back to the initial 1 s
    assert flights.deadline == 31.0
    rebuilt = [handshake(2, record_seq=7)]
    flights.timed_out()
    flights.retransmitted(31.0, rebuilt)
    assert flights.records == rebuilt


def test_the_peer_repeating_its_flight_allows_one_early_resend_per_initial_timeout() -> None:
    flights = Flights(1.0, 60.0)
    peer_flight = handshake(0, record_seq=3)
    assert not flights.heard(peer_flight)  # nothing answered yet
    flights.sent([handshake(0)], now=0.0)  # our answer to it
    assert flights.heard(peer_flight)  # the peer repeated it: ours was lost
    assert not flights.resend_early(now=0.5)  # too soon after sending
    assert flights.resend_early(now=1.0)
    assert flights.deadline == 2.0
    assert not flights.resend_early(now=1.5)


def test_the_final_flight_is_kept_for_its_window_then_forgotten() -> None:
    flights = Flights(1.0, 60.0)
    peer_last = handshake(2, record_seq=1)
    flights.heard(peer_last)
    final = [handshake(3, epoch=1)]
    flights.completed(final, now=10.0, window=30.0)
    assert flights.deadline is None and flights.final == final
    assert flights.final_deadline == 40.0
    assert flights.final_repeat(peer_last)
    assert not flights.final_repeat(handshake(9))
    assert flights.resend_final(now=11.0)
    assert not flights.resend_final(now=11.5)  # rate: one per initial timeout
    assert not flights.resend_final(now=41.0)  # window closed: forgotten
    assert flights.final == [] and flights.final_deadline is None
    assert not flights.final_repeat(peer_last)


def test_authenticated_data_or_the_end_clears_everything() -> None:
    flights = Flights(1.0, 60.0)
    flights.heard(handshake(2))
    flights.completed([handshake(3, epoch=1)], now=0.0, window=30.0)
    flights.peer_finished()
    assert flights.final == [] and flights.current_name() == frozenset()
    flights.sent([handshake(0)], now=0.0)
    flights.clear()
    assert flights.deadline is None and flights.records == []
    assert flights.heard(b"not a record") is False  # unparsable: never a repeat
