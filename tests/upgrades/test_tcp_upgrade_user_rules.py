"""Which of a user's rules apply to the fixed upstream of ``TCPUpgrade``
(``hijack tcp --upstream HOST:PORT --users FILE``), as the team-proxy guide
states them: the operator chose the upstream, so the global destination
policy (port 443, global addresses only) does not apply; the user's
``deny``, ``ports`` and ``allow_public = false`` (with ``allow``) do."""

from __future__ import annotations

import base64

import pytest
import trio

from hijack.testing import UpgradeRefusedError, open_test_client
from hijack.tunnel.users import PasswordHash, User, Users, hash_password
from hijack.upgrades.tcp import TCPUpgrade

from ..helpers import banner, start_upstream

#: A hash cheap enough for a test (the cost is stored in the hash).
CHEAP = {"n": 2, "r": 1, "p": 1}


def user(name: str, **rules: object) -> User:
    password = PasswordHash.parse(hash_password("pw", **CHEAP))
    return User(name, password, **rules)  # type: ignore[arg-type]


def basic(name: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:pw".encode()).decode()
    return {"authorization": f"Basic {token}"}


async def status_for(handler: TCPUpgrade, name: str) -> int:
    async with open_test_client(handler) as client:
        try:
            head, stream = await client.upgrade("/", "tcp", headers=basic(name))
        except UpgradeRefusedError as refused:
            return refused.response.status
        await stream.aclose()
        return head.status


async def test_user_rules_on_a_fixed_private_upstream(nursery: trio.Nursery) -> None:
    port = await start_upstream(nursery, banner(b"db"))
    users = Users.from_mapping(
        [
            user("plain"),  # no rules: the upstream as configured (loopback, any port)
            user("denied", deny=("127.0.0.0/8",)),
            user("other-ports", ports=frozenset({5432})),
            user("this-port", ports=frozenset({port})),
            # allow_public = false limits public destinations; a private
            # upstream the operator configured stays reachable.
            user("no-public", allow_public=False),
        ]
    )
    upgrade = TCPUpgrade(("127.0.0.1", port), users=users)
    assert await status_for(upgrade, "plain") == 101
    assert await status_for(upgrade, "denied") == 403
    assert await status_for(upgrade, "other-ports") == 403
    assert await status_for(upgrade, "this-port") == 101
    assert await status_for(upgrade, "no-public") == 101


@pytest.mark.parametrize(("name", "status"), [("no-public", 403), ("denied", 403)])
async def test_user_rules_on_a_fixed_public_upstream(name: str, status: int) -> None:
    """A global upstream (TEST-NET would be private: 9.9.9.9 is global) is
    refused before any dial for a user without public destinations; no
    connection leaves the machine (a dial would answer 502/504, not 403)."""
    users = Users.from_mapping(
        [user("no-public", allow_public=False), user("denied", deny=("9.9.9.9",))]
    )
    upgrade = TCPUpgrade(("9.9.9.9", 443), users=users)
    assert await status_for(upgrade, name) == status
