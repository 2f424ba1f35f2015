"""Two ``hijack proxy --state redis://`` nodes behind a real HAProxy (round
robin) and a real redis-server: the per-user and per-client limits hold in
total, a node killed with SIGKILL gives its tunnels back within the TTL,
Redis stopping refuses new tunnels (503, one log line, a metric) and
Redis coming back makes the limits hold again, with no restart."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ..cli.test_state_workers import TOKEN, admin, admin_port, open_tunnel
from ..cli.test_team_cli import users_file
from ..daemons import Daemons, free_port
from ..helpers import connect_from, read_head, read_until_closed, start_upstream
from ..hijack_process import HijackProcess, http_get, run_hijack
from ..redis_daemon import needs_redis, start_redis, stop
from ..upgrades.test_connect import basic, connect_head, status_of

HAPROXY = "/usr/sbin/haproxy"
pytestmark = [
    needs_redis,
    pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy not installed"),
]
TTL = 2.0


def haproxy_config(front: int, nodes: list[int]) -> str:
    servers = "\n".join(
        # No health check: a check timing out on a loaded machine would
        # take a node out and break the alternation; a dead node's refused
        # connect is retried on the other one (redispatch).
        f"    server node{n} 127.0.0.1:{port} send-proxy"
        for n, port in enumerate(nodes)
    )
    return f"""
global
    maxconn 200

defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 1
    option redispatch 1

frontend front
    bind 127.0.0.1:{front}
    default_backend nodes

backend nodes
    balance roundrobin
{servers}
"""


async def hold(stream: trio.SocketStream) -> None:
    async for _ in stream:
        pass


class Cluster:
    def __init__(
        self, front: int, target: str, nodes: list[HijackProcess], ports: list[int]
    ) -> None:
        self.front = front
        self.target = target
        self.nodes = nodes
        self.ports = ports
        self.open: list[trio.SocketStream] = []

    async def connect(self, source: str, user: str, node: int | None = None) -> int:
        """A CONNECT from ``source`` as ``user`` through HAProxy (or straight
        to ``node``, with the PROXY header HAProxy would send); a 200's
        tunnel stays open (``self.open``)."""
        port = self.front if node is None else self.ports[node]
        # Straight to a node: from 127.0.0.1, the one trusted PROXY sender.
        stream = await connect_from(
            source if node is None else "127.0.0.1", "127.0.0.1", port
        )
        head = connect_head(self.target, basic(user, user[::-1]))
        if node is not None:
            head = f"PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n".encode() + head
        await stream.send_all(head)
        try:
            head, _ = await read_head(stream)
        except (trio.BrokenResourceError, ValueError, AssertionError):
            await stream.aclose()
            return 0  # HAProxy met a dead node: no answer
        if status_of(head) == 200:
            self.open.append(stream)
        else:
            await stream.aclose()
        return status_of(head)


@contextlib.asynccontextmanager
async def cluster(
    nursery: trio.Nursery, daemons: Daemons, tmp_path: Path, redis_port: int
) -> AsyncIterator[Cluster]:
    upstream_port = await start_upstream(nursery, hold)
    users = tmp_path / "users.toml"
    users_file(users, upstream_port, "alice", "bob")
    ports = [free_port(), free_port()]
    common = ["--proxy-protocol", "127.0.0.1", "--users", str(users)]
    common += ["--state", f"redis://127.0.0.1:{redis_port}/0", "--state-ttl", str(TTL)]
    common += ["--max-tunnels-per-user", "2", "--max-tunnels-per-client", "1"]
    common += ["--metrics", "127.0.0.1:0"]
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for port in ports:
            args = ["proxy", "--listen", f"127.0.0.1:{port}", *common]
            nodes.append(
                await stack.enter_async_context(
                    run_hijack(args, stop_signal=signal.SIGINT)
                )
            )
        for node in nodes:
            await node.port()
        front = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(front, ports))
        await daemons.start(
            [HAPROXY, "-db", "-f", str(config)], listening=[("127.0.0.1", front)]
        )
        state = Cluster(front, f"127.0.0.1:{upstream_port}", nodes, ports)
        try:
            yield state
        finally:
            for stream in state.open:
                await stream.aclose()


async def test_two_nodes_share_limits_survive_a_dead_node_and_redis_outage(
    nursery: trio.Nursery, daemons: Daemons, tmp_path: Path
) -> None:
    redis, redis_port = await start_redis(daemons, tmp_path)
    async with cluster(nursery, daemons, tmp_path, redis_port) as nodes:
        # Through HAProxy (round robin): per user 2 in total, per client 1.
        assert await nodes.connect("127.0.0.2", "alice") == 200
        assert await nodes.connect("127.0.0.3", "alice") == 200
        assert await nodes.connect("127.0.0.4", "alice") == 429  # user
        assert await nodes.connect("127.0.0.3", "bob") == 429  # client
        assert await nodes.connect("127.0.0.5", "bob") == 200
        assert await nodes.connect("127.0.0.5", "bob") == 429  # client
        # Whichever node HAProxy gave what, each node, asked straight,
        # refuses alice a third tunnel and client .5 a second one.
        for node in (0, 1):
            assert await nodes.connect("127.0.0.8", "alice", node) == 429
            assert await nodes.connect("127.0.0.5", "bob", node) == 429
        with trio.fail_after(30):  # the ten access lines, written in batches
            # Another process's output: polled.
            while sum(n.stderr.count('"CONNECT ') for n in nodes.nodes) < 10:  # noqa: ASYNC110
                await trio.sleep(0.05)
        one, two = (node.stderr for node in nodes.nodes)
        assert re.search(r"limited \[user alice has 2", one)
        assert re.search(r"limited \[user alice has 2", two)
        assert re.search(r"limited \[client 127\.0\.0\.5 has 1", one)
        assert re.search(r"limited \[client 127\.0\.0\.5 has 1", two)

        # kill -9 node A, the one with alice's first tunnel (the access log
        # names the client when a tunnel opens): its leases run out within
        # the TTL, and alice gets a tunnel again, on node B.
        a = 0 if "127.0.0.2 - alice" in one else 1
        os.kill(nodes.nodes[a].process.pid, signal.SIGKILL)
        with trio.fail_after(TTL + 6):
            # Each try asks Redis, where a lease runs out silently: polled.
            while await nodes.connect("127.0.0.6", "alice", 1 - a) != 200:  # noqa: ASYNC110
                await trio.sleep(0.1)

        # Redis goes: node B refuses new limited tunnels (503), says so once
        # and in its metrics.
        survivor = nodes.nodes[1 - a]
        metrics = await survivor.metrics_port()
        await stop(redis)
        with trio.fail_after(5):
            assert await nodes.connect("127.0.0.8", "bob", 1 - a) == 503
        await survivor.wait_for(r"state: Redis \S+ unavailable", stream="stderr")
        _, body = await http_get(metrics, "/metrics")
        assert b"hijack_state_available 0.0" in body
        assert b"hijack_state_unavailable_total 1.0" in body

        # Redis comes back (empty): node B writes its live leases again, and
        # the limits hold again with no restart: alice gets only what her
        # live tunnels on B leave of her 2.
        await start_redis(daemons, tmp_path, port=redis_port)
        await survivor.wait_for(r"state: Redis \S+ answers again", stream="stderr")
        assert len(re.findall(r"state: Redis", survivor.stderr)) == 2
        alice_live = 1 + ("127.0.0.3 - alice" in survivor.stderr)  # .6, and .3?
        granted = [await nodes.connect(f"127.0.0.{n}", "alice", 1 - a) for n in (9, 10)]
        assert granted == [200] * (2 - alice_live) + [429] * alice_live
        assert await nodes.connect("127.0.0.11", "bob", 1 - a) == 200
        _, body = await http_get(metrics, "/metrics")
        assert b"hijack_state_available 1.0" in body


async def test_wrong_redis_password_is_one_line_and_exit_2(
    daemons: Daemons, tmp_path: Path
) -> None:
    _, port = await start_redis(daemons, tmp_path, password="right-one")
    password = tmp_path / "password"
    password.write_text("wrong-one\n")
    args = ["proxy", "--listen", "127.0.0.1:0", "--max-tunnels-per-client", "1"]
    args += ["--state", f"redis://127.0.0.1:{port}/0"]
    args += ["--state-password-file", str(password)]
    async with run_hijack(args) as proxy:
        assert await proxy.wait() == 2
        await proxy.output_closed.wait()
    lines = proxy.stderr.splitlines()
    assert len(lines) == 1, proxy.stderr
    assert lines[0].startswith(f"hijack proxy: --state redis://127.0.0.1:{port}/0: ")
    assert "wrong-one" not in proxy.stderr


async def test_admin_of_one_node_lists_and_ends_the_other_nodes_tunnels(
    nursery: trio.Nursery, daemons: Daemons, tmp_path: Path
) -> None:
    _, redis_port = await start_redis(daemons, tmp_path)
    upstream_port = await start_upstream(nursery, hold)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    args = ["proxy", "--listen", "127.0.0.1:0", "--allow-private"]
    args += ["--allow-port", str(upstream_port), "--max-tunnels-per-client", "4"]
    args += ["--state", f"redis://127.0.0.1:{redis_port}/0", "--state-ttl", str(TTL)]
    args += ["--admin", "127.0.0.1:0", "--admin-token-file", str(token)]
    target = f"127.0.0.1:{upstream_port}"
    async with (
        run_hijack(args, stop_signal=signal.SIGINT) as one,
        run_hijack(args, stop_signal=signal.SIGINT) as two,
    ):
        status, on_two = await open_tunnel(await two.port(), target)
        assert status == 200
        status, on_one = await open_tunnel(await one.port(), target)
        assert status == 200
        control = await admin_port(one)
        # Node two publishes its tunnels every second: listed from node one.
        with trio.fail_after(10):
            while True:
                _, body = await admin(control, "GET", "/tunnels")
                rows = json.loads(body)["tunnels"]
                if len(rows) == 2:
                    break
                await trio.sleep(0.1)
        nodes = {str(row["node"]).rpartition("/")[2] for row in rows}
        assert nodes == {str(one.process.pid), str(two.process.pid)}
        (remote,) = [r for r in rows if r["node"].endswith(f"/{two.process.pid}")]
        assert (await admin(control, "DELETE", f"/tunnels/{remote['id']}"))[0] == 204
        with trio.fail_after(10):
            assert await read_until_closed(on_two) == b""
        await on_one.aclose()
        await on_two.aclose()
