"""Users and their rules: a TOML users file, salted scrypt hashes, per-user
destination rules on top of a :class:`ConnectPolicy`, reloadable at run time.

The file::

    [users.alice]
    password = "scrypt$n=32768,r=8,p=1$<salt>$<hash>"   # hijack hash-password
    allow = ["db.internal.example", "10.1.0.0/16"]      # explicit allows
    deny = [".social.example"]                          # added to the global deny
    ports = [443, 5432]            # replaces the global allowed ports for alice
    allow_public = false           # alice may go only where `allow` says
    max_tunnels = 10               # tunnels open at once (429 beyond)
    bandwidth = 1_000_000          # bytes/s each way, shared by her tunnels
    reverse = ["127.0.0.1:9000-9099"]  # ports she may publish (reverse tunnels)

How a user's rules combine with the global policy (one
:class:`ConnectPolicy` per user, built when the file is loaded):

* deny: the global deny plus the user's. Deny wins over every allow.
* allow: the global allow plus the user's; like global allow entries they
  pass even when not globally reachable: a private destination needs such an
  explicit entry (or the global ``allow_private``), and one user's entries
  never help another user.
* ports: the user's ``ports`` if given, else the global allowed ports.
* allow_public: off if either the global policy or the user turns it off.

Passwords: scrypt (``hashlib.scrypt``, memory-hard) with a 16-byte random
salt, the cost stored in the hash. A check runs in a worker thread (scrypt
releases the GIL) under a small :class:`trio.CapacityLimiter`, so a flood of
wrong passwords costs bounded CPU and memory and never stalls the event loop.
An unknown user is checked against a dummy hash made with the most common
cost in the file: one derivation of the same cost either way, so the answer
time does not say whether a name exists. A successful check is remembered
(keyed by an HMAC of the exact header under a per-process random key) so a
client opening many tunnels pays the hash once; a wrong password is never
remembered, and a reload forgets everything.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import logging
import os
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .. import HTTPError, Request
from .bind_rules import BindRule
from .policy import ConnectPolicy

__all__ = [
    "PasswordHash",
    "User",
    "Users",
    "UsersFileError",
    "authenticate",
    "hash_password",
    "load_users",
]

logger = logging.getLogger("hijack.users")

#: scrypt cost: N=2**15, r=8 -> 32 MiB and ~70 ms per check on the test
#: machine (OWASP's floor is N=2**17 at 128 MiB; the remembered successes make
#: the per-check cost matter only for wrong or new credentials).
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**15, 8, 1
#: Bounds a users file may ask for: a typo must not cost gigabytes per check.
MAX_N, MAX_R, MAX_P = 2**20, 32, 4
SALT_BYTES, KEY_BYTES = 16, 32
#: Successful checks remembered (least recently used dropped first).
MAX_REMEMBERED = 4096
USER_KEYS = frozenset(
    {
        "password",
        "allow",
        "deny",
        "ports",
        "allow_public",
        "max_tunnels",
        "bandwidth",
        "reverse",
    }
)


class UsersFileError(ValueError):
    """A users file that cannot be used; the message says where and why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed ``scrypt$n=N,r=R,p=P$salt$hash`` string."""

    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        try:
            scheme, params, salt, key = text.split("$")
            if scheme != "scrypt":
                raise ValueError(f"unknown scheme {scheme!r} (expected scrypt)")
            values = dict(item.split("=", 1) for item in params.split(","))
            if set(values) != {"n", "r", "p"}:
                raise ValueError("expected n=..,r=..,p=..")
            n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
            parsed = cls(n, r, p, _unb64(salt), _unb64(key))
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"not a hijack password hash: {exc}") from None
        _check_cost(n, r, p)
        if len(parsed.salt) < 8 or len(parsed.key) < 16:
            raise ValueError("scrypt salt or hash too short")
        return parsed

    def __str__(self) -> str:
        params = f"n={self.n},r={self.r},p={self.p}"
        return f"scrypt${params}${_b64(self.salt)}${_b64(self.key)}"

    @property
    def cost(self) -> tuple[int, int, int]:
        return self.n, self.r, self.p

    def derive(self, password: bytes) -> bytes:
        """The scrypt key of ``password`` with this salt and cost (slow)."""
        return hashlib.scrypt(
            password,
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=129 * self.r * self.n * self.p + (1 << 20),
            dklen=len(self.key),
        )

    def matches(self, password: bytes) -> bool:
        return hmac.compare_digest(self.derive(password), self.key)


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """A salted scrypt hash of ``password`` for the users file."""
    _check_cost(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    unkeyed = PasswordHash(n, r, p, salt, bytes(KEY_BYTES))
    return str(PasswordHash(n, r, p, salt, unkeyed.derive(password.encode())))


def _check_cost(n: int, r: int, p: int) -> None:
    if n < 2 or n & (n - 1) or n > MAX_N:
        raise ValueError(f"scrypt n must be a power of 2 <= {MAX_N}")
    if not (1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise ValueError(f"scrypt r must be 1-{MAX_R} and p 1-{MAX_P}")


@dataclass(frozen=True, slots=True)
class User:
    """One entry of the users file. ``max_tunnels`` and ``bandwidth``
    (bytes per second each way, shared by all the user's tunnels) are None
    when the file does not limit them."""

    name: str
    password: PasswordHash
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    ports: frozenset[int] | None = None
    allow_public: bool = True
    max_tunnels: int | None = None
    bandwidth: int | None = None
    #: Where this user may publish reverse tunnels (on top of the server's
    #: ``--allow-reverse`` rules); see :mod:`hijack.tunnel.bind_rules`.
    reverse: tuple[BindRule, ...] = ()

    def policy(self, base: ConnectPolicy) -> ConnectPolicy:
        """The rules for this user on top of ``base`` (see the module doc)."""
        return ConnectPolicy(
            allowed_ports=self.ports if self.ports is not None else base.allowed_ports,
            allow_private=base.allow_private,
            allow_public=base.allow_public and self.allow_public,
            allow=(*base.allow, *self.allow),
            deny=(*base.deny, *self.deny),
        )


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"user {name!r}: {key} must be a list of strings")
    return tuple(value)


def _bind_rules(name: str, value: Any) -> tuple[BindRule, ...]:
    texts = _strings(name, "reverse", value)
    try:
        return tuple(BindRule.parse(text) for text in texts)
    except ValueError as exc:
        raise ValueError(f"user {name!r}: reverse: {exc}") from None


def _positive(name: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"user {name!r}: {key} must be a positive integer")
    return value


def _user(name: str, entry: Any) -> User:
    if not isinstance(entry, dict):
        raise ValueError(f"user {name!r}: expected a table")
    if not name or ":" in name or not name.isprintable() or len(name) > 256:
        raise ValueError(f"bad user name {name!r} (no ':' nor control characters)")
    unknown = set(entry) - USER_KEYS
    if unknown:
        raise ValueError(f"user {name!r}: unknown keys {sorted(unknown)}")
    if not isinstance(entry.get("password"), str):
        raise ValueError(f"user {name!r}: password (a hash) is required")
    try:
        password = PasswordHash.parse(entry["password"])
    except ValueError as exc:
        raise ValueError(f"user {name!r}: {exc}") from None
    ports = entry.get("ports")
    if ports is not None and (
        not isinstance(ports, list)
        or not all(isinstance(p, int) and 1 <= p <= 65535 for p in ports)
    ):
        raise ValueError(f"user {name!r}: ports must be a list of ports 1-65535")
    allow_public = entry.get("allow_public", True)
    if not isinstance(allow_public, bool):
        raise ValueError(f"user {name!r}: allow_public must be true or false")
    user = User(
        name,
        password,
        allow=_strings(name, "allow", entry.get("allow", [])),
        deny=_strings(name, "deny", entry.get("deny", [])),
        ports=None if ports is None else frozenset(ports),
        allow_public=allow_public,
        max_tunnels=_positive(name, "max_tunnels", entry.get("max_tunnels")),
        bandwidth=_positive(name, "bandwidth", entry.get("bandwidth")),
        reverse=_bind_rules(name, entry.get("reverse", [])),
    )
    try:
        user.policy(ConnectPolicy())  # bad allow/deny entries fail at load
    except ValueError as exc:
        raise ValueError(f"user {name!r}: {exc}") from None
    return user


def parse_users(document: Mapping[str, Any]) -> dict[str, User]:
    """The users of a parsed TOML document (``[users.NAME]`` tables)."""
    unknown = set(document) - {"users"}
    if unknown:
        raise ValueError(f"unknown top-level keys {sorted(unknown)}")
    table = document.get("users", {})
    if not isinstance(table, dict):
        raise ValueError("users must be a table of [users.NAME] tables")
    return {name: _user(name, entry) for name, entry in table.items()}


def load_users(path: str | os.PathLike[str]) -> dict[str, User]:
    """Read and check a users file; :class:`UsersFileError` says what is wrong."""
    try:
        with open(path, "rb") as file:
            return parse_users(tomllib.load(file))
    except OSError as exc:  # its strerror: the path is said once, here
        raise UsersFileError(f"{os.fspath(path)}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise UsersFileError(f"{os.fspath(path)}: {exc}") from None


def _dummy_hash(users: Iterable[User]) -> PasswordHash:
    """A hash no password matches, with the cost most users have: an unknown
    name then costs what a known one does."""
    costs = collections.Counter(u.password.cost for u in users)
    n, r, p = costs.most_common(1)[0][0] if costs else (DEFAULT_N, DEFAULT_R, DEFAULT_P)
    return PasswordHash(
        n, r, p, secrets.token_bytes(SALT_BYTES), secrets.token_bytes(KEY_BYTES)
    )


def _basic_credentials(value: str) -> tuple[str, bytes] | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    name, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return name.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


@dataclass(slots=True)
class _Table:
    """One loaded version of the file, with what is derived from it."""

    users: dict[str, User]
    dummy: PasswordHash
    remembered: collections.OrderedDict[bytes, User] = field(
        default_factory=collections.OrderedDict
    )
    policies: dict[tuple[str, int], tuple[ConnectPolicy, ConnectPolicy]] = field(
        default_factory=dict
    )


class Users:
    """The users a server accepts, reloadable while it runs.

    ``Users(path)`` loads ``path`` now (:class:`UsersFileError` if it is
    broken); :meth:`reload` reads it again and keeps the old users if the new
    file is broken (and logs why). Tunnels already open keep the
    :class:`User` they were opened with. ``Users.from_mapping`` builds one
    without a file (tests, embedding).

    ``verify_limiter`` bounds the password checks running at once (each holds
    a thread and ``128 * r * n`` bytes); default: half the cores, at least 1.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        users: Mapping[str, User] | None = None,
        verify_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        if (path is None) == (users is None):
            raise TypeError("give either a path or users")
        self.path = None if path is None else Path(path)
        loaded = load_users(self.path) if self.path is not None else dict(users or {})
        self._table = self._make_table(loaded)
        self._key = secrets.token_bytes(32)
        # Half the cores: a flood of wrong passwords must leave CPU for the
        # event loop (scrypt releases the GIL, so threads do run in parallel).
        threads = max(1, (os.cpu_count() or 2) // 2)
        self._limiter = verify_limiter or trio.CapacityLimiter(threads)

    @classmethod
    def from_mapping(cls, users: Iterable[User]) -> Users:
        return cls(users={u.name: u for u in users})

    @staticmethod
    def _make_table(users: dict[str, User]) -> _Table:
        return _Table(users, _dummy_hash(users.values()))

    @property
    def names(self) -> list[str]:
        return sorted(self._table.users)

    def get(self, name: str) -> User | None:
        return self._table.users.get(name)

    def reload(self) -> bool:
        """Read the file again. True if the new users are in effect; False if
        the file was broken: the old users stay and the reason is logged."""
        if self.path is None:
            return False
        try:
            users = load_users(self.path)
        except UsersFileError as exc:
            logger.error("users file not reloaded, keeping the old users: %s", exc)
            return False
        self._table = self._make_table(users)
        logger.info("users file reloaded: %d users", len(users))
        return True

    def policy_for(self, user: User, base: ConnectPolicy) -> ConnectPolicy:
        """``user.policy(base)``, built once per user and base policy."""
        policies = self._table.policies
        key = (user.name, id(base))
        cached = policies.get(key)
        if cached is None or cached[0] is not base:
            cached = policies[key] = (base, user.policy(base))
        return cached[1]

    async def check_basic(self, header: str) -> User | None:
        """The user a ``Basic`` credentials header names, if its password
        matches; None otherwise. Every well-formed header that was not
        remembered as good costs exactly one scrypt derivation, of the same
        cost for known and unknown names."""
        credentials = _basic_credentials(header)
        if credentials is None:
            return None
        table = self._table
        token = hmac.new(self._key, header.strip().encode(), hashlib.sha256).digest()
        known = table.remembered.get(token)
        if known is not None:
            table.remembered.move_to_end(token)
            return known
        name, password = credentials
        user = table.users.get(name)
        expected = user.password if user is not None else table.dummy
        ok = await trio.to_thread.run_sync(
            expected.matches, password, limiter=self._limiter
        )
        if not ok or user is None:
            return None
        table.remembered[token] = user
        if len(table.remembered) > MAX_REMEMBERED:
            table.remembered.popitem(last=False)
        return user


async def authenticate(
    request: Request, users: Users, *, proxy: bool, realm: str = "hijack"
) -> User:
    """The user ``request`` authenticates as, or raise the HTTP challenge.

    ``proxy=True`` (a CONNECT proxy): ``Proxy-Authorization``, else 407 with
    ``Proxy-Authenticate``. ``proxy=False`` (an endpoint such as the TCP
    upgrade or a WebSocket bridge, an origin server for its client):
    ``Authorization``, else 401 with ``WWW-Authenticate`` (RFC 9110 11.6).
    Missing, repeated, malformed or wrong credentials all get the same answer.
    The user's name goes into ``connection.context["hijack.user"]`` (the access log
    shows it). Return ``exc.response()`` from the handler rather than letting the error
    propagate, and the client can retry on the same connection.
    """
    header = "proxy-authorization" if proxy else "authorization"
    values = request.headers.get_all(header)
    user = await users.check_basic(values[0]) if len(values) == 1 else None
    # For the access log (CLF's user field): this request's user, or none.
    request.connection.context["hijack.user"] = None if user is None else user.name
    if user is not None:
        return user
    status, challenge = (
        (407, "proxy-authenticate") if proxy else (401, "www-authenticate")
    )
    raise HTTPError(
        status, "credentials required", [(challenge, f'Basic realm="{realm}"')]
    )
