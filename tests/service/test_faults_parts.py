"""The fault suite's web parts (faults/uploads.py, faults/access.py, faults/login.py) at small sizes: each starts the real
web process on a private instance folder, and every figure it reports must meet its target."""
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


def test_login_part():
    """Password guessing against the real web process, short attacks: the figures that count answers are
    on target (accepted tries per minute per account, the other user's refused logins, the owner's
    browser, common passwords accepted, server errors); the timed ones (latency, unknown-vs-known) are
    measured and reported, their targets are the fault suite's to judge on a quiet host."""
    from faults import login

    r = login.measure(attack_seconds=12, baseline_seconds=8, timing_pairs=16, http_common=40,
                      progress=lambda msg: None)
    counted = [f for f in off_target(r) if f["name"] not in r["timed_figures"]]
    assert r["figures"] and not counted, counted
    assert len(r["timed_figures"]) == 3 and r["timing"]["pairs"] == 16 and r["many_addresses"]["legit"]["n"] > 0
    assert r["one_address"]["statuses"].get(429, 0) > 0 and r["many_addresses"]["statuses"].get(429, 0) > 0
    assert r["many_addresses"]["owner_ok"] >= 1 and r["password_form"]["statuses"] == {400: 48}
