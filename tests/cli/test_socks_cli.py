"""``hijack socks`` and ``hijack proxy --socks`` as real processes, with real
SOCKS5 clients: proxychains4 running curl and redis-cli, ncat
--proxy-type socks5, Dante's socksify running kdig over UDP ASSOCIATE to a
real dnsmasq; the start-up rule on authentication; SIGHUP reloading users;
the metrics counting SOCKS tunnels."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import trio

from hijack.tunnel.users import hash_password

from ..conftest import StartServer
from ..daemons import Daemons, free_port
from ..hijack_process import http_get, run_hijack
from ..upgrades.test_connect import CURL, hello

pytestmark = pytest.mark.usefixtures("no_leaks")

PROXYCHAINS = "/usr/bin/proxychains4"
NCAT = "/usr/bin/ncat"
SOCKSIFY = "/usr/bin/socksify"
KDIG = "/usr/bin/kdig"
DNSMASQ = "/usr/sbin/dnsmasq"
REDIS = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


async def run(
    command: list[str], *, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            command,
            stdin=stdin,
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def start_redis(daemons: Daemons, tmp: Path) -> int:
    port = free_port()
    await daemons.start(
        [
            REDIS,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp),
        ],
        listening=[("127.0.0.1", port)],
    )
    return port


async def start_dnsmasq(daemons: Daemons, tmp: Path) -> int:
    """dnsmasq answering example.test with 192.0.2.7, nothing else, on a
    loopback port (no system service, no upstream, no hosts file)."""
    port = free_port()
    await daemons.start(
        [
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--address=/example.test/192.0.2.7",
            f"--pid-file={tmp / 'dnsmasq.pid'}",
            "--user=",
        ],
        listening=[("127.0.0.1", port)],  # dnsmasq also serves TCP
    )
    return port


def proxychains_conf(tmp: Path, port: int, auth: str = "") -> Path:
    conf = tmp / "proxychains.conf"
    conf.write_text(
        "strict_chain\nquiet_mode\ntcp_read_time_out 15000\n"
        f"tcp_connect_time_out 8000\n[ProxyList]\nsocks5 127.0.0.1 {port} {auth}\n"
    )
    return conf


async def test_proxychains_runs_curl_and_redis_cli(
    start_server: StartServer, daemons: Daemons, tmp_path: Path
) -> None:
    _, origin = await start_server(hello)
    redis = await start_redis(daemons, tmp_path)
    users = tmp_path / "users.toml"
    users.write_text(
        f'[users.alice]\npassword = "{hash_password("a-pw", n=16, r=1, p=1)}"\n'
        'allow = ["127.0.0.1"]\n'
    )
    args = ["socks", "--listen", "127.0.0.1:0", "--users", str(users)]
    args += ["--allow-port", str(origin), "--allow-port", str(redis)]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        port = await hijack.port()
        conf = proxychains_conf(tmp_path, port, "alice a-pw")
        got = await run(
            [
                PROXYCHAINS,
                "-q",
                "-f",
                str(conf),
                CURL,
                "-sS",
                f"http://127.0.0.1:{origin}/",
            ]
        )
        assert got.stdout == b"hello through the tunnel\n", got.stderr
        got = await run(
            [
                PROXYCHAINS,
                "-q",
                "-f",
                str(conf),
                REDIS_CLI,
                "-h",
                "127.0.0.1",
                "-p",
                str(redis),
                "ping",
            ]
        )
        assert got.stdout.strip() == b"PONG", got.stderr
        await hijack.wait_for(
            r"socks5 .* user=alice -> 127\.0\.0\.1:\d+ .* ok", stream="stderr"
        )


async def test_ncat_through_hijack_socks(daemons: Daemons, tmp_path: Path) -> None:
    redis = await start_redis(daemons, tmp_path)
    args = [
        "socks",
        "--listen",
        "127.0.0.1:0",
        "--allow-private",
        "--allow-port",
        str(redis),
    ]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        port = await hijack.port()
        got = await run(
            [
                NCAT,
                "--proxy-type",
                "socks5",
                "--proxy",
                f"127.0.0.1:{port}",
                "127.0.0.1",
                str(redis),
            ],
            stdin=b"PING\r\nQUIT\r\n",
        )
        assert got.stdout.startswith(b"+PONG\r\n"), got.stderr


async def test_socksify_kdig_over_udp_associate(
    daemons: Daemons, tmp_path: Path
) -> None:
    """Dante's socksify sends kdig's UDP query through UDP ASSOCIATE; dnsmasq
    answers; the association is logged with its datagrams."""
    dns = await start_dnsmasq(daemons, tmp_path)
    args = [
        "socks",
        "--listen",
        "127.0.0.1:0",
        "--allow-private",
        "--allow-port",
        str(dns),
    ]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        port = await hijack.port()
        conf = tmp_path / "socks.conf"
        conf.write_text(
            "route {\n from: 0.0.0.0/0 to: 0.0.0.0/0 via: 127.0.0.1 port = "
            f"{port}\n proxyprotocol: socks_v5\n method: none\n"
            " protocol: udp tcp\n}\n"
        )
        env = {
            "SOCKS_CONF": str(conf),
            "SOCKS_AUTOADD_LANROUTES": "no",
            "PATH": "/usr/bin:/bin",
        }
        got = await run(
            [
                SOCKSIFY,
                KDIG,
                "@127.0.0.1",
                "-p",
                str(dns),
                "+notcp",
                "+short",
                "+timeout=5",
                "example.test",
                "A",
            ],
            env=env,
        )
        assert got.stdout.strip() == b"192.0.2.7", (got.stdout, got.stderr)
        await hijack.wait_for(r"socks5-udp .* ok datagrams=1/1", stream="stderr")


async def test_proxy_socks_serves_both_on_one_port(start_server: StartServer) -> None:
    _, origin = await start_server(hello)
    args = ["proxy", "--socks", "--listen", "127.0.0.1:0", "--allow-private"]
    args += ["--allow-port", str(origin), "--metrics", "127.0.0.1:0"]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        port = await hijack.port()
        url = f"http://127.0.0.1:{origin}/"
        socks = await run([CURL, "-sS", "--socks5", f"127.0.0.1:{port}", url], env={})
        connect = await run([CURL, "-sS", "-p", "-x", f"127.0.0.1:{port}", url], env={})
        assert socks.stdout == connect.stdout == b"hello through the tunnel\n"
        metrics_port = await hijack.metrics_port()
        wanted = [
            f'hijack_tunnels_total{{kind="{kind}",outcome="ok",port="{origin}"}} 1.0'
            for kind in ("socks5", "connect")
        ]
        with trio.fail_after(10):
            while True:  # the tunnels are counted when they end
                status, body = await http_get(metrics_port, "/metrics")
                if all(line.encode() in body for line in wanted):
                    break
                await trio.sleep(0.05)
        assert status == 200


@pytest.mark.parametrize("command", ["socks", "proxy --socks"])
async def test_no_auth_off_loopback_refused_at_start(command: str) -> None:
    args = [*command.split(), "--listen", "0.0.0.0:0"]
    async with run_hijack(args) as hijack:
        assert await hijack.wait(30) == 2
    [line] = hijack.stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"hijack {command.split()[0]}: SOCKS5 without")
    assert "--socks-without-auth" in line and "--users" in line


async def test_sighup_reloads_the_users_file(
    start_server: StartServer, tmp_path: Path
) -> None:
    _, origin = await start_server(hello)
    users = tmp_path / "users.toml"

    def write(name: str) -> None:
        users.write_text(
            f'[users.{name}]\npassword = "{hash_password("pw", n=16, r=1, p=1)}"\n'
        )

    write("alice")
    args = ["socks", "--listen", "127.0.0.1:0", "--users", str(users)]
    args += ["--allow-private", "--allow-port", str(origin)]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        port = await hijack.port()
        url = f"http://127.0.0.1:{origin}/"

        async def as_user(name: str) -> bytes:
            got = await run(
                [
                    CURL,
                    "-sS",
                    "--socks5",
                    f"127.0.0.1:{port}",
                    "--proxy-user",
                    f"{name}:pw",
                    url,
                ],
                env={},
            )
            return got.stdout

        assert await as_user("alice") == b"hello through the tunnel\n"
        assert await as_user("bob") == b""
        write("bob")
        hijack.signal(signal.SIGHUP)
        with trio.fail_after(10):
            while await as_user("bob") != b"hello through the tunnel\n":  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert await as_user("alice") == b""


SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"


async def start_sshd(daemons: Daemons, tmp: Path) -> tuple[int, Path]:
    """sshd on a loopback port with its own host key, one authorized client
    key (returned), no password login and no file outside ``tmp`` (but the
    privilege separation directory it insists on)."""
    for name in ("host_key", "client_key"):
        await run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)])
    (tmp / "authorized_keys").write_bytes((tmp / "client_key.pub").read_bytes())
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPidFile {tmp / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\n"
    )
    await daemons.start(
        [SSHD, "-D", "-e", "-f", str(config)], listening=[("127.0.0.1", port)]
    )
    return port, tmp / "client_key"


async def test_ssh_through_ncat_as_proxy_command(
    daemons: Daemons, tmp_path: Path
) -> None:
    """ssh -o ProxyCommand='ncat --proxy-type socks5 ...' reaches sshd
    through hijack socks (with credentials)."""
    import getpass

    sshd, key = await start_sshd(daemons, tmp_path)
    args = ["socks", "--listen", "127.0.0.1:0", "--auth", "alice:a-pw"]
    args += ["--allow-private", "--allow-port", str(sshd)]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        port = await hijack.port()
        proxy = (
            f"{NCAT} --proxy-type socks5 --proxy 127.0.0.1:{port} "
            "--proxy-auth alice:a-pw %h %p"
        )
        got = await run(
            [
                SSH,
                "-F",
                "/dev/null",
                "-i",
                str(key),
                "-p",
                str(sshd),
                "-o",
                f"ProxyCommand={proxy}",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                f"{getpass.getuser()}@127.0.0.1",
                "echo",
                "through socks",
            ]
        )
        assert got.stdout == b"through socks\n", got.stderr
        await hijack.wait_for(
            rf"socks5 .* -> 127\.0\.0\.1:{sshd} .* ok", stream="stderr"
        )
