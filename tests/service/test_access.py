"""Every route against every role: a student reaches only their own work; instructors everything;
anonymous visitors are sent to log in; forms need their CSRF token; forged cookies and tokens fail."""
from __future__ import annotations

import io

import pytest

from support.app import make_worker, replay_runner
from support.service import lab_files
from tests.service.helpers import upload_data


@pytest.fixture
def world(app, browser):
    """alice has a graded submission and a token; bob has a token."""
    from grader.service.models import ApiToken, db

    alice = browser("alice")
    aid = app.ids["assignment"]
    r = alice.post(f"/assignments/{aid}/submit", data=upload_data(lab_files()),
                   content_type="multipart/form-data")
    sub = int(r.headers["Location"].rsplit("/", 1)[1])
    make_worker(app, replay_runner()).drain(timeout=30)
    tokens = {}
    with app.app_context():
        for name in ("alice", "bob", "teacher"):
            tok = f"cl_test_{name}_token_0123456789"
            db.session.add(ApiToken(user_id=app.ids[name], name="t", token_hash=ApiToken.hash(tok),
                                    prefix=tok[:10]))
            tokens[name] = tok
        db.session.commit()
    return {"sub": sub, "aid": aid, "cid": app.ids["cohort"], "tokens": tokens}


def pages(w):
    s, a, c = w["sub"], w["aid"], w["cid"]
    own = [f"/submissions/{s}", f"/submissions/{s}/artifacts/kmsg.txt", f"/submissions/{s}/files/sender.c"]
    staff = ["/instructor/", f"/instructor/cohorts/{c}", f"/instructor/assignments/{a}",
             f"/instructor/assignments/{a}/histogram.svg", f"/instructor/assignments/{a}/gradebook.csv",
             f"/instructor/assignments/{a}/results.json", f"/instructor/assignments/{a}/students/1.json"]
    return own, staff


def test_page_access_matrix(app, browser, world):
    own, staff = pages(world)
    anon, alice, bob, teacher = browser(), browser("alice"), browser("bob"), browser("teacher")
    for url in own:
        assert alice.get(url).status_code == 200, url
        assert teacher.get(url).status_code == 200, url
        assert bob.get(url).status_code == 404, url          # not revealed
        r = anon.get(url)
        assert r.status_code == 302 and "/login" in r.headers["Location"], url
    for url in staff:
        assert teacher.get(url).status_code == 200, url
        assert alice.get(url).status_code == 403, url
        assert bob.get(url).status_code == 403, url
        assert anon.get(url).status_code == 302, url
    for url in ("/", f"/assignments/{world['aid']}", "/tokens", "/account/password"):
        assert alice.get(url).status_code in (200, 302), url
        assert anon.get(url).status_code == 302, url
    # a student outside the cohort does not see the lab
    from grader.service.models import User, db

    with app.app_context():
        u = User(username="eve", role="student", name="Eve")
        u.set_password("eve-pass-1")
        db.session.add(u)
        db.session.commit()
    eve = browser()
    eve.login("eve", "eve-pass-1")
    assert eve.get(f"/assignments/{world['aid']}").status_code == 404
    assert eve.get(own[0]).status_code == 404


def test_api_access_matrix(app, world):
    c = app.test_client()
    s = world["sub"]
    hdr = lambda who: {"Authorization": f"Bearer {world['tokens'][who]}"}  # noqa: E731
    for url in (f"/api/v1/submissions/{s}", f"/api/v1/submissions/{s}/artifacts/kmsg.txt"):
        assert c.get(url, headers=hdr("alice")).status_code == 200, url
        assert c.get(url, headers=hdr("teacher")).status_code == 200, url
        assert c.get(url, headers=hdr("bob")).status_code == 404, url
        assert c.get(url).status_code == 401, url
        assert c.get(url, headers={"Authorization": "Bearer cl_forged"}).status_code == 401, url
        assert c.get(url, headers={"Authorization": "Basic YWxpY2U6eA=="}).status_code == 401, url
    body = c.get(f"/api/v1/submissions/{s}", headers=hdr("alice")).get_json()
    assert body["status"] == "graded" and body["score"] == 100
    # a session cookie does not authenticate the API
    alice_web = app.test_client()
    page = alice_web.get("/login").get_data(as_text=True)
    from support.app import page_csrf
    from support.service import PASSWORDS

    alice_web.post("/login", data={"username": "alice", "password": PASSWORDS["alice"],
                                   "csrf_token": page_csrf(page)})
    assert alice_web.get(f"/api/v1/submissions/{s}").status_code == 401


def test_revoked_and_expired_tokens(app, world):
    import datetime as dt

    from grader.service.models import ApiToken, db

    c = app.test_client()
    with app.app_context():
        tok = db.session.execute(db.select(ApiToken).filter_by(user_id=app.ids["alice"])).scalar_one()
        tok.expires_at = dt.datetime.utcnow() - dt.timedelta(seconds=1)
        db.session.commit()
    r = c.get("/api/v1/me", headers={"Authorization": f"Bearer {world['tokens']['alice']}"})
    assert r.status_code == 401 and "expired" in r.get_json()["error"]


def test_post_routes_need_role_and_csrf(app, browser, world):
    a, c = world["aid"], world["cid"]
    posts = [(f"/instructor/assignments/{a}/regrade", {}),
             (f"/instructor/assignments/{a}/extensions", {"username": "alice", "deadline": "2030-01-01T00:00"}),
             ("/instructor/cohorts", {"name": "c2"}),
             (f"/instructor/cohorts/{c}/assignments", {"lab": "lab1", "deadline": "2030-01-01T00:00"}),
             (f"/instructor/cohorts/{c}/roster", "roster")]
    alice, teacher, anon = browser("alice"), browser("teacher"), browser()
    for url, data in posts:
        if data == "roster":
            def data():  # a fresh file object per request
                return {"roster": (io.BytesIO(b"student_number,name,email\n"), "r.csv")}
        else:
            data = (lambda d: lambda: dict(d))(data)
        assert alice.post(url, data=data(), content_type="multipart/form-data").status_code == 403, url
        assert anon.c.post(url, data=data()).status_code in (302, 400), url
        no_csrf = teacher.c.post(url, data=data(), content_type="multipart/form-data")
        assert no_csrf.status_code == 400 and b"form expired" in no_csrf.data, url
        bad_csrf = teacher.c.post(url, data=dict(data(), csrf_token="forged"), content_type="multipart/form-data")
        assert bad_csrf.status_code == 400, url
    # student forms need CSRF too
    r = alice.c.post(f"/assignments/{a}/submit", data=upload_data(lab_files()),
                     content_type="multipart/form-data")
    assert r.status_code == 400
    r = alice.c.post("/tokens", data={"name": "x"})
    assert r.status_code == 400
    # bob cannot revoke alice's token
    from grader.service.models import ApiToken, db

    with app.app_context():
        tid = db.session.execute(db.select(ApiToken.id).filter_by(user_id=app.ids["alice"])).scalar_one()
    assert browser("bob").post(f"/tokens/{tid}/revoke").status_code == 404
    assert alice.post(f"/tokens/{tid}/revoke").status_code == 303
    # the teacher's POSTs work with their token
    assert teacher.post(f"/instructor/assignments/{a}/regrade").status_code == 303


def test_forged_session_and_password_change_end_sessions(app, browser):
    c = app.test_client()
    c.set_cookie("session", "eyJfdXNlcl9pZCI6IjI6MSJ9.forged.signature")
    assert c.get("/").status_code == 302
    # a session cookie signed with another key is refused
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    other = Flask("other")
    other.secret_key = "another-secret-key-" + "y" * 30
    forged = SecureCookieSessionInterface().get_signing_serializer(other).dumps(
        {"_user_id": f"{app.ids['teacher']}:1", "_fresh": True})
    c.set_cookie("session", forged)
    assert c.get("/instructor/").status_code == 302
    # changing the password logs out the account's other sessions
    first, second = browser("alice"), browser("alice")
    r = second.post("/account/password", data={"old": "alice-pass-1", "new": "quiet-harbor-lantern-42"})
    assert r.status_code == 302
    assert second.get("/tokens").status_code == 200
    assert first.get("/tokens").status_code == 302


def test_login_errors_and_open_redirect(app, browser):
    b = browser()
    page = b.get("/login").get_data(as_text=True)
    from support.app import page_csrf

    r = b.c.post("/login", data={"username": "alice", "password": "wrong", "csrf_token": page_csrf(page)})
    assert r.status_code == 401 and b"wrong password" in r.data
    r = b.c.post("/login?next=https://evil.example/", data={"username": "alice", "password": "alice-pass-1",
                                                              "csrf_token": page_csrf(page)})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_every_route_refuses_anonymous_and_students_where_it_should(app, browser, world):
    """Enumerates the app's URL map, so a new route cannot escape the matrix: anonymous callers get a
    login redirect (web) or 401 (API) everywhere but /login and static files; student routes that name
    someone else's object answer 404; instructor routes answer 403 to students."""
    from werkzeug.routing import BuildError  # noqa: F401

    values = {"submission_id": world["sub"], "assignment_id": world["aid"], "cohort_id": world["cid"],
              "token_id": 1, "user_id": app.ids["alice"], "name": "kmsg.txt", "lab": "lab1"}
    public = {"auth.login", "static"}
    anon, bob = browser(), browser("bob")
    seen = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in public:
            continue
        url = rule.build({k: values[k] for k in rule.arguments}, append_unknown=False)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            seen.add(rule.endpoint)
            r = anon.c.open(url, method=method)
            if rule.endpoint.startswith("api."):
                assert r.status_code == 401, (method, url, r.status_code)
            elif method == "GET":
                assert r.status_code == 302 and "/login" in r.headers["Location"], (method, url, r.status_code)
            else:
                assert r.status_code == 400 and b"form expired" in r.data, (method, url, r.status_code)
            if rule.endpoint.startswith("instructor."):
                rb = bob.c.open(url, method=method, data={"csrf_token": bob.token()} if method == "POST" else None)
                assert rb.status_code == 403, (method, url, rb.status_code)
            if rule.endpoint in ("student.submission", "student.artifact", "student.source"):
                assert bob.get(url).status_code == 404, url
    assert {"student.submit", "instructor.regrade", "api.submit", "auth.logout"} <= seen
