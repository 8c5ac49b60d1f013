"""Shared pytest fixtures. Server fixtures live in tests/servers.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from servers import fault_server  # noqa: F401
