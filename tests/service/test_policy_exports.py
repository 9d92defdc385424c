"""Late policy, extensions, quota and cooldown, roster import, exports and the CLI."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from support.app import make_worker, replay_runner
from support.service import lab_files
from tests.service.helpers import upload_data


def set_assignment(app, **values):
    from grader.service.models import Assignment, db

    with app.app_context():
        a = db.session.get(Assignment, app.ids["assignment"])
        for k, v in values.items():
            setattr(a, k, v)
        db.session.commit()


def backdate_submissions(app, user, delta):
    from grader.service.models import Submission, db

    with app.app_context():
        for s in db.session.execute(db.select(Submission).filter_by(user_id=app.ids[user])).scalars():
            s.created_at = s.created_at + delta
        db.session.commit()


def test_lateness_rules(app):
    from grader.service.models import Assignment, Extension, db
    from grader.service.policy import lateness

    with app.app_context():
        a = db.session.get(Assignment, app.ids["assignment"])
        d = a.deadline
        alice = app.ids["alice"]
        assert lateness(a, alice, d).late_days == 0
        l1 = lateness(a, alice, d + dt.timedelta(seconds=1))
        assert (l1.late_days, l1.penalty_percent, l1.apply(80)) == (1, 10.0, 72.0)
        l5 = lateness(a, alice, d + dt.timedelta(days=4, hours=1))
        assert (l5.late_days, l5.penalty_percent) == (5, 30.0)       # capped at 30
        db.session.add(Extension(assignment_id=a.id, user_id=alice, deadline=d + dt.timedelta(days=3)))
        db.session.commit()
        assert lateness(a, alice, d + dt.timedelta(days=2)).late_days == 0
        assert lateness(a, app.ids["bob"], d + dt.timedelta(days=2)).late_days == 2


def test_gradebook_applies_and_shows_late_penalty(app, browser, tmp_path):
    alice, bob = browser("alice"), browser("bob")
    aid = app.ids["assignment"]
    for b in (alice, bob):
        assert b.post(f"/assignments/{aid}/submit", data=upload_data(lab_files()),
                      content_type="multipart/form-data").status_code == 303
    make_worker(app, replay_runner()).drain(timeout=30)
    backdate_submissions(app, "bob", dt.timedelta(days=8, hours=12))  # 1.5 days late: 2 started days
    teacher = browser("teacher")
    text = teacher.get(f"/instructor/assignments/{aid}/gradebook.csv").get_data(as_text=True)
    rows = {r["username"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["alice"]["final_score"] == "100" and rows["alice"]["late_days"] == "0"
    assert rows["bob"]["late_days"] == "2" and rows["bob"]["penalty_percent"] == "20"
    assert rows["bob"]["raw_score"] == "100" and rows["bob"]["final_score"] == "80"
    # an extension removes the penalty, on the page and in the export
    r = teacher.post(f"/instructor/assignments/{aid}/extensions",
                     data={"username": "bob", "deadline": (dt.datetime.utcnow() + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M")})
    assert r.status_code == 303
    rows = {r["username"]: r for r in csv.DictReader(io.StringIO(
        teacher.get(f"/instructor/assignments/{aid}/gradebook.csv").get_data(as_text=True)))}
    assert rows["bob"]["final_score"] == "100" and rows["bob"]["extension"] == "yes"
    per = teacher.get(f"/instructor/assignments/{aid}/results.json").get_json()
    assert {p["username"] for p in per} == {"alice", "bob"}
    assert per[0]["history"][0]["results"][0]["trace_table"]


def test_quota_and_cooldown(app):
    from grader.service.models import ApiToken, db

    set_assignment(app, max_submissions=2, cooldown_seconds=3600)
    with app.app_context():
        db.session.add(ApiToken(user_id=app.ids["alice"], name="t", token_hash=ApiToken.hash("cl_a"), prefix="cl_a"))
        db.session.commit()
    c = app.test_client()

    def post():
        return c.post("/api/v1/labs/lab1/submissions", data=upload_data(lab_files()),
                      headers={"Authorization": "Bearer cl_a"}, content_type="multipart/form-data")
    assert post().status_code == 201
    r = post()
    assert r.status_code == 429 and "wait" in r.get_json()["error"] and int(r.headers["Retry-After"]) > 3500
    backdate_submissions(app, "alice", -dt.timedelta(hours=2))
    assert post().status_code == 201
    backdate_submissions(app, "alice", -dt.timedelta(hours=2))
    r = post()
    assert r.status_code == 429 and "all 2 submissions" in r.get_json()["error"]


ROSTER_OK = "student_number,name,email\nS10,Carol C,carol@example.invalid\nS11,Dan D,dan@example.invalid\n"
ROSTER_BAD = ("student_number,name,email,username\nS20,Erin,erin@example.invalid,\nS21,,frank@x,\n"
              "S20,Gus,not-an-email,\nS23,Hal,hal@example.invalid,alice\n")


def test_roster_import_all_or_nothing(app, browser):
    teacher = browser("teacher")
    cid = app.ids["cohort"]
    r = teacher.post(f"/instructor/cohorts/{cid}/roster", data={"roster": (io.BytesIO(ROSTER_BAD.encode()), "r.csv")},
                     content_type="multipart/form-data")
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and "Nothing was imported" in page
    for msg in ("row 3: name is empty", "row 3: email", "row 4: student_number S20 repeats row 2",
                "row 4: email &#39;not-an-email&#39;"):
        assert msg in page, msg
    from grader.service.models import User, db

    with app.app_context():
        assert db.session.execute(db.select(db.func.count(User.id))).scalar_one() == 3
    r = teacher.post(f"/instructor/cohorts/{cid}/roster", data={"roster": (io.BytesIO(b"\xff\xfe junk"), "r.csv")},
                     content_type="multipart/form-data")
    assert r.status_code == 400 and b"not UTF-8" in r.data
    r = teacher.post(f"/instructor/cohorts/{cid}/roster", data={"roster": (io.BytesIO(ROSTER_OK.encode()), "r.csv")},
                     content_type="multipart/form-data")
    assert r.status_code == 200 and b"2 enrolled" in r.data
    with app.app_context():
        assert db.session.execute(db.select(db.func.count(User.id))).scalar_one() == 5


def test_cli_instructor_path(app, tmp_path, monkeypatch):
    """create-instructor, create-cohort, import-roster, add-lab, grade a folder with a progress bar,
    regrade, export-grades."""
    import threading
    import time

    runner = app.test_cli_runner()
    monkeypatch.setenv("GRADER_NEW_PASSWORD", "granite-meadow-oboe-7")
    r = runner.invoke(args=["create-instructor", "prof", "--name", "Prof"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(args=["create-cohort", "fall"]).exit_code == 0
    (tmp_path / "roster.csv").write_text(ROSTER_OK)
    r = runner.invoke(args=["import-roster", "fall", str(tmp_path / "roster.csv")])
    assert r.exit_code == 0 and "2 enrolled" in r.output and "S10\t" in r.output, r.output
    (tmp_path / "bad.csv").write_text(ROSTER_BAD)
    r = runner.invoke(args=["import-roster", "fall", str(tmp_path / "bad.csv")])
    assert r.exit_code == 1 and "nothing imported" in r.output and "row 3" in r.output
    r = runner.invoke(args=["add-lab", "fall", "lab1", "--deadline", "2030-01-01T00:00"])
    assert r.exit_code == 0, r.output
    subs = tmp_path / "collected"
    (subs / "S10").mkdir(parents=True)
    for n, d in lab_files().items():
        (subs / "S10" / n).write_bytes(d)
    (subs / "S99").mkdir()
    (subs / "S11").mkdir()   # a link where a lab file belongs: refused as the grade CLI refuses it
    for n, d in lab_files().items():
        (subs / "S11" / n).write_bytes(d)
    (subs / "S11" / "sender.c").unlink()
    (subs / "S11" / "sender.c").symlink_to(subs / "S10" / "sender.c")
    w = make_worker(app, replay_runner())
    stop = threading.Event()

    def work():
        while not stop.is_set():
            w.drain(timeout=30)
            time.sleep(0.2)
    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        r = runner.invoke(args=["grade", "fall/lab1", str(subs), "--timeout", "60"])
        assert r.exit_code == 0, r.output
        assert "no student 'S99'" in r.output and "'done': 1" in r.output
        assert f"S11: sender.c in {subs / 'S11'} is not a regular file" in r.output, r.output
        r = runner.invoke(args=["regrade", "fall/lab1", "--timeout", "60"])
        assert r.exit_code == 0 and "regrade batch" in r.output and "'done': 1" in r.output, r.output
    finally:
        stop.set()
        t.join(10)
    out = tmp_path / "grades.csv"
    r = runner.invoke(args=["export-grades", "fall/lab1", "-o", str(out), "--json-dir", str(tmp_path / "json")])
    assert r.exit_code == 0, r.output
    rows = {x["student_number"]: x for x in csv.DictReader(out.open())}
    assert rows["S10"]["final_score"] == "100" and rows["S11"]["status"] == "no submission"
    assert json.loads((tmp_path / "json" / "S10.json").read_text())["final_score"] == 100
    assert "fall/lab1" in runner.invoke(args=["status"]).output
    r = runner.invoke(args=["regrade", "nope/lab9"])
    assert r.exit_code == 1 and "no assignment" in r.output


def test_instructor_creates_cohort_and_assignment(app, browser):
    t = browser("teacher")
    assert t.post("/instructor/cohorts", data={"name": "spring"}).status_code == 303
    from grader.service.models import Cohort, db

    with app.app_context():
        cid = db.session.execute(db.select(Cohort.id).filter_by(name="spring")).scalar_one()
    r = t.post(f"/instructor/cohorts/{cid}/assignments",
               data={"lab": "lab1", "deadline": "2030-05-01T12:00", "penalty_per_day": "5", "penalty_cap": "20"})
    assert r.status_code == 303 and "/instructor/assignments/" in r.headers["Location"]
    r = t.post(f"/instructor/cohorts/{cid}/assignments", data={"lab": "lab1", "deadline": "2030-05-01T12:00"},
               follow_redirects=True)
    assert b"already assigned" in r.data
    r = t.post(f"/instructor/cohorts/{cid}/assignments", data={"lab": "../etc", "deadline": "x"},
               follow_redirects=True)
    assert b"unknown lab" in r.data


def test_tokens_page_and_handin_tool(app, browser, tmp_path):
    """A token from the web page works for labs/tools/handin.py's upload (the API it speaks)."""
    import re

    alice = browser("alice")
    page = alice.post("/tokens", data={"name": "vm"}).get_data(as_text=True)
    token = re.search(r'<pre id="new-token">(cl_[^<]+)</pre>', page).group(1)
    c = app.test_client()
    me = c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert me["username"] == "alice"
    assert "cl_" in alice.get("/tokens").get_data(as_text=True) and token not in alice.get("/tokens").get_data(as_text=True)
