"""Shared pytest fixtures. Server fixtures live in tests/servers.py."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import fault_server  # noqa: F401


@pytest.fixture
def sigint_default():
    """Subprocesses started in the test get SIGINT's default action even if pytest ignores it.

    A background job of a shell without job control (``(pytest &)``, ``nohup``) starts with
    SIGINT ignored and its children inherit that, so a test's Ctrl-C would not reach them;
    a Python-level handler here resets to the default across ``exec``.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
