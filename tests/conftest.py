"""Root of the suite: fixtures shared by more than one tier are registered here, once.

A session fixture imported into two places (say tests/service/conftest.py and a VM test module)
is two fixtures to pytest, and both would start in one xdist worker. For Playwright that is an
error (its sync API refuses to start while another instance's loop runs), so the real-server
fixtures live here only.
"""
from __future__ import annotations

from tests.service.servers import chromium_browser, postgres_server, redis_server  # noqa: F401
