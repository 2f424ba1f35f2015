"""The access log on ``hijack.access``: Common Log Format, JSON, one line per
exchange (answered, hijacked, or refused before any handler ran)."""

from __future__ import annotations

import json
import logging
import re

import pytest
import trio

from hijack import AccessRecord, JSONAccessFormatter, Request, Response

from ..conftest import StartServer
from ..helpers import exchange, read_until
from ..hijack_process import run_hijack

CLF = re.compile(
    r"^(?P<host>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<line>(?:[^"\\]|\\.)*)" (?P<status>\d{3}|-) (?P<bytes>\d+|-)$'
)


async def test_one_clf_line_per_exchange(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    records: list[AccessRecord] = []

    async def handler(request: Request) -> Response | None:
        if request.path == "/up":
            hijacked = await request.hijack(
                Response(101, [("upgrade", "x"), ("connection", "upgrade")])
            )
            await hijacked.aclose()
            return None
        return Response(200, body=b"twelve bytes")

    _, port = await start_server(handler, on_request=records.append)
    caplog.set_level(logging.INFO, logger="hijack.access")
    await exchange(
        port,
        b'GET /a?b="c" HTTP/1.1\r\nHost: x\r\nUser-Agent: t/1\r\nConnection: close\r\n\r\n',
    )
    await exchange(port, b"HEAD /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await exchange(
        port,
        b"GET /up HTTP/1.1\r\nHost: x\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    )
    await exchange(port, b"BAD REQUEST\r\n\r\n")
    lines = [r.getMessage() for r in caplog.records if r.name == "hijack.access"]
    assert len(lines) == 4, lines
    parsed = [CLF.match(line) for line in lines]
    assert all(parsed), lines
    get, head, up, bad = (m for m in parsed if m is not None)
    assert get["host"] == "127.0.0.1"
    assert get["line"] == 'GET /a?b=\\"c\\" HTTP/1.1'  # quotes escaped
    assert (get["status"], get["bytes"]) == ("200", "12")
    assert (head["status"], head["bytes"]) == ("200", "-")  # HEAD: no body
    assert (up["line"], up["status"]) == ("GET /up HTTP/1.1", "101")
    assert (bad["line"], bad["status"]) == ("-", "400")
    assert [r.status for r in records] == [200, 200, 101, 400]
    assert records[0].user_agent == "t/1"
    assert all(r.duration >= 0 for r in records)


def test_json_formatter_writes_the_fields() -> None:
    record = logging.LogRecord("hijack.access", logging.INFO, "", 0, "msg", None, None)
    record.access = {"client": "192.0.2.1", "status": 200}
    assert json.loads(JSONAccessFormatter().format(record)) == {
        "client": "192.0.2.1",
        "status": 200,
    }


async def test_cli_json_access_log() -> None:
    args = ["echo", "--listen", "127.0.0.1:0", "--access-log-format", "json"]
    async with run_hijack(args) as hijack:
        port = await hijack.port()
        data = await exchange(
            port, b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert data.startswith(b"HTTP/1.1 404 ")
        match = await hijack.wait_for(r"(\{.*\})\n", stream="stderr")
        fields = json.loads(match[1])
        assert fields["client"] == "127.0.0.1"
        assert (fields["method"], fields["target"], fields["status"]) == (
            "GET",
            "/nothing",
            404,
        )
        assert fields["bytes"] > 0 and fields["duration"] >= 0


async def test_cli_access_log_off_and_clf_default() -> None:
    async with run_hijack(["echo", "--listen", "127.0.0.1:0"]) as hijack:
        port = await hijack.port()
        await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        match = await hijack.wait_for(r"hijack\.access INFO (.*)\n", stream="stderr")
        assert CLF.match(match[1]), match[1]
    args = ["echo", "--listen", "127.0.0.1:0", "--access-log-format", "off"]
    async with run_hijack(args) as hijack:
        port = await hijack.port()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(stream, b"</html>")
        hijack.signal(2)
        await hijack.wait()
        assert "hijack.access" not in hijack.stderr


def test_a_record_formatted_later_shows_the_user_at_its_end() -> None:
    """The line is made when a handler formats it (the command's handler
    does so from its own thread, later); the user is the one of the
    exchange, not of a later request on the same connection."""
    from hijack._access_log import log_access

    class Connection:  # what a record reads of its connection
        def __init__(self) -> None:
            self.id = 1
            self.remote_address = ("192.0.2.1", 5555)
            self.context: dict[str, object] = {"hijack.user": "alice"}

    connection = Connection()
    record = AccessRecord(connection, "GET", "/", "1.1", 200, 2, 0.0, 0.001)  # type: ignore[arg-type]
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    handler = Keep()
    logger = logging.getLogger("hijack.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        log_access(record)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    connection.context["hijack.user"] = "bob"  # the next request's user
    (line,) = kept
    assert " - alice [" in line.getMessage()
    fields = json.loads(JSONAccessFormatter().format(line))
    assert (fields["user"], fields["status"], fields["target"]) == ("alice", 200, "/")
