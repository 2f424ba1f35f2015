"""What every tunnel shares: the destination policy, users, limits, parent proxies, the life cycle."""
