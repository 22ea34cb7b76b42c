"""Public test helpers: an in-memory client/server pair on a hand-advanced clock, and a seeded
lossy fake network. They stand in for the network only; OpenSSL is always real."""

from .memory import Clock, FakeNetwork, MemoryPair

__all__ = ["Clock", "FakeNetwork", "MemoryPair"]
