"""Deadline burst: N submissions from concurrent clients, paced to arrive within WINDOW seconds, against
the real web process (`flask --app grader serve`, SQLite, huey on SQLite) with grading paused (no
worker). Measures acceptance latency and verifies that every submission is stored and queued once."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grader.vm.qemu import free_port

REPO = Path(__file__).resolve().parents[1]


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = []
    for name, data in files.items():
        out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n"
                   f"Content-Type: text/plain\r\n\r\n".encode() + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def setup_instance(instance: Path, students: int) -> list[str]:
    """A cohort of `students` with lab1 and one API token each (no passwords: tokens only)."""
    os.environ["GRADER_INSTANCE_PATH"] = str(instance)
    from flask_migrate import upgrade

    from grader import create_app
    from grader.service.models import ApiToken, Assignment, Cohort, Membership, User, db

    app = create_app({"SECRET_KEY": secrets.token_urlsafe(48)})
    tokens = []
    with app.app_context():
        upgrade()
        c = Cohort(name="burst")
        db.session.add(c)
        db.session.flush()
        import datetime as dt

        db.session.add(Assignment(cohort_id=c.id, lab="lab1", title="lab1",
                                  deadline=dt.datetime(2099, 1, 1)))
        for i in range(students):
            u = User(username=f"b{i:05d}", name=f"B {i}", role="student", student_number=f"B{i:05d}")
            db.session.add(u)
            db.session.flush()
            db.session.add(Membership(cohort_id=c.id, user_id=u.id))
            tok = f"cl_burst_{i}_{secrets.token_hex(8)}"
            db.session.add(ApiToken(user_id=u.id, name="burst", token_hash=ApiToken.hash(tok), prefix=tok[:10]))
            tokens.append(tok)
        db.session.commit()
        db.engine.dispose()
    return tokens


def measure(n: int = 1000, window: float = 60.0, clients: int = 32, threads: int = 8, progress=print) -> dict:
    files = {name: (REPO / "labs" / "lab1" / "solution" / name).read_bytes()
             for name in ("sender.c", "receiver.c", "copytrace.c")}
    body, ctype = multipart(files)
    with tempfile.TemporaryDirectory(prefix="copylab-burst-") as tmp:
        instance = Path(tmp) / "instance"
        tokens = setup_instance(instance, n)
        port = free_port()
        env = dict(os.environ, GRADER_INSTANCE_PATH=str(instance),
                   GRADER_SECRET_KEY=secrets.token_urlsafe(48))
        web = subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "serve", "--port", str(port),
                                "--threads", str(threads)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(Path(tmp) / "web.log", "wb"), start_new_session=True)
        try:
            _wait_up(port)
            progress(f"burst: {n} submissions paced over {window:.0f}s by {clients} clients "
                     f"(waitress, {threads} threads)")
            lat: list[float] = [0.0] * n
            status: list[int] = [0] * n
            receipts: list[int | None] = [None] * n
            late_start = [0.0] * n
            local = threading.local()
            t0 = time.monotonic() + 0.5

            def one(i: int) -> None:
                due = t0 + i * window / n
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                late_start[i] = max(0.0, time.monotonic() - due)
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                s = time.monotonic()
                try:
                    conn.request("POST", "/api/v1/labs/lab1/submissions", body=body,
                                 headers={"Authorization": f"Bearer {tokens[i]}", "Content-Type": ctype})
                    r = conn.getresponse()
                    data = r.read()
                    status[i] = r.status
                    if r.status == 201:
                        receipts[i] = json.loads(data)["id"]
                except OSError:
                    status[i] = -1
                    local.conn = None
                lat[i] = time.monotonic() - s
            with ThreadPoolExecutor(clients) as ex:
                list(ex.map(one, range(n)))
            elapsed = time.monotonic() - t0
        finally:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(30)
        verify = _verify(instance, [r for r in receipts if r is not None])
    ok = [lat[i] for i in range(n) if status[i] == 201]
    return {
        "submissions": n, "window_s": window, "elapsed_s": round(elapsed, 2), "clients": clients,
        "server_threads": threads, "accepted": len(ok),
        "errors": {str(s): status.count(s) for s in set(status) if s != 201},
        "p50_ms": round(1000 * percentile(ok, 50), 1) if ok else None,
        "p99_ms": round(1000 * percentile(ok, 99), 1) if ok else None,
        "max_ms": round(1000 * max(ok), 1) if ok else None,
        "mean_ms": round(1000 * statistics.mean(ok), 1) if ok else None,
        "client_send_lag_p99_ms": round(1000 * percentile(late_start, 99), 1),
        **verify,
    }


def _wait_up(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/login")
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the web process did not answer")


def _verify(instance: Path, receipt_ids: list[int]) -> dict:
    """Stored once, queued once: DB rows, store files against their hashes, queue messages."""
    os.environ["GRADER_INSTANCE_PATH"] = str(instance)
    from grader import create_app
    from grader.service.models import Job, Submission, db
    from grader.service.store import Store

    app = create_app({"SECRET_KEY": secrets.token_urlsafe(48)})
    with app.app_context():
        subs = db.session.execute(db.select(Submission)).scalars().all()
        jobs_per_sub = dict(db.session.execute(db.select(Job.submission_id, db.func.count(Job.id))
                                               .group_by(Job.submission_id)).all())
        queued = set(db.session.execute(db.select(Job.id).where(Job.state == "queued")).scalars())
        store = Store(app.config["STORE_DIR"])
        intact = sum(store.verify_submission(s.storage_key, s.files) for s in subs)
        pending = app.extensions["copylab_dispatch"].pending_job_ids()
        db.engine.dispose()
    sub_ids = {s.id for s in subs}
    return {
        "stored": len(subs), "stored_intact": intact,
        "receipts_without_row": len(set(receipt_ids) - sub_ids),
        "lost": len(set(receipt_ids) - sub_ids) + (len(receipt_ids) - intact if intact < len(receipt_ids) else 0),
        "submissions_with_one_job": sum(1 for s in sub_ids if jobs_per_sub.get(s) == 1),
        "queued_jobs": len(queued), "queue_messages_for_queued_jobs": len(queued & pending),
        "queue_messages_total": len(pending),
    }
