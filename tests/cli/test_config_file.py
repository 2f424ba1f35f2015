"""``--config FILE.toml`` (flags win), ``--tls-cert/--tls-key``, and SIGHUP
reloading the policy and the certificates without dropping connections."""

from __future__ import annotations

import argparse
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from hijack import Request, Response
from hijack.cli._command import StartupError
from hijack.cli._config_file import with_config_file
from hijack.cli._main import build_parser

from ..conftest import StartServer
from ..helpers import read_until
from ..hijack_process import http_get, run_hijack


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    return parser.parse_args(with_config_file(parser, argv))


def test_file_options_and_flags_that_override_them(tmp_path: Path) -> None:
    config = tmp_path / "hijack.toml"
    config.write_text(
        'listen = "127.0.0.1:9999"\n'
        "allow-port = [8443, 9443]\n"
        "allow_private = true\n"
        "max-tunnels = 5\n"
        "workers = 3\n"
        'metrics = "127.0.0.1:9100"\n'
        'log-level = "DEBUG"\n'
    )
    args = _parse(["proxy", "--config", str(config)])
    assert args.log_level == "DEBUG"  # an option of the hijack command itself
    assert (
        _parse(["--log-level", "ERROR", "proxy", "--config", str(config)]).log_level
        == "ERROR"
    )
    assert args.listen == ("127.0.0.1", 9999)
    assert args.allow_port == [8443, 9443]
    assert args.allow_private is True
    assert (args.max_tunnels, args.workers) == (5, 3)
    assert args.metrics == ("127.0.0.1", 9100)
    args = _parse(
        ["proxy", f"--config={config}", "--allow-port", "1", "--max-tunnels", "7"]
    )
    assert args.allow_port == [1]  # replaced, not added
    assert args.max_tunnels == 7
    args = _parse(["proxy", "--config", str(config), "--unix", "/tmp/x.sock"])
    assert args.unix == "/tmp/x.sock"  # the file's listen yields


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nonsense = 1\n", "unknown option 'nonsense'"),
        ('max-tunnels = "many"\n', "bad.toml: max-tunnels: expected a whole number"),
        ("workers = 2.5\n", "bad.toml: workers: expected a whole number, got '2.5'"),
        ("allow-port = [99999]\n", "bad.toml: allow-port: a port is 1 to 65535"),
        ('access-log-format = "xml"\n', "bad.toml: access-log-format: invalid choice"),
        ('listen = "127.0.0.1:0"\n\udcff\n', "bad.toml: 'utf-8' codec can't decode"),
        ("max-tunnels = [1, 2]\n", "takes one value"),
        ("allow-private = 1\n", "must be true or false"),
        ("listen = \n", "Invalid value"),
    ],
)
def test_bad_config_files_get_a_clear_error(
    tmp_path: Path, text: str, error: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(text.encode(errors="surrogateescape"))  # \udcff: byte 0xff
    with pytest.raises(StartupError, match=error):
        _parse(["proxy", "--config", str(config)])


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"none\.toml"):
        _parse(["echo", "--config", str(tmp_path / "none.toml")])


async def _echo_upstream(start_server: StartServer) -> int:
    async def echo(request: Request) -> Response | None:
        hijacked = await request.hijack(Response(101, [("upgrade", "echo")]))
        async with hijacked:
            async for chunk in hijacked:
                await hijacked.send_all(chunk)
        return None

    return (await start_server(echo))[1]


async def _connect(port: int, target: int) -> tuple[trio.SocketStream, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    return stream, await read_until(stream, b"\r\n\r\n")


async def test_sighup_reloads_the_policy_keeping_open_tunnels(
    tmp_path: Path, start_server: StartServer
) -> None:
    upstream = await _echo_upstream(start_server)
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\nallow-private = true\nallow-port = [{upstream}]\n'
    )
    async with run_hijack(["proxy", "--config", str(config)]) as hijack:
        port = await hijack.port()
        tunnel, head = await _connect(port, upstream)
        assert head.startswith(b"HTTP/1.1 200 ")
        await tunnel.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\n\r\n")
        await read_until(tunnel, b"\r\n\r\n")
        config.write_text('listen = "127.0.0.1:0"\nallow-private = true\n')
        hijack.signal(signal.SIGHUP)
        await hijack.wait_for(r"hijack INFO reloaded", stream="stderr")
        refused, head = await _connect(port, upstream)
        await refused.aclose()
        assert head.startswith(b"HTTP/1.1 403 ")  # the new policy: 443 only
        await tunnel.send_all(b"still here")  # the old tunnel: untouched
        assert await read_until(tunnel, b"still here") == b"still here"
        await tunnel.aclose()
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0


def _serial(stream: trio.SSLStream[trio.SocketStream]) -> int:
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_tls_and_a_certificate_reload(tmp_path: Path, workers: str) -> None:
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = ca.issue_cert("127.0.0.1")
    first.cert_chain_pems[0].write_to_path(str(cert))
    first.private_key_pem.write_to_path(str(key))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    args = ["echo", "--listen", "127.0.0.1:0", "--workers", workers]
    args += ["--tls-cert", str(cert), "--tls-key", str(key)]

    async def open_tls(port: int) -> trio.SSLStream[trio.SocketStream]:
        raw = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(raw, client_context, server_hostname="127.0.0.1")
        await stream.do_handshake()
        return stream

    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    async with run_hijack(args) as hijack:
        assert (await hijack.wait_for(r"listening on (https)://"))[1] == "https"
        port = await hijack.port()
        old = await open_tls(port)
        await old.send_all(request)
        await read_until(old, b"</html>")
        assert _serial(old) == _serial_of(first)
        second = ca.issue_cert("127.0.0.1")
        second.cert_chain_pems[0].write_to_path(str(cert))
        second.private_key_pem.write_to_path(str(key))
        hijack.signal(signal.SIGHUP)
        if workers == "1":
            await hijack.wait_for("reloaded", stream="stderr")
        else:
            # Until an old worker has taken its SIGTERM, it may still accept
            # (and serve, with the certificate it has): wait for them to go.
            for pid in await hijack.pids():
                await hijack.wait_for(rf"worker {pid} exited", stream="stderr")
        new = await open_tls(port)
        assert _serial(new) == _serial_of(second)
        await new.send_all(request)
        assert (await read_until(new, b"</html>")).startswith(b"HTTP/1.1 200 ")
        await new.aclose()
        if workers == "1":  # the same process: the open connection goes on
            await old.send_all(request)
            assert (await read_until(old, b"</html>")).startswith(b"HTTP/1.1 200 ")
        await trio.aclose_forcefully(old)
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0


def _serial_of(cert: trustme.LeafCert) -> int:
    from cryptography import x509

    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).serial_number


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_broken_file_on_reload_keeps_the_running_server(
    tmp_path: Path, workers: str
) -> None:
    config = tmp_path / "echo.toml"
    config.write_text(f'listen = "127.0.0.1:0"\nworkers = {workers}\n')
    async with run_hijack(["echo", "--config", str(config)]) as hijack:
        port = await hijack.port()
        config.write_text("max-tunnels = \n")  # not TOML
        hijack.signal(signal.SIGHUP)
        await hijack.wait_for(r"reload failed, keeping the running", stream="stderr")
        assert (await http_get(port))[0] == 200
        if workers == "2":
            assert "reload done" not in hijack.stderr
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", "none.pem", "--tls-key", "none.key"],
            "--tls-cert none.pem --tls-key none.key: No such file",
        ),
    ],
)
def test_tls_options_errors(tmp_path: Path, flags: list[str], error: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hijack", "echo", "--listen", "127.0.0.1:0", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr == f"hijack echo: {error}\n" or error in done.stderr
    assert done.stderr.count("\n") == 1
