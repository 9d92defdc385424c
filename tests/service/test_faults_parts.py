"""The fault suite's web parts (faults/uploads.py, access.py, exports.py, slowclients.py, login.py) at small
sizes: each starts the real web process on a private instance folder, and every figure it reports must meet
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


def test_login_part():
    """Password guessing against the real web process, short attacks, straight to `serve` and through the
    documented nginx: the figures that count answers are on target (accepted tries per minute per account, the
    other user's refused logins, the owner's browser, common passwords accepted, server errors); the timed ones
    (latency through nginx, unknown-vs-known) are measured and reported, their targets are the fault suite's to
    judge on a quiet host; the latency straight to `serve` is reported without a target."""
    from faults import login

    r = login.measure(attack_seconds=12, baseline_seconds=8, timing_pairs=16, http_common=40,
                      progress=lambda msg: None)
    counted = [f for f in off_target(r) if f["name"] not in r["timed_figures"]]
    assert r["figures"] and not counted, counted
    assert len(r["timed_figures"]) == 3 and r["timing"]["pairs"] == 16
    assert [f["met"] for f in r["figures"] if f["name"].startswith("/login for") and "straight to" in f["name"]] \
        == [None, None]
    for where in ("direct", "nginx"):
        attacked = r[where]
        assert attacked["many_addresses"]["legit"]["n"] > 0 and attacked["many_addresses"]["owner_ok"] >= 1
        assert attacked["one_address"]["statuses"].get(429, 0) > 0
        assert attacked["many_addresses"]["statuses"].get(429, 0) > 0
    # nginx let through its burst and rate per address, not the flood
    one = r["nginx"]["one_address"]
    assert 0 < one["reached_app"] < one["guesses"] / 4, one
    assert r["password_form"]["statuses"] == {400: 48}
