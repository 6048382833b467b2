"""Fleets: node identity, the Redis registry, discovery and routing across nodes."""
