"""dtlskit benchmarks: figures measured on loopback, each next to a ceiling of the same run.

A benchmark, never a test: nothing here asserts a speed. ``run.main(argv)`` (``dtlskit bench``,
or ``python benchmarks/run.py`` from a checkout) prints a table of figures and their ratios to
ceilings, writes them as JSON and optionally plots the ratios.

Modules:

- :mod:`.engine`: in-memory handshakes and records, raw pyOpenSSL next to the dtlskit engine
  (the one-core ceiling of everything above it).
- :mod:`.servers`: the servers under test (dtlskit asyncio / uvloop / blocking) and their plain
  UDP echo twins, each in a process of its own driven over a pipe.
- :mod:`.loadgen`: the load-generating process (handshake churn, windowed echo, held sessions).
- :mod:`.report`: the table, the JSON document and the optional bar chart.
- :mod:`.common`: small helpers shared by the above (process clocks, addresses, percentiles).
"""
