"""The client side: forward (CONNECT, Upgrade: tcp, WebSocket, local SOCKS5, UDP)."""
