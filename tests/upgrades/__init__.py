"""The HTTP upgrades: CONNECT, Upgrade: tcp, WebSocket, the bridge, reverse tunnels."""
