"""Both TLS front ends pass the conformance suite's checks that apply to them."""

from __future__ import annotations

import pytest

from dtlskit.testing import tls_conformance


@pytest.mark.parametrize("check", tls_conformance.CHECKS, ids=lambda check: check.__name__[6:])
@pytest.mark.parametrize("harness_class", tls_conformance.HARNESSES, ids=lambda h: h.name)
def test_tls_conformance(harness_class, check, server_config, client_config):
    with harness_class() as harness:
        check(harness, server_config, client_config)
