"""The client side of hijack's tunnels: :mod:`~hijack.client.forward` (a
local port or stdin through a CONNECT, ``Upgrade: tcp`` or WebSocket tunnel)
and :mod:`~hijack.client.wsclient` (a WebSocket client on the shipped
WebSocket)."""
