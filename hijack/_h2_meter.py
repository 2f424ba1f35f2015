"""The frame meter: HTTP/2's known floods, counted before h2 parses a byte.

h2 (the sans-I/O protocol library) answers every frame it is given: it acks
each SETTINGS and PING, records each PRIORITY, and buffers a header block
across up to 64 CONTINUATION frames of any size. None of that is wrong, and
all of it is work a hostile peer can ask for at line rate. So the HTTP/2
loop runs every received byte through this meter first. It reads only the
9-byte frame headers (RFC 9113 4.1), skips the payloads, and keeps:

* a budget per kind of frame a peer can send for free: RST_STREAM (rapid
  reset, CVE-2023-44487; streams we refuse count too), SETTINGS, PING,
  PRIORITY, WINDOW_UPDATE. Each budget is a token bucket: ``rate`` frames a
  second on average, bursts up to ten seconds' worth. Over budget, the
  connection ends with GOAWAY ENHANCE_YOUR_CALM.
* the size of the header block being received, HEADERS plus every
  CONTINUATION that follows (CVE-2024-27316): over ``max_head_size`` the
  connection ends with GOAWAY ENHANCE_YOUR_CALM, before h2 buffers it.

The decoded size of a header list (HPACK's expansion: a small block can
name big headers from the dynamic table) is h2's ``max_header_list_size``,
set by the loop; it is not this module's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

__all__ = ["Flood", "FrameMeter"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING = 0x1, 0x2, 0x3, 0x4, 0x6
WINDOW_UPDATE, CONTINUATION = 0x8, 0x9
END_HEADERS, ACK = 0x4, 0x1
#: Bursts may use this many seconds' worth of a budget at once.
BURST_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Flood:
    """What the meter refused: ``what`` went over its limit."""

    what: str


class _Bucket:
    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * BURST_SECONDS)
        self.level = self.capacity
        self.stamp = trio.current_time()

    def take(self) -> bool:
        now = trio.current_time()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


class FrameMeter:
    """Feed it every received byte, in order; it says when a limit broke.

    ``rates`` maps a frame kind ("resets", "settings", "pings",
    "priority", "window updates") to its frames per second."""

    __slots__ = (
        "_block",
        "_buckets",
        "_header",
        "_in_block",
        "_max_block",
        "_preface",
        "_skip",
    )

    def __init__(self, rates: dict[str, float], max_header_block: int) -> None:
        self._buckets = {kind: _Bucket(rate) for kind, rate in rates.items()}
        self._max_block = max_header_block
        self._preface = len(PREFACE)  # bytes of preface still to skip
        self._header = b""  # a frame header split across reads
        self._skip = 0  # payload bytes of the current frame still to come
        self._in_block = False
        self._block = 0

    def count(self, kind: str) -> Flood | None:
        """Spend one unit of ``kind`` (also for events the meter cannot see
        in the bytes, such as a stream the loop refused)."""
        if self._buckets[kind].take():
            return None
        return Flood(kind)

    def feed(self, data: bytes) -> Flood | None:
        view = memoryview(data)
        if self._preface:
            taken = min(self._preface, len(view))
            self._preface -= taken
            view = view[taken:]
        while view:
            if self._skip:
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                continue
            need = FRAME_HEADER - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < FRAME_HEADER:
                return None
            header, self._header = self._header, b""
            flood = self._frame(int.from_bytes(header[:3], "big"), header[3], header[4])
            if flood is not None:
                return flood
        return None

    def _frame(self, length: int, kind: int, flags: int) -> Flood | None:
        self._skip = length
        if kind == HEADERS or (kind == CONTINUATION and self._in_block):
            self._block = length if kind == HEADERS else self._block + length
            self._in_block = not flags & END_HEADERS
            if self._block > self._max_block:
                return Flood("header block size")
            return None
        if kind == RST_STREAM:
            return self.count("resets")
        if kind == SETTINGS and not flags & ACK:
            return self.count("settings")
        if kind == PING and not flags & ACK:
            return self.count("pings")
        if kind == PRIORITY:
            return self.count("priority")
        if kind == WINDOW_UPDATE:
            return self.count("window updates")
        return None
