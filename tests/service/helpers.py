"""Helpers of the service tier (imported as tests.service.helpers; fixtures live in conftest.py)."""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PASSWORDS = {"teacher": "teacher-pass-1", "alice": "alice-pass-1", "bob": "bob-pass-1"}
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')




def seed(app, deadline_days: float = 7) -> dict:
    """teacher (instructor), alice and bob (students) in cohort c1, lab1 due in `deadline_days`."""
    from flask_migrate import upgrade

    from grader.service.models import Assignment, Cohort, Membership, User, db

    with app.app_context():
        upgrade()
        ids = {}
        c = Cohort(name="c1")
        db.session.add(c)
        db.session.flush()
        for name, role, num in (("teacher", "instructor", None), ("alice", "student", "S1"),
                                ("bob", "student", "S2")):
            u = User(username=name, name=name.title(), role=role, student_number=num,
                     email=f"{name}@example.invalid")
            u.set_password(PASSWORDS[name])
            db.session.add(u)
            db.session.flush()
            ids[name] = u.id
            if role == "student":
                db.session.add(Membership(cohort_id=c.id, user_id=u.id))
        a = Assignment(cohort_id=c.id, lab="lab1", title="lab 1",
                       deadline=dt.datetime.utcnow().replace(microsecond=0) + dt.timedelta(days=deadline_days),
                       penalty_per_day=10, penalty_cap=30)
        db.session.add(a)
        db.session.commit()
        ids["cohort"], ids["assignment"] = c.id, a.id
    return ids


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


class Browser:
    """A test client that logs in like a person: it reads the CSRF token from each form's page."""

    def __init__(self, app, user: str | None = None):
        self.app = app
        self.c = app.test_client()
        self.user = user
        if user:
            self.login(user)

    def login(self, user: str, password: str | None = None):
        page = self.c.get("/login")
        r = self.c.post("/login", data={"username": user, "password": password or PASSWORDS[user],
                                        "csrf_token": csrf_of(page.get_data(as_text=True))})
        assert r.status_code == 302, r.get_data(as_text=True)[:500]
        return r

    def token(self) -> str:
        return csrf_of(self.c.get("/tokens").get_data(as_text=True))

    def post(self, url: str, data: dict | None = None, **kw):
        data = dict(data or {})
        data.setdefault("csrf_token", self.token())
        return self.c.post(url, data=data, **kw)

    def get(self, url: str, **kw):
        return self.c.get(url, **kw)


def solution_files() -> dict[str, bytes]:
    d = ROOT / "labs" / "lab1" / "solution"
    return {n: (d / n).read_bytes() for n in ("sender.c", "receiver.c", "copytrace.c")}


def upload_data(files: dict[str, bytes]) -> dict:
    import io

    return {name: (io.BytesIO(data), name) for name, data in files.items()}


class StandInVM:
    """Unit tests only: the pool slot's VM, alive until told otherwise."""

    def __init__(self):
        self.dead = False
        self.closed = False

    def alive(self):
        return not self.dead

    def close(self):
        self.closed = True


def replay_runner(score_override=None, fail_acquire=False, delay=0.0, calls=None):
    """A runner that replays a recorded engine run (real checks over recorded evidence)."""
    import time

    def run(lab, vm, subdir, outdir):
        from tests.unit.engine_fixtures import good_run
        from grader.engine.checkrun import run_checks
        from grader.engine.result import build_result, write_result

        if calls is not None:
            calls.append(sorted(p.name for p in Path(subdir).iterdir()))
        if delay:
            time.sleep(delay)
        r = good_run()
        answers = Path(subdir) / lab.answers_file if lab.answers_file else None
        if answers is not None and answers.is_file():   # read as the engine's upload phase does
            r.answers_text = answers.read_text(encoding="utf-8")
        if fail_acquire:
            r.phases["acquire"].status = "failed"
            r.phases["acquire"].detail = "VMStartError: QEMU could not start"
        Path(outdir).mkdir(parents=True, exist_ok=True)
        (Path(outdir) / "kmsg.txt").write_text(r.kmsg_text)
        result = build_result(r, run_checks(lab.checks, r), {"kmsg.txt": "kmsg.txt"}, max_score=lab.max_score)
        if score_override is not None:
            result["score"] = score_override
        write_result(result, outdir)
        return result
    return run


def make_worker(app, runner, slots: int = 1):
    from grader.service.pool import Slot, VMPool
    from grader.service.worker import Worker

    pool = VMPool([Slot(f"standin{i}", StandInVM) for i in range(slots)])
    return Worker(app, pool, runner=runner)
