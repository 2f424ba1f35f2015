"""SOCKS5: the codec, the server, UDP ASSOCIATE."""
