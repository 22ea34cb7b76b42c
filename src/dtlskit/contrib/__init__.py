"""Integrations of dtlskit with other libraries, each behind an extra of its own.

* :mod:`dtlskit.contrib.aiocoap` -- a ``coaps://`` (CoAP over DTLS, RFC 7252 §9) transport for
  aiocoap clients and servers (extra ``coap``).
* :mod:`dtlskit.contrib.mdns` -- advertise a DTLS server over mDNS/DNS-SD and find one
  (extra ``mdns``, python-zeroconf).
* :mod:`dtlskit.contrib.sntp` -- a small SNTP client (RFC 4330) for devices that must learn the
  time before they can check a certificate.

Nothing here is imported by ``import dtlskit``.
"""
