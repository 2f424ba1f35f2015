"""Log lines written off the hot path, in batches.

A tunnel costs two INFO lines (its end, and the access log's CONNECT line);
with Python's ``StreamHandler`` each is formatted by the task that logs it
and written with its own ``write()`` to stderr, which under systemd is a
socket to journald: a system call and a wake-up of the reader per line, on
the two cores the server shares with everything else. Measured with the
command's format, formatting and writing the two lines of a tunnel cost
~17 us of the serving thread's CPU, plus the reader's wake-ups; queueing the
two records costs ~12 us (creating a ``LogRecord`` is most of that), and the
formatting and the single ``write()`` per batch move to a thread of their
own (``bench/run.py --rows setup`` shows the command's rate with and
without its log lines).

Nothing is lost: ``flush()`` (called by ``logging.shutdown`` at exit, and
by the command before it returns) writes whatever is queued, in the
caller's thread. A line shows up at most ``delay`` seconds after it was
logged.
"""

from __future__ import annotations

import logging
import threading
from typing import TextIO

__all__ = ["BatchedStreamHandler", "quiet_record_fields"]


class BatchedStreamHandler(logging.Handler):
    """A ``logging.StreamHandler`` that queues records and writes them from
    a daemon thread, up to ``batch`` records per ``write()``, at most
    ``delay`` seconds after the first of them."""

    def __init__(
        self, stream: TextIO, *, delay: float = 0.02, batch: int = 1024
    ) -> None:
        super().__init__()
        self.stream = stream
        self.delay = delay
        self.batch = batch
        self._pending: list[logging.LogRecord] = []
        self._queued = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._write_forever, name="hijack-log", daemon=True
        )
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Called under the handler's lock: the list and the event agree.
        self._pending.append(record)
        if len(self._pending) == 1:
            self._queued.set()

    def _take(self) -> list[logging.LogRecord]:
        with self.lock:  # type: ignore[union-attr]  # made by __init__
            taken, self._pending = self._pending, []
            self._queued.clear()
        return taken

    def _write_forever(self) -> None:
        while True:
            self._queued.wait()
            # Let the batch fill: one write for a burst of tunnels.
            threading.Event().wait(self.delay)
            self._write(self._take())

    def _write(self, records: list[logging.LogRecord]) -> None:
        if not records:
            return
        with self._write_lock:  # keep batches whole and in order
            for start in range(0, len(records), self.batch):
                lines = []
                for record in records[start : start + self.batch]:
                    try:
                        lines.append(self.format(record) + "\n")
                    except Exception:
                        self.handleError(record)
                try:
                    for chunk in _atomic_chunks(lines):
                        self.stream.write(chunk)
                        self.stream.flush()
                except (OSError, ValueError):
                    # stderr gone (closed pipe): logging must not take the
                    # server down, and there is no one left to tell.
                    return

    def flush(self) -> None:
        """Write everything queued, now, from the caller's thread."""
        self._write(self._take())


#: A pipe takes a write of at most this many bytes whole (POSIX PIPE_BUF,
#: 4096 on Linux): a longer one may be cut and interleaved with another
#: worker's, since the workers share one stderr.
ATOMIC_WRITE = 4096


def _atomic_chunks(lines: list[str]) -> list[str]:
    """``lines`` joined into as few writes as fit :data:`ATOMIC_WRITE`
    bytes each, cut only between lines (a longer line goes alone)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        n = len(line) if line.isascii() else len(line.encode(errors="replace"))
        if current and size + n > ATOMIC_WRITE:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        chunks.append("".join(current))
    return chunks


def quiet_record_fields() -> None:
    """Stop ``logging`` from collecting what the command's format never
    shows: the caller's file and line (a stack walk per record), the thread
    and the process. The JSON access log does not use them either."""
    logging._srcfile = None  # the knob the logging docs name for this
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
