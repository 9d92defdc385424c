"""The service's app in this process, driven as the service tests and the fault suite drive it: a test
client that logs in like a person (CSRF token read from each form's page), and a worker whose pool holds
stand-in VMs and whose runner replays a recorded engine run (real checks over recorded evidence)."""
from __future__ import annotations

import time
from pathlib import Path

from support.http import csrf_of
from support.service import PASSWORDS


def page_csrf(page: str) -> str:
    """The CSRF token of a form page; an AssertionError when the page has none."""
    token = csrf_of(page)
    if not token:
        raise AssertionError("no CSRF token in the page")
    return token


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
                                        "csrf_token": page_csrf(page.get_data(as_text=True))})
        assert r.status_code == 302, r.get_data(as_text=True)[:500]
        return r

    def token(self) -> str:
        return page_csrf(self.c.get("/tokens").get_data(as_text=True))

    def post(self, url: str, data: dict | None = None, **kw):
        data = dict(data or {})
        data.setdefault("csrf_token", self.token())
        return self.c.post(url, data=data, **kw)

    def get(self, url: str, **kw):
        return self.c.get(url, **kw)


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
    def run(lab, vm, subdir, outdir):
        from grader.engine.checkrun import run_checks
        from grader.engine.result import build_result, write_result
        from support.engine_runs import good_run

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
