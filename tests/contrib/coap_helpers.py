"""A small CoAP site for the coaps tests: who the peer is, and a sensor reading."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiocoap
import aiocoap.resource as resource

from dtlskit.contrib.aiocoap import CertificateClaim, PSKClaim

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], bound: float = 60.0) -> T:
    """Run a test coroutine; a hang fails the test after ``bound`` seconds (never a pass)."""
    return asyncio.run(asyncio.wait_for(coro, bound))


class Who(resource.Resource):  # type: ignore[misc]
    """GET: the claims the transport made about the client, as text."""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        words = []
        for claim in request.remote.authenticated_claims:
            if isinstance(claim, CertificateClaim):
                words.append(f"cert {claim.subject} {claim.sha256}")
            elif isinstance(claim, PSKClaim):
                words.append(f"psk {claim.identity}")
        return aiocoap.Message(payload=("; ".join(words) or "anonymous").encode())


class Echo(resource.Resource):  # type: ignore[misc]
    """POST: the payload back (exercises block-wise transfer for large payloads)."""

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


def site() -> resource.Site:
    root = resource.Site()
    root.add_resource(["who"], Who())
    root.add_resource(["echo"], Echo())
    root.add_resource(
        [".well-known", "core"], resource.WKCResource(root.get_resources_as_linkheader)
    )
    return root
