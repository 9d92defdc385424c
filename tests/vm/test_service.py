"""The grader service end to end on a real VM pool: `flask --app grader serve` and `... worker` as
separate processes, a QEMU lab VM from the golden image, a real browser, and kills mid-job.

Both tests share one running service (and its one pool VM) and run on the same xdist worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from grader.vm.qemu import free_port


ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.xdist_group("service_vm"), pytest.mark.vm]
STUDENT_PW, TEACHER_PW = "student-pass-1", "teacher-pass-1"


class Service:
    """The web process and the worker process of one instance folder."""

    def __init__(self, instance: Path, golden: Path, progress):
        self.instance = instance
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.progress = progress
        self.env = dict(os.environ, GRADER_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1")
        instance.mkdir(parents=True, exist_ok=True)
        (instance / "config.py").write_text(
            f"SECRET_KEY = {secrets.token_urlsafe(48)!r}\nPOOL_GOLDEN = {str(golden)!r}\nPOOL_QEMU_VMS = 1\n"
            "HEARTBEAT_SECONDS = 2\nLEASE_SECONDS = 30\nRECONCILE_SECONDS = 5\n")
        self.web = self.worker = None
        self.starts = 0

    def flask(self, *args: str, input: str | None = None, env: dict | None = None) -> str:
        r = subprocess.run([sys.executable, "-m", "flask", "--app", "grader", *args], cwd=ROOT,
                           env=dict(self.env, **(env or {})), input=input, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"flask {' '.join(args)}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def setup(self) -> None:
        self.flask("init-db")
        self.flask("create-instructor", "teacher", "--name", "Teacher", env={"GRADER_NEW_PASSWORD": TEACHER_PW})
        self.flask("create-cohort", "vmcohort")
        roster = self.instance / "roster.csv"
        roster.write_text("student_number,name,email,username,password\n"
                          f"S1,Student One,s1@example.invalid,s1,{STUDENT_PW}\n"
                          f"S2,Student Two,s2@example.invalid,s2,{STUDENT_PW}\n")
        self.flask("import-roster", "vmcohort", str(roster))
        self.flask("add-lab", "vmcohort", "lab1", "--deadline", "2099-01-01T00:00")

    def start(self) -> None:
        self.starts += 1
        logs = self.instance / "logs"
        logs.mkdir(exist_ok=True)
        self.web = subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "serve", "--port",
                                     str(self.port)], cwd=ROOT, env=self.env, start_new_session=True,
                                    stdout=open(logs / f"web{self.starts}.log", "wb"), stderr=subprocess.STDOUT)
        self.worker = subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "worker"], cwd=ROOT,
                                       env=self.env, start_new_session=True,
                                       stdout=open(logs / f"worker{self.starts}.log", "wb"),
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/login", timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"the web process did not answer: {self.log('web')}")

    def log(self, which: str) -> str:
        p = self.instance / "logs" / f"{which}{self.starts}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def kill(self) -> None:
        for p in (self.web, self.worker):
            if p and p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)

    def stop(self) -> None:
        for p in (self.worker, self.web):
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGINT if p is self.worker else signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)

    def db(self, sql: str, *args):
        with sqlite3.connect(self.instance / "grader.sqlite3", timeout=30) as c:
            return c.execute(sql, args).fetchall()

    def token(self, username: str) -> str:
        from grader.service.models import ApiToken

        tok = "cl_" + secrets.token_urlsafe(24)
        uid = self.db("SELECT id FROM users WHERE username=?", username)[0][0]
        self.db("INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at) "
                "VALUES (?, 'test', ?, ?, datetime('now'))", uid, ApiToken.hash(tok), tok[:10])
        return tok

    def api(self, path: str, token: str) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


def qemu_pids(instance: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"{instance}/vms/"], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.fixture(scope="module")
def service(golden, progress, tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("service") / "instance", golden, progress)
    s.setup()
    s.start()
    yield s
    s.stop()
    s.kill()
    deadline = time.monotonic() + 15
    while qemu_pids(s.instance) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert qemu_pids(s.instance) == [], "QEMU outlived the worker"


def test_browser_student_uploads_and_sees_score_instructor_sees_dashboard(service, chromium_browser, progress):
    solution = ROOT / "labs" / "lab1" / "solution"
    ctx = chromium_browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    page.goto(service.url + "/login")
    page.fill("input[name=username]", "s1")
    page.fill("input[name=password]", STUDENT_PW)
    page.click("button[type=submit]")
    page.click("text=lab1")
    for name in ("sender.c", "receiver.c", "copytrace.c"):
        page.set_input_files(f"input[name='{name}']", str(solution / name))
    page.click("#upload button[type=submit]")
    page.wait_for_selector("text=queued for grading")
    progress("browser: solution uploaded; waiting for the grade (first VM boot + one grading run)")
    page.wait_for_selector("#score", timeout=900_000)   # the page refreshes itself every 5 s
    assert "100/100" in page.inner_text("#score"), page.content()[:3000]
    rows = page.locator("#trace-table tr")
    assert rows.count() == 8                             # header + the 7 steps
    table = page.inner_text("#trace-table")
    assert "copy #1 _copy_from_iter" in table and "0xffff" in table
    ctx.close()

    ctx = chromium_browser.new_context()
    page = ctx.new_page()
    page.goto(service.url + "/login")
    page.fill("input[name=username]", "teacher")
    page.fill("input[name=password]", TEACHER_PW)
    page.click("button[type=submit]")
    page.click("text=vmcohort")
    page.click("text=lab1: Where do my 16 bytes go?")
    assert "graded" in page.inner_text("#students")
    page.wait_for_function("document.getElementById('histogram').naturalWidth > 0")
    csv = page.request.get(page.url + "/gradebook.csv").text()
    assert "S1,s1,Student One" in csv and ",100,100,100,graded" in csv
    ctx.close()


def test_kill_worker_and_web_mid_job_then_restart(service, progress, tmp_path):
    """`make handin` uploads; the worker and the web process are SIGKILLed during grading; after a
    restart the job completes exactly once and the submission is intact."""
    token = service.token("s2")
    lab = tmp_path / "lab1"
    lab.mkdir()
    for name in ("sender.c", "receiver.c", "copytrace.c", "lab.toml"):
        src = ROOT / "labs" / "lab1" / ("solution" if name.endswith(".c") else "") / name
        (lab / name).write_bytes(src.read_bytes())
    r = subprocess.run([sys.executable, str(ROOT / "labs" / "tools" / "handin.py"), "--lab-dir", str(lab)],
                       env=dict(os.environ, COPYLAB_GRADER_URL=service.url, COPYLAB_TOKEN=token),
                       capture_output=True, text=True, timeout=60, cwd=lab)
    assert r.returncode == 0, r.stdout + r.stderr
    import re

    m = re.search(r"receipt id (\d+) sha256 ([0-9a-f]{64})", r.stdout)
    assert m, r.stdout
    sub_id, sha = int(m.group(1)), m.group(2)
    # wait until the job is well into grading (building on the VM), then kill both processes
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rows = service.db("SELECT id, state, phase, started_at FROM jobs WHERE submission_id=?", sub_id)
        if rows and rows[0][1] == "running" and rows[0][2] and rows[0][2].startswith("grading"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the job never started: {rows}\n{service.log('worker')}")
    # the pool VM is booted and snapshotted (first job) before the kill, so that the restart shows the
    # resume from its snapshot; then 20 s into the grading run: the module build on the VM
    ready = service.instance / "vms" / "vm1" / "vm1.ready.json"
    deadline = time.monotonic() + 300
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ready.exists(), service.log("worker")
    time.sleep(20)
    assert service.db("SELECT state FROM jobs WHERE submission_id=?", sub_id)[0][0] == "running"
    progress("service: killing the worker and the web process in the middle of grading")
    service.kill()
    deadline = time.monotonic() + 15
    while qemu_pids(service.instance) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert qemu_pids(service.instance) == [], "QEMU outlived the killed worker"
    t_restart = time.monotonic()
    service.start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        body = service.api(f"/api/v1/submissions/{sub_id}", token)
        if body["status"] in ("graded", "failed"):
            break
        time.sleep(2)
    progress(f"service: recovered and graded in {time.monotonic() - t_restart:.0f}s after the restart")
    assert body["status"] == "graded", (body, service.log("worker"))
    assert body["score"] == 100 and body["sha256"] == sha
    jobs = service.db("SELECT id, state, attempts FROM jobs WHERE submission_id=?", sub_id)
    assert [(s, a) for _, s, a in jobs] == [("done", 2)]
    assert service.db("SELECT count(*) FROM results WHERE submission_id=?", sub_id) == [(1,)]
    assert "resumed from its clean snapshot" in service.log("worker")
    # the stored files still match the receipt
    key = service.db("SELECT storage_key FROM submissions WHERE id=?", sub_id)[0][0]
    from grader.engine.run import submission_digest

    stored = service.instance / "store" / key
    files = {p.name: p.read_bytes() for p in stored.iterdir() if not p.name.startswith(".")}
    assert submission_digest(files)[0] == body["content_sha256"]
    assert hashlib.sha256((stored / ".upload").read_bytes()).hexdigest() == sha   # the archive as sent
