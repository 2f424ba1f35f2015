"""A server on a UNIX socket that knows who is calling.

Each request is answered with the caller's uid, pid and gid, which the kernel
reports for the socket (SO_PEERCRED): no password, no token, no way to lie.
Callers whose uid is not allowed get 403.

    python examples/unix_peercred.py /tmp/whoami.sock [ALLOWED_UID ...]
    curl --unix-socket /tmp/whoami.sock http://localhost/

By default only your own uid (and root) are allowed.
"""

from __future__ import annotations

import os
import sys

import trio

from hijack import Handler, Request, Response, Server


def make_handler(allowed_uids: set[int]) -> Handler:
    async def whoami(request: Request) -> Response:
        creds = request.connection.peer_credentials
        if creds is None or creds.uid not in allowed_uids:
            return Response(403, body=b"your uid is not allowed here\n")
        text = f"uid={creds.uid} gid={creds.gid} pid={creds.pid}\n"
        return Response(200, {"content-type": "text/plain"}, text.encode())

    return whoami


async def main(path: str, allowed_uids: set[int]) -> None:
    server = Server(make_handler(allowed_uids))
    # 0o666: let every local user connect, so that the uid check decides.
    await server.serve_unix(path, mode=0o666)


if __name__ == "__main__":
    socket_path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/whoami.sock"
    uids = {int(uid) for uid in sys.argv[2:]} or {os.getuid(), 0}
    print(f"serving on {socket_path}; allowed uids: {sorted(uids)}")
    try:
        trio.run(main, socket_path, uids)
    except* KeyboardInterrupt:  # Ctrl-C: the socket file goes
        pass  # (except*: trio may raise it inside an exception group)
