"""Build the optional C accelerator ``dtlskit._native``; everything else is in pyproject.toml.

Where no C compiler (or no Python headers) is available the build warns and goes on without
it: dtlskit then uses its pure-Python implementation of the same primitives (dtlskit._frontend.accel).
Set ``DTLSKIT_BUILD_NATIVE=0`` to skip the extension on purpose. The extension links no OpenSSL:
it calls the one inside ``cryptography`` through function pointers taken at import time.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install because one could not be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (DistutilsPlatformError, ...)
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, missing Python.h, ...
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        print(
            f"WARNING: dtlskit's optional C accelerator was not built ({exc}); "
            "the pure-Python implementation will be used",
            file=sys.stderr,
        )


def _extensions() -> list[Extension]:
    if os.environ.get("DTLSKIT_BUILD_NATIVE", "1").strip().lower() in ("0", "off", "no", "false"):
        return []
    if not sys.platform.startswith("linux"):  # recvmmsg/sendmmsg are Linux interfaces
        return []
    return [
        Extension(
            "dtlskit._native",
            sources=["src/dtlskit/_native.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
