"""Deadline burst: N submissions from concurrent clients, paced to arrive within WINDOW seconds, against
the real web process (`flask --app grader serve`, SQLite, huey on SQLite) with grading paused (no
worker). Measures acceptance latency and verifies that every submission is stored and queued once."""
from __future__ import annotations

import http.client
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.http import multipart
from support.service import ServiceProcesses, in_process_app, lab_files, seed


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def measure(n: int = 1000, window: float = 60.0, clients: int = 32, threads: int = 8, progress=print) -> dict:
    body, ctype = multipart([(name, name, data) for name, data in lab_files().items()])
    with tempfile.TemporaryDirectory(prefix="copylab-burst-") as tmp:
        web = ServiceProcesses(Path(tmp) / "instance", progress=progress, web_args=("--threads", str(threads)))
        instance, port = web.instance, web.port
        with in_process_app(instance) as app:
            tokens = seed(app, token_students=n)["tokens"]
        with web:
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
