"""The flight helpers the core tests use live in :mod:`dtlskit.testing.flights`."""

from dtlskit.testing.flights import *  # noqa: F403
from dtlskit.testing.flights import __all__ as __all__
