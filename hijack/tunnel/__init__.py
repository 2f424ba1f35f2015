"""What every tunnel shares, whichever protocol asked for it (CONNECT,
``Upgrade: tcp``, the WebSocket bridge, SOCKS5, reverse tunnels): the
destination policy (:mod:`~hijack.tunnel.policy`), users and their rules
(:mod:`~hijack.tunnel.users`), limits (:mod:`~hijack.tunnel.limits`),
parent proxies (:mod:`~hijack.tunnel.parent_proxy`), the dialer, and the one
life cycle they run (:mod:`~hijack.tunnel.lifecycle`).

It sits on the core and under the protocols: nothing here knows HTTP
upgrades, the command, or the client."""
