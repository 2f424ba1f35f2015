"""The admin listener (``--admin HOST:PORT``) and ``hijack tunnels``.

``GET /tunnels[?user=NAME&kind=connect|tcp]``: the live tunnels as JSON
(id, kind, user, client, target, node, started, bytes each way, state).
``DELETE /tunnels/ID``: end that tunnel (204; 404 if no process has it).
``GET /users``: tunnels and bytes per user. Every request needs
``Authorization: Bearer TOKEN`` (the first line of ``--admin-token-file``,
compared in constant time): 401 otherwise.

Where the tunnels are: one process answers from its own registry. Under
``--workers N`` the supervisor serves the listener and asks every worker,
each of which answers on a UNIX socket in a directory only this user can
enter (``HIJACK_ADMIN_DIR``). With ``--state redis://`` every node also
publishes its tunnels to Redis (``hijack.state.nodes``), so any node's
listener shows, and ends, every node's tunnels.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import h11
import trio

from .._message import HTTPError, Request, Response
from .._server import Server
from ..state.registry import tunnels
from ._command import Command, CommandLine
from ._side_listener import serve_side
from ._state import read_token

__all__ = [
    "ADMIN_DIR_ENV",
    "TUNNELS_COMMAND",
    "admin_handler",
    "start_admin",
    "start_supervisor_admin",
    "workers_admin_dir",
]

logger = logging.getLogger("hijack.admin")

ADMIN_DIR_ENV = "HIJACK_ADMIN_DIR"
#: Real seconds a worker (or a node) gets to answer the admin's question.
ASK_TIMEOUT = 5.0


class Source(Protocol):
    """Where the admin's answers come from."""

    async def list(self, query: dict[str, str]) -> list[dict[str, Any]]: ...

    async def end(self, id: str) -> bool: ...


class LocalSource:
    """This process's registry."""

    async def list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        records = tunnels.records(user=query.get("user"), kind=query.get("kind"))
        return [record.as_json(tunnels.node) for record in records]

    async def end(self, id: str) -> bool:
        record = tunnels.find(id)
        if record is None or not record.end():
            return False
        logger.info("tunnel %s ended through the admin API", id)
        return True


class NodesSource:
    """Every node's tunnels, through Redis: this process's own live, the
    others' as they published them (at most a second old); ending another
    node's tunnel asks that node, which ends it within a second (202)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.local = LocalSource()

    async def _others(self) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = await self.state.all_tunnels()
        except Exception as exc:  # Redis away: this node's own still answer
            logger.warning("admin: other nodes' tunnels unavailable: %s", exc)
            return []
        return [row for row in rows if row["node"] != tunnels.node]

    async def list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        rows = await self.local.list(query)
        for row in await self._others():
            if all(row.get(k) == v for k, v in query.items() if k in ("user", "kind")):
                rows.append(row)
        return rows

    async def end(self, id: str) -> bool:
        if await self.local.end(id):
            return True
        for row in await self._others():
            if row["id"] == id:
                await self.state.ask_end(row["node"], id)
                logger.info("tunnel %s: asked node %s to end it", id, row["node"])
                return True
        return False


def admin_handler(
    token: bytes, source: Source
) -> Callable[[Request], Awaitable[Response]]:
    """The admin API over ``source``, behind the bearer ``token``."""
    wanted = hashlib.sha256(token).digest()

    async def handle(request: Request) -> Response:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        # Digests: constant time, and the length of the token leaks nothing.
        digest = hashlib.sha256(value.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, wanted):
            raise HTTPError(401, "a valid bearer token is needed", _CHALLENGE)
        query = dict(urllib.parse.parse_qsl(request.query or ""))
        if request.path == "/tunnels" and request.method == "GET":
            return _json({"tunnels": await source.list(query)})
        if request.path.startswith("/tunnels/") and request.method == "DELETE":
            id = request.path.removeprefix("/tunnels/")
            if await source.end(id):
                return Response(204)
            raise HTTPError(404, f"no live tunnel {id}")
        if request.path == "/users" and request.method == "GET":
            return _json({"users": _per_user(await source.list({}))})
        if request.path in ("/tunnels", "/users") or request.path.startswith(
            "/tunnels/"
        ):
            raise HTTPError(405, "", {"allow": "GET, DELETE"})
        raise HTTPError(404)

    return handle


_CHALLENGE = {"www-authenticate": 'Bearer realm="hijack admin"'}


def _json(value: Any) -> Response:
    body = json.dumps(value, indent=1).encode() + b"\n"
    return Response(200, {"content-type": "application/json"}, body)


def _per_user(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    users: dict[str, dict[str, int]] = {}
    for row in rows:
        name = row["user"] or "-"
        totals = users.setdefault(name, {"tunnels": 0, "bytes_up": 0, "bytes_down": 0})
        totals["tunnels"] += 1
        totals["bytes_up"] += row["bytes_up"]
        totals["bytes_down"] += row["bytes_down"]
    return users


def _end_local(id: str) -> bool:
    record = tunnels.find(id)
    return record is not None and record.end()


# -- across workers: the supervisor asks each worker --------------------------


class WorkersSource:
    """Every worker's registry, each asked on its UNIX socket in ``dir``."""

    def __init__(self, dir: str, token: bytes) -> None:
        self.dir = Path(dir)
        self.token = token

    def _sockets(self) -> list[Path]:
        return sorted(self.dir.glob("*.sock"))

    async def list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        target = "/tunnels?" + urllib.parse.urlencode(query)

        async def ask(path: Path) -> None:
            answer = await self._ask(path, "GET", target)
            if answer is not None and answer[0] == 200:
                rows.extend(json.loads(answer[1])["tunnels"])

        async with trio.open_nursery() as nursery:
            for path in self._sockets():
                nursery.start_soon(ask, path)
        # With Redis every worker also answers for the other nodes: once each.
        unique = {row["id"]: row for row in rows}
        return sorted(unique.values(), key=lambda row: row["started"])

    async def end(self, id: str) -> bool:
        for path in self._sockets():
            answer = await self._ask(path, "DELETE", f"/tunnels/{id}")
            if answer is not None and answer[0] == 204:
                return True
        return False

    async def _ask(
        self, path: Path, method: str, target: str
    ) -> tuple[int, bytes] | None:
        """One request to one worker; None if it is gone (its socket file
        is then removed) or does not answer in time."""
        headers = [
            ("host", "worker"),
            ("authorization", f"Bearer {self.token.decode()}"),
        ]
        try:
            with trio.fail_after(ASK_TIMEOUT):
                stream = await trio.open_unix_socket(str(path))
                async with stream:
                    return await http_request(stream, method, target, headers)
        except (ConnectionRefusedError, FileNotFoundError):
            await trio.Path(path).unlink(missing_ok=True)  # a worker that exited
        except (OSError, trio.TooSlowError, h11.ProtocolError) as exc:
            logger.warning("admin: worker socket %s: %s", path.name, exc)
        return None


async def http_request(
    stream: trio.abc.Stream,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on ``stream``: (status, body)."""
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(method=method, target=target, headers=headers)
    await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    status = 0
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, body


# -- starting the listeners -------------------------------------------------------


async def start_admin(
    nursery: trio.Nursery, args: argparse.Namespace, state: Any = None
) -> None:
    """In a server process: register tunnels; serve the admin API on
    ``--admin`` (one process) or on this worker's socket for the
    supervisor (``HIJACK_ADMIN_DIR``). With a Redis ``state`` it also
    answers for (and reaches) every other node."""
    worker_dir = os.environ.pop(ADMIN_DIR_ENV, "")
    if getattr(args, "admin", None) is None and not worker_dir:
        return
    tunnels.enable()
    token = read_token(args.admin_token_file)
    source: Source = LocalSource()
    from ..state._redis import RedisState

    if isinstance(state, RedisState):
        state.admin_node = tunnels.node
        state.publish = lambda: [r.as_json(tunnels.node) for r in tunnels.records()]
        state.end_local = _end_local
        source = NodesSource(state)
    server = Server(admin_handler(token, source), access_log=False)
    if worker_dir:
        path = os.path.join(worker_dir, f"{os.getpid()}.sock")
        await nursery.start(server.serve_unix, path)
        return
    await _serve_admin(nursery, server, args.admin)


async def _serve_admin(
    nursery: trio.Nursery, server: Server, address: tuple[str, int]
) -> None:
    await serve_side(nursery, server, address, "--admin", "/tunnels")


def workers_admin_dir(args: argparse.Namespace) -> str | None:
    """In the supervisor, before the workers start: a private directory for
    their admin sockets, named to them in ``HIJACK_ADMIN_DIR``."""
    if getattr(args, "admin", None) is None:
        return None
    import tempfile

    read_token(args.admin_token_file)  # a bad token file: fail before workers
    workers_dir = tempfile.mkdtemp(prefix="hijack-admin-")  # mode 0700
    os.environ[ADMIN_DIR_ENV] = workers_dir
    return workers_dir


async def start_supervisor_admin(
    nursery: trio.Nursery, args: argparse.Namespace, workers_dir: str
) -> None:
    """In the supervisor: the ``--admin`` listener over every worker."""
    token = read_token(args.admin_token_file)
    server = Server(
        admin_handler(token, WorkersSource(workers_dir, token)), access_log=False
    )
    await _serve_admin(nursery, server, args.admin)


# -- hijack tunnels ------------------------------------------------------------------


def add_tunnels_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin",
        required=True,
        metavar="HOST:PORT",
        help="the server's admin listener (its --admin)",
    )
    parser.add_argument(
        "--admin-token-file",
        required=True,
        metavar="FILE",
        help="the admin token, first line of FILE",
    )
    parser.add_argument("--user", help="only this user's tunnels")
    parser.add_argument(
        "--kind",
        metavar="KIND",
        help="only this kind (connect, tcp, wsbridge, socks, ...)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the JSON as the API answers it"
    )
    parser.add_argument("--end", metavar="ID", help="end the tunnel ID")


def tunnels_command(args: argparse.Namespace, line: CommandLine) -> int:
    import urllib.error
    import urllib.request

    token = read_token(args.admin_token_file).decode()
    base = f"http://{args.admin}"
    if args.end:
        method, url = "DELETE", f"{base}/tunnels/{urllib.parse.quote(args.end)}"
    else:
        query = {k: v for k, v in (("user", args.user), ("kind", args.kind)) if v}
        method, url = "GET", f"{base}/tunnels?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(
        url, method=method, headers={"authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=ASK_TIMEOUT) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().replace("\n", ": ")
        print(f"hijack tunnels: {detail}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"hijack tunnels: {args.admin}: {exc}", file=sys.stderr)
        return 1
    if args.end:
        print(f"ended {args.end}")
        return 0
    if args.json:
        sys.stdout.write(body.decode())
        return 0
    print(_table(json.loads(body)["tunnels"]))
    return 0


_COLUMNS = ("id", "kind", "user", "client", "target", "node", "age", "up", "down")


def _table(rows: list[dict[str, Any]]) -> str:
    import time

    now = time.time()
    cells = [
        [
            str(row["id"]),
            str(row["kind"]),
            str(row["user"] or "-"),
            str(row["client"]),
            str(row["target"]),
            str(row["node"]),
            f"{now - row['started']:.0f}s",
            str(row["bytes_up"]),
            str(row["bytes_down"]),
        ]
        for row in rows
    ]
    widths = [
        max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(_COLUMNS)
    ]
    lines = [
        "  ".join(c.upper().ljust(w) for c, w in zip(_COLUMNS, widths, strict=True))
    ]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


TUNNELS_COMMAND = Command(
    name="tunnels",
    help="list the live tunnels of a hijack server (its --admin API), or end one",
    description="List the live tunnels of a hijack server through its admin "
    "API (--admin), as a table, or end one with --end ID.",
    add_arguments=add_tunnels_arguments,
    run=tunnels_command,
)
