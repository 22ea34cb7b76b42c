"""Sphinx configuration of the dtlskit API reference (built from the docstrings).

Build: ``pip install -e '.[docs]' && sphinx-build -W -b html docs/api docs/api/_build``
(CI builds it with warnings as errors).
"""

from __future__ import annotations

import dtlskit

project = "dtlskit"
author = "the dtlskit authors"
release = dtlskit.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
suppress_warnings = ["ref.python"]
