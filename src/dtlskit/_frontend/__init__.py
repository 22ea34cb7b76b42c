"""Plumbing shared by the asyncio and blocking front ends (private).

* :mod:`.channel_base`: the channel life cycle, event dispatch and error mapping both flavours
  share;
* :mod:`.sockets`: UDP socket creation, the one binding rule, socket options, ``OSError``
  translation;
* :mod:`.workers`: ``SO_REUSEPORT`` worker processes and their signal handling;
* :mod:`.accel`: the established-datagram primitives, in C when :mod:`dtlskit._native` is built.

Nothing here is public API; the front ends (:mod:`dtlskit.asyncio`, :mod:`dtlskit.sync`) are.
"""
