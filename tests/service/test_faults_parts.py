"""The fault suite's web parts (faults/uploads.py, faults/access.py, faults/exports.py) at small sizes:
each starts the real web process on a private instance folder, and every figure it reports must meet
its target."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def off_target(result: dict) -> list[dict]:
    """The figures of a part's result that miss their target."""
    return [f for f in result["figures"] if f["met"] is False]


def test_hostile_uploads_part():
    """60 hostile uploads and forms: all refused clearly, no server error, nothing stored or escaped."""
    from faults import uploads

    r = uploads.measure(n=60, progress=lambda msg: None)
    assert r["figures"] and not off_target(r), off_target(r)
    assert len(r["categories"]) >= 20 and r["store"]["hostile_rows"] == []


def test_access_matrix_part():
    """The whole route x credential matrix: no unauthorised read or write, every route covered."""
    from faults import access

    r = access.measure(progress=lambda msg: None)
    assert r["figures"] and not off_target(r), off_target(r)
    assert r["routes_without_rule"] == [] and r["requests"] > 1000
    assert r["allowed_posts_that_changed_the_database"] > 0   # the write check sees writes


def test_slow_clients_part():
    """Few requests, short timeouts: normal requests answer while 110 slow clients hold connections, straight
    to `serve` and behind nginx; waitress at its own limits is locked out; every slow client gets cut."""
    from faults import slowclients

    r = slowclients.measure(requests=10, slow=(110,), header_timeout=2, body_timeout=2, channel_timeout=3,
                            progress=lambda msg: None)
    assert r["figures"] and not off_target(r), off_target(r)
    assert r["runs"]["nginx_110"]["slow_open_at_end"] == 110 and r["runs"]["direct_110"]["slow_open_at_end"] == 110
    assert r["runs"]["waitress_own_limits"]["failures"] > 0    # the attack is real without the new limits
def test_exports_part():
    """Hostile roster names, cohort names and next= values through the real web process and CLI, and the
    security headers over the whole access matrix: every figure on target."""
    from faults import exports

    r = exports.measure(progress=lambda msg: None)
    assert r["figures"] and not off_target(r), off_target(r)
    assert r["header_requests"] > 1000 and len(r["cohorts"]) == len(exports.WEB_COHORTS + exports.CLI_COHORTS)
    assert set(r["exports"]) == {"web", "cli"} and all(c["graded"] for c in r["exports"].values())
