"""The suite refuses to run on an asyncio split in two, and says why.

``coverage run --source=<package name>`` imports the package (dtlskit imports asyncio) and then
removes every module it so imported from ``sys.modules``; the tests import a fresh asyncio while
the C module ``_asyncio`` (loaded once per process) keeps raising the first ``CancelledError``
class. ``asyncio.wait_for`` then lets a ``CancelledError`` escape where it should raise
``TimeoutError``, and every asyncio test fails for a reason that is not dtlskit's. These tests
build that split without coverage, in a child interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import WAIT

ROOT = Path(__file__).resolve().parent.parent

# What coverage's sys_modules_saved() does around its import of a --source package.
SPLIT = """
import sys
before = set(sys.modules)
import dtlskit  # imports asyncio
for name in set(sys.modules) - before:
    del sys.modules[name]
"""

WAIT_FOR = """
import asyncio

async def main() -> str:
    never = asyncio.get_running_loop().create_future()
    try:
        await asyncio.wait_for(never, 0.01)
    except asyncio.TimeoutError:
        return "TimeoutError"
    except BaseException as exc:  # the class that escaped is the finding
        return type(exc).__name__
    return "nothing"

print(asyncio.run(main()))
"""


def child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=6 * WAIT,
        check=False,
    )


def test_wait_for_leaks_cancelled_error_on_a_split_asyncio() -> None:
    # The cause itself: plain stdlib, no dtlskit code on the path of the failure.
    whole = child(WAIT_FOR)
    split = child(SPLIT + WAIT_FOR)
    assert whole.stdout.strip() == "TimeoutError", whole.stderr
    assert split.stdout.strip() == "CancelledError", split.stderr


def test_the_suite_stops_with_the_cause_on_a_split_asyncio() -> None:
    run_pytest = (
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', "
        "'tests/asyncio/test_channel.py', '-k', 'test_await_forms_and_listen_accept']))\n"
    )
    result = child(SPLIT + run_pytest)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "asyncio is split in two" in result.stdout + result.stderr
