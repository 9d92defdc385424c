"""The fault suite's web-restart drill, small: hand-ins in flight while the real web process is
SIGKILLed and restarted lose nothing (every receipt is stored intact and queued once)."""
from __future__ import annotations

import pytest


@pytest.mark.timeout(300)
def test_handins_survive_web_kills():
    from faults import web_restarts

    r = web_restarts.measure(handins=40, clients=8, kills=3, window=10, progress=lambda m: None)
    off = [f for f in r["figures"] if f["met"] is False]
    assert not off, off
    assert r["receipts"] == 40 and len(r["recover_s"]) == 3
    assert r["stored"] >= 40 and r["server_errors"] == 0
