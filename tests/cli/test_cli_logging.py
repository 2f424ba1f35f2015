"""The command's log handler: records leave the serving thread at once and
are written in batches, in order, and none is lost at exit."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading

from hijack.cli._logging import BatchedStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = threading.Event()

    def write(self, text: str) -> int:
        self.writes += 1
        self.written.set()
        return super().write(text)


def make_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-batched-{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


def test_a_burst_is_one_write_in_order() -> None:
    stream = CountingStream()
    # A delay no test run reaches: the thread waits, flush() writes.
    handler = BatchedStreamHandler(stream, delay=3600)
    logger = make_logger(handler)
    for n in range(300):  # 2,590 bytes: under a pipe's atomic write
        logger.info("line %d", n)
    assert stream.getvalue() == ""  # nothing formatted in the caller
    handler.flush()
    assert stream.getvalue() == "".join(f"line {n}\n" for n in range(300))
    assert stream.writes == 1


class RecordingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return super().write(text)


def test_no_write_is_longer_than_a_pipe_takes_whole() -> None:
    """Workers share one stderr: a write over PIPE_BUF (4096 bytes) may be
    cut and interleaved with another worker's, so a batch is written in
    whole lines of at most 4096 bytes per write (a longer line alone)."""
    stream = RecordingStream()
    handler = BatchedStreamHandler(stream, delay=3600)
    logger = make_logger(handler)
    lines = [f"tunnel {n} " + "x" * 90 for n in range(200)]
    lines.insert(100, "long " + "y" * 5000)
    lines.insert(150, "caf\u00e9 " * 600)  # 3,600 characters, 4,200 bytes
    for line in lines:
        logger.info("%s", line)
    handler.flush()
    assert stream.getvalue() == "".join(f"{line}\n" for line in lines)
    for chunk in stream.chunks:
        assert chunk.endswith("\n")
        assert len(chunk.encode()) <= 4096 or chunk.count("\n") == 1
    assert len(stream.chunks) >= 7  # 20 KiB of short lines, plus two alone


def test_the_thread_writes_without_a_flush() -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, delay=0)
    make_logger(handler).info("soon")
    assert stream.written.wait(10)
    assert stream.getvalue() == "soon\n"


def test_batches_are_bounded() -> None:
    stream = CountingStream()
    handler = BatchedStreamHandler(stream, delay=3600, batch=100)
    logger = make_logger(handler)
    for n in range(250):
        logger.info("%d", n)
    handler.flush()
    assert stream.writes == 3
    assert stream.getvalue().split() == [str(n) for n in range(250)]


def test_nothing_is_lost_at_exit() -> None:
    """``logging.shutdown`` at interpreter exit writes what is queued."""
    program = (
        "import logging, sys\n"
        "from hijack.cli._logging import BatchedStreamHandler\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s',\n"
        "    handlers=[BatchedStreamHandler(sys.stderr, delay=3600)])\n"
        "for n in range(2000):\n"
        "    logging.info('line %d', n)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stderr.splitlines() == [f"line {n}" for n in range(2000)]
