"""``python -m dtlskit``: the ``dtlskit`` command line (see :mod:`dtlskit.cli`)."""

from .cli import main

raise SystemExit(main())
