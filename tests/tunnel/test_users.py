"""Users and their rules: the users file, password hashes, per-user policy,
the CONNECT proxy and the TCP upgrade with users, and the hostile cases (a
user trying another user's destination, a timing probe on unknown names)."""

from __future__ import annotations

import base64
import ipaddress
import logging
import statistics
import time
from pathlib import Path

import pytest
import trio

from hijack.cli._metrics import Metrics
from hijack.tunnel.users import (
    PasswordHash,
    User,
    Users,
    UsersFileError,
    hash_password,
    load_users,
)
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy, ConnectRefused
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..helpers import (
    banner,
    capture_log,
    exchange,
    read_head,
    read_until_closed,
    start_upstream,
)
from ..upgrades.test_connect import (
    basic,
    connect_head,
    curl_through,
    hello,
    status_of,
)

# Cheap scrypt for tests: the cost is part of each hash, so the code paths are
# the same as with the default cost.
CHEAP = {"n": 16, "r": 1, "p": 1}


def cheap_hash(password: str) -> str:
    return hash_password(password, **CHEAP)


def write_users(path: Path, **users: dict[str, object]) -> Path:
    lines = []
    for name, entry in users.items():
        lines.append(f"[users.{name}]")
        for key, value in entry.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = f'"{value}"'
            elif isinstance(value, list | tuple):
                text = "[" + ", ".join(repr(v).replace("'", '"') for v in value) + "]"
            else:
                text = str(value)
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- hashes and the file ----------------------------------------------------------


def test_hash_round_trip_and_salt() -> None:
    first, second = cheap_hash("s3cret"), cheap_hash("s3cret")
    assert first != second  # salted
    parsed = PasswordHash.parse(first)
    assert str(parsed) == first
    assert parsed.cost == (16, 1, 1)
    assert parsed.matches(b"s3cret")
    assert not parsed.matches(b"s3cret ")


def test_default_hash_is_scrypt_with_a_real_cost() -> None:
    parsed = PasswordHash.parse(hash_password("x"))
    assert parsed.cost == (2**15, 8, 1)
    assert len(parsed.salt) == 16


@pytest.mark.parametrize(
    "text",
    [
        "s3cret",  # plain text is not a hash
        "bcrypt$n=16,r=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$n=15,r=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",  # not a power of 2
        "scrypt$n=2097152,r=8,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",  # too costly
        "scrypt$n=16,r=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$n=16,r=1,p=1$!!$AAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$n=16,r=1,p=1$AAAA$AAAAAAAAAAAAAAAAAAAAAA",  # salt too short
    ],
)
def test_bad_hashes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"hash|scrypt"):
        PasswordHash.parse(text)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"password": "s3cret"}, "not a hijack password hash"),
        ({}, "password .a hash. is required"),
        ({"password": "HASH", "alow": ["x"]}, "unknown keys"),
        ({"password": "HASH", "allow": "example.com"}, "list of strings"),
        ({"password": "HASH", "allow": ["1.2.3.4.5"]}, "not a valid address"),
        ({"password": "HASH", "ports": [0]}, "ports"),
        ({"password": "HASH", "max_tunnels": 0}, "positive integer"),
        ({"password": "HASH", "bandwidth": True}, "positive integer"),
        ({"password": "HASH", "allow_public": "no"}, "true or false"),
    ],
)
def test_bad_users_files_say_why(
    tmp_path: Path, entry: dict[str, object], message: str
) -> None:
    if entry.get("password") == "HASH":
        entry["password"] = cheap_hash("x")
    path = write_users(tmp_path / "users.toml", alice=entry)
    with pytest.raises(UsersFileError, match=message) as info:
        load_users(path)
    assert str(path) in str(info.value) and "alice" in str(info.value)


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[users.alice\n")
    with pytest.raises(UsersFileError, match=r"users\.toml"):
        Users(path)
    with pytest.raises(UsersFileError, match="No such file"):
        Users(tmp_path / "missing.toml")


# -- per-user policy ------------------------------------------------------------------


def user(name: str = "alice", **rules: object) -> User:
    return User(name, PasswordHash.parse(cheap_hash("pw")), **rules)  # type: ignore[arg-type]


def test_user_rules_on_top_of_the_global_policy() -> None:
    base = ConnectPolicy(deny=["8.8.4.4"], allow=["10.0.0.1"])
    alice = user(
        allow=("10.1.0.0/16", "8.8.4.4"),
        deny=("1.1.1.1",),
        ports=frozenset({443, 5432}),
    )
    policy = alice.policy(base)
    # Her explicit allow reaches a private network; the global allow stays.
    policy.check_port(5432)
    policy.check_address(ip("10.1.2.3"))
    policy.check_address(ip("10.0.0.1"))
    # Deny still wins: the global deny over her allow, and her own deny.
    for refused in ("8.8.4.4", "1.1.1.1", "10.2.0.1"):
        with pytest.raises(ConnectRefused, match=r"denied|not a global"):
            policy.check_address(ip(refused))
    # Another user gets none of her rules.
    bob = user("bob").policy(base)
    with pytest.raises(ConnectRefused, match="not a global"):
        bob.check_address(ip("10.1.2.3"))
    with pytest.raises(ConnectRefused, match="port 5432"):
        bob.check_port(5432)


def test_allow_public_false_makes_allow_an_allowlist() -> None:
    policy = user(allow=(".example.com",), allow_public=False).policy(ConnectPolicy())
    policy.check_address(ip("93.184.216.34"), name="www.example.com")
    with pytest.raises(ConnectRefused, match="not in the allow list"):
        policy.check_address(ip("93.184.216.34"), name="example.org")


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- authentication ---------------------------------------------------------------


@pytest.fixture
def counted_derivations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every scrypt derivation's cost, in order: the work a check did."""
    calls: list[tuple[int, int, int]] = []
    derive = PasswordHash.derive

    def counting(self: PasswordHash, password: bytes) -> bytes:
        calls.append(self.cost)
        return derive(self, password)

    monkeypatch.setattr(PasswordHash, "derive", counting)
    return calls


async def test_check_basic(counted_derivations: list[tuple[int, int, int]]) -> None:
    users = Users.from_mapping([user("alice")])
    counted_derivations.clear()  # hashing the password was one
    assert (await users.check_basic(header("alice", "pw"))) == users.get("alice")
    assert await users.check_basic(header("alice", "wrong")) is None
    assert await users.check_basic(header("mallory", "pw")) is None
    for malformed in [
        "Bearer x",
        "Basic !!!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "",
    ]:
        assert await users.check_basic(malformed) is None
    assert len(counted_derivations) == 3  # malformed headers cost nothing


async def test_timing_probe_unknown_user_does_the_same_work(
    counted_derivations: list[tuple[int, int, int]],
) -> None:
    """A known name with a wrong password and an unknown name each cost one
    derivation of the same scrypt cost: counted, not timed."""
    strong = User("alice", PasswordHash.parse(hash_password("pw", n=64, r=2, p=1)))
    odd = User("carol", PasswordHash.parse(hash_password("pw", n=32, r=1, p=1)))
    bob = User("bob", PasswordHash.parse(hash_password("pw", n=64, r=2, p=1)))
    users = Users.from_mapping([strong, odd, bob])
    for probe in ("alice", "nobody", "bob", "al1ce", "x" * 200):
        counted_derivations.clear()
        assert await users.check_basic(header(probe, "guess")) is None
        assert counted_derivations == [(64, 2, 1)], probe


async def test_timing_probe_medians(tmp_path: Path) -> None:
    """The same, measured: interleaved checks of a known and an unknown
    name; medians within a generous factor (a leak would be ~100x: no hash)."""
    cost = {"n": 2**12, "r": 8, "p": 1}  # ~4 MiB, a few ms per check
    users = Users.from_mapping(
        [User("alice", PasswordHash.parse(hash_password("pw", **cost)))]
    )
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(15):
        for name, samples in (("alice", known), ("nobody", unknown)):
            started = time.perf_counter()
            assert await users.check_basic(header(name, "guess")) is None
            samples.append(time.perf_counter() - started)
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.33 < ratio < 3, (statistics.median(known), statistics.median(unknown))


async def test_good_credentials_are_remembered_wrong_ones_never(
    counted_derivations: list[tuple[int, int, int]],
) -> None:
    users = Users.from_mapping([user("alice")])
    counted_derivations.clear()
    for _ in range(3):
        assert await users.check_basic(header("alice", "pw")) is not None
        assert await users.check_basic(header("alice", "bad")) is None
    assert len(counted_derivations) == 1 + 3


async def test_reload_keeps_old_users_on_a_broken_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_users(tmp_path / "users.toml", alice={"password": cheap_hash("pw")})
    users = Users(path)
    assert await users.check_basic(header("alice", "pw")) is not None
    path.write_text("[users.bob]\npassword = 'plain text'\n")
    with caplog.at_level(logging.ERROR, logger="hijack.users"):
        assert users.reload() is False
    assert "keeping the old users" in caplog.text and "bob" in caplog.text
    assert users.names == ["alice"]
    write_users(path, bob={"password": cheap_hash("pw2")})
    assert users.reload() is True
    assert users.names == ["bob"]
    # Remembered credentials are forgotten with the old file.
    assert await users.check_basic(header("alice", "pw")) is None
    assert await users.check_basic(header("bob", "pw2")) is not None


# -- the CONNECT proxy with users ---------------------------------------------------------


async def test_each_user_reaches_only_their_destinations(
    nursery: trio.Nursery, start_server: StartServer, tmp_path: Path
) -> None:
    """Hostile: bob, with a valid password, tries alice's destination."""
    _, alice_port = await start_server(hello)
    _, bob_port = await start_server(hello)
    path = write_users(
        tmp_path / "users.toml",
        alice={
            "password": cheap_hash("a-pw"),
            "allow": ["127.0.0.1"],
            "ports": [alice_port],
        },
        bob={
            "password": cheap_hash("b-pw"),
            "allow": ["127.0.0.1"],
            "ports": [bob_port],
        },
    )
    metrics = Metrics()
    proxy = ConnectProxy(users=Users(path), on_tunnel=metrics.on_tunnel)
    _, proxy_port = await start_server(proxy)

    with capture_log("hijack.connect") as log:
        ok = await curl_through(proxy_port, alice_port, "--proxy-user", "alice:a-pw")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == b"hello through the tunnel\n"
        for who, port in (("bob:b-pw", alice_port), ("alice:a-pw", bob_port)):
            refused = await curl_through(proxy_port, port, "--proxy-user", who, "-v")
            assert refused.returncode != 0
            assert b"< HTTP/1.1 403" in refused.stderr
        with trio.fail_after(10):
            while len(log.records) < 3:
                log.logged = trio.Event()
                await log.logged.wait()
    lines = [r.getMessage() for r in log.records]
    assert any("user=alice" in line and " ok " in line for line in lines), lines
    assert any("user=bob" in line and " refused " in line for line in lines), lines
    assert [r.user for r in log.records].count("alice") == 2  # type: ignore[attr-defined]
    # The user is a metrics label too (bounded: only users of the file).
    count = metrics.registry.get_sample_value
    assert count("hijack_user_tunnels_total", {"user": "alice", "outcome": "ok"}) == 1
    assert (
        count("hijack_user_tunnels_total", {"user": "bob", "outcome": "refused"}) == 1
    )


@pytest.mark.parametrize(
    "credentials", [None, ("alice", "wrong"), ("nobody", "a-pw"), ("alice:x", "")]
)
async def test_wrong_or_missing_credentials_get_407(
    start_server: StartServer, credentials: tuple[str, str] | None
) -> None:
    users = Users.from_mapping(
        [User("alice", PasswordHash.parse(cheap_hash("a-pw")), allow=("127.0.0.1",))]
    )
    _, port = await start_server(ConnectProxy(users=users, realm="team"))
    headers = [basic(*credentials)] if credentials else []
    # The 407 keeps the connection open for a retry: half-close to end it.
    raw = connect_head("127.0.0.1:443", *headers)
    response = await exchange(port, raw, half_close=True)
    assert status_of(response) == 407
    assert b'\r\nproxy-authenticate: Basic realm="team"\r\n' in response


def test_auth_and_users_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        ConnectProxy(auth=("a", "b"), users=Users.from_mapping([]))


# -- the TCP upgrade with users ---------------------------------------------------------


def upgrade_head(*headers: str) -> bytes:
    lines = [
        "GET / HTTP/1.1",
        "Host: x",
        "Connection: Upgrade",
        "Upgrade: tcp",
        *headers,
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


async def test_tcp_upgrade_with_users(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    upstream_port = await start_upstream(nursery, banner(b"db says hi"))
    users = Users.from_mapping(
        [
            User("alice", PasswordHash.parse(cheap_hash("a-pw"))),
            User("bob", PasswordHash.parse(cheap_hash("b-pw")), deny=("127.0.0.1",)),
        ]
    )
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port), users=users))
    auth = "Authorization: " + header("alice", "a-pw")
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(upgrade_head(auth))
        head, rest = await read_head(client)
        assert status_of(head) == 101
        assert rest + await read_until_closed(client) == b"db says hi"

    missing = await exchange(port, upgrade_head(), half_close=True)
    assert status_of(missing) == 401
    assert b'\r\nwww-authenticate: Basic realm="hijack"\r\n' in missing
    wrong = await exchange(
        port, upgrade_head("Authorization: " + header("alice", "x")), half_close=True
    )
    assert status_of(wrong) == 401
    with capture_log("hijack.tcp") as log:
        denied = await exchange(
            port, upgrade_head("Authorization: " + header("bob", "b-pw"))
        )
    assert status_of(denied) == 403
    assert "user=bob -> 127.0.0.1" in log.records[-1].getMessage()


async def test_407_then_retry_as_a_user_on_the_same_connection(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    upstream_port = await start_upstream(nursery, banner(b"welcome"))
    alice = User(
        "alice",
        PasswordHash.parse(cheap_hash("a-pw")),
        allow=("127.0.0.1",),
        ports=frozenset({upstream_port}),
    )
    _, port = await start_server(ConnectProxy(users=Users.from_mapping([alice])))
    target = f"127.0.0.1:{upstream_port}"
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(connect_head(target, basic("alice", "nope")))
        head, rest = await read_head(client)
        assert status_of(head) == 407
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += await client.receive_some()
        await client.send_all(connect_head(target, basic("alice", "a-pw")))
        head, rest = await read_head(client)
        assert status_of(head) == 200
        assert rest + await read_until_closed(client) == b"welcome"


async def test_the_access_log_names_the_user(
    start_server: StartServer, tmp_path: Path
) -> None:
    _, upstream_port = await start_server(hello)
    alice = User(
        "alice",
        PasswordHash.parse(cheap_hash("a-pw")),
        allow=("127.0.0.1",),
        ports=frozenset({upstream_port}),
    )
    _, proxy_port = await start_server(ConnectProxy(users=Users.from_mapping([alice])))
    with capture_log("hijack.access") as log:
        ok = await curl_through(proxy_port, upstream_port, "--proxy-user", "alice:a-pw")
        assert ok.returncode == 0, ok.stderr
        refused = await curl_through(proxy_port, upstream_port, "--proxy-user", "x:y")
        assert refused.returncode != 0
    lines = [r.getMessage() for r in log.records if "CONNECT" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("127.0.0.1 - alice [") and '" 200 ' in lines[0]
    assert lines[1].startswith("127.0.0.1 - - [") and '" 407 ' in lines[1]
    fields = [r.__dict__["access"] for r in log.records if "CONNECT" in r.getMessage()]
    assert [f["user"] for f in fields] == ["alice", "-"]
