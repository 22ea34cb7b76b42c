"""The stream buffer of both TLS front ends (``dtlskit.tls._common.Received``): every byte is
copied and searched a bounded number of times, whatever the sizes of arrivals and reads (after
review A's H-T3: the first version re-joined and re-scanned everything on every read, quadratic
in what a peer sends). Count-based, deterministic: no timing."""

from __future__ import annotations

import pytest

from dtlskit.tls import _common


class Counting(bytearray):
    """A bytearray that counts the bytes its searches cover and its slices and deletions move."""

    work = 0

    def find(self, sub, start=None, end=None):  # type: ignore[no-untyped-def, override]
        start = 0 if start is None else start
        end = len(self) if end is None else end
        index = super().find(sub, start, end)
        # what a search reads: up to the match, or the whole range when there is none
        Counting.work += (index + len(sub) - start) if index >= 0 else max(end - start, 0)
        return index

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        result = super().__getitem__(key)
        if isinstance(key, slice):
            Counting.work += len(result)
        return result

    def __delitem__(self, key):  # type: ignore[no-untyped-def]
        before = len(self)
        super().__delitem__(key)
        Counting.work += len(self)  # what moved down
        assert len(self) < before


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[Counting]:
    monkeypatch.setattr(_common, "bytearray", Counting, raising=False)
    Counting.work = 0
    return Counting


def test_read_until_work_is_linear_in_what_arrived(counting: type[Counting]) -> None:
    received = _common.Received(False)
    n = 20_000
    for _ in range(n):  # a line one byte per record: one take_until per arrival
        received.put(b"a")
        assert received.take_until(b"\n", 65_536) is None
    received.put(b"\n")
    assert len(received.take_until(b"\n", 65_536) or b"") == n + 1
    assert counting.work <= 8 * (n + 1), counting.work


def test_reading_a_buffered_stream_in_small_pieces_is_linear(counting: type[Counting]) -> None:
    total = 128 * 1024
    received = _common.Received(False)
    received.put(b"\0" * (total // 2))
    received.put(b"a\n" * (total // 4))
    for _ in range(total // 8):
        assert received.take_exactly(4) == b"\0\0\0\0"
    for _ in range(total // 4):
        assert received.take_until(b"\n", 65_536) == b"a\n"
    assert received.pending() == 0
    assert counting.work <= 8 * total, counting.work


def test_stream_semantics_kept() -> None:
    received = _common.Received(False)
    chunk = b"one chunk"
    received.put(chunk)
    assert received.take() is chunk  # a lone arrival is handed over without a copy
    received.put(b"ab")
    received.put(b"c\nde")
    assert received.take_until(b"\n", 10) == b"abc\n"
    assert received.take() == b"de"
    received.put(b"x" * 20)
    with pytest.raises(_common.InvalidMessage):
        received.take_until(b"\n", 10)  # no separator within the limit: the bytes stay
    assert received.pending() == 20
    received.put(b"\n")
    with pytest.raises(_common.InvalidMessage):
        received.take_until(b"\n", 10)
    assert received.take_until(b"\n", 100) == b"x" * 20 + b"\n"


def test_read_until_with_another_separator_after_a_failed_search() -> None:
    """Review A, M-T7: the remembered search position belongs to one separator."""
    received = _common.Received(False)
    received.put(b"ab\ncd")
    assert received.take_until(b"\r\n", 100) is None
    assert received.take_until(b"\n", 100) == b"ab\n"
    received.put(b"ef\r\n")
    assert received.take_until(b"\n", 100) == b"cdef\r\n"
