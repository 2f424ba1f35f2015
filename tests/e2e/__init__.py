"""End to end with the real balancers in front of and behind hijack (HAProxy, nginx)."""
