"""The core: the HTTP/1.1 server, hijack, connection states, relay and hub, PROXY protocol, the test kit."""
