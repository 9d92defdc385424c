"""Part ``webkill``: hand-ins in flight while the web process is SIGKILLed again and again.

The real web process (`flask --app grader serve`, SQLite, huey on SQLite) with grading paused (no
worker), clients handing in concurrently and retrying as `make handin` users would, and a killer that
SIGKILLs the web process at random moments and starts it again. At the end every receipt a client
got must be a stored, intact submission with its job queued and its queue message pending.
"""
from __future__ import annotations

import http.client
import json
import random
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faults.report import Figure, zero
from support.http import multipart
from support.service import ServiceProcesses, in_process_app, lab_files
from support.service import seed as seed_instance



def measure(handins: int = 300, clients: int = 12, kills: int = 10, window: float = 60.0, seed: int = 1,
            progress=print) -> dict:
    rng = random.Random(seed)
    files = lab_files()
    tmp = Path(tempfile.mkdtemp(prefix="copylab-faults-web-"))
    svc = ServiceProcesses(tmp / "instance", None, progress, settings={"SECRET_KEY": secrets.token_urlsafe(48)})
    try:
        with in_process_app(svc.instance) as app:
            tokens = seed_instance(app, token_students=handins)["tokens"]
        svc.start_web()
        receipts: list[dict | None] = [None] * handins
        attempts = [0] * handins
        server_errors = [0]
        recover: list[float] = []

        t0 = time.monotonic() + 0.5
        # Kill k falls at a random point early in the k-th of `kills` equal slots of the hand-in window,
        # against an absolute clock: every kill happens (a slow restart delays the next one, never drops
        # it) and all fall while hand-ins are still being paced in. The killer never stops early: a
        # drill that counted fewer kills than it was asked for would measure less than it says.
        kill_at = [t0 + window * (k + rng.uniform(0.05, 0.45)) / kills for k in range(kills)]

        def killer() -> None:
            for at in kill_at:
                time.sleep(max(0.0, at - time.monotonic()))
                svc.kill_web()
                time.sleep(rng.uniform(0.2, 1.0))
                recover.append(svc.start_web())

        def handin(i: int) -> None:
            time.sleep(max(0.0, t0 + i * window / handins - time.monotonic()))   # paced over the window
            # each hand-in has its own sent files (the receipt's sha256 must match exactly these)
            mine = dict(files, **{"sender.c": files["sender.c"] + f"/* {i} */\n".encode()})
            body, ctype = multipart([(n, n, d) for n, d in mine.items()])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                attempts[i] += 1
                try:
                    c = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
                    c.request("POST", "/api/v1/labs/lab1/submissions", body=body,
                              headers={"Authorization": f"Bearer {tokens[i]}", "Content-Type": ctype})
                    r = c.getresponse()
                    data = r.read()
                    c.close()
                    if r.status == 201:
                        receipts[i] = json.loads(data)
                        return
                    if r.status >= 500:
                        server_errors[0] += 1
                except (OSError, http.client.HTTPException):
                    pass
                time.sleep(0.5)

        progress(f"webkill: {handins} hand-ins over {window:.0f}s by {clients} clients, {kills} SIGKILLs of the web "
                 "process")
        k = threading.Thread(target=killer, daemon=True)
        k.start()
        with ThreadPoolExecutor(clients) as ex:
            list(ex.map(handin, range(handins)))
        k.join(60 + window)
        svc.stop()
        got = [r for r in receipts if r]
        verify = check_receipts(svc.instance, [r for r in got])
    finally:
        svc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    no_receipt = handins - len(got)
    figures = [
        Figure("restarts", "hand-ins while the web process was SIGKILLed and restarted",
               f"{handins} hand-ins, {len(recover)} kills", "", None,
               f"{sum(attempts) - handins} client retries; web back in {max(recover, default=0):.1f} s at most").as_dict(),
        zero("restarts", "hand-ins with a receipt that are not stored intact with their job queued and its "
             "queue message pending", len(verify["bad"]), "; ".join(verify["bad"][:5])).as_dict(),
        zero("restarts", "hand-ins that never got a receipt (the client gave up after 120 s)", no_receipt).as_dict(),
        Figure("restarts", "hand-ins stored twice (the kill came after the store and before the receipt; the "
               "retry's newer submission supersedes the first)", str(verify["unreceipted"]), "", None).as_dict(),
    ]
    return {"figures": figures, "receipts": len(got), "recover_s": recover, "server_errors": server_errors[0],
            "stored": verify["stored"], "bad": verify["bad"]}


def check_receipts(instance: Path, receipts: list[dict]) -> dict:
    """Each receipt: its submission row, its files intact against the receipt, one job, queued, with a
    pending queue message."""
    import os

    os.environ["GRADER_INSTANCE_PATH"] = str(instance)
    from grader import create_app
    from grader.service.models import Job, Submission, db
    from grader.service.store import Store

    app = create_app({"SECRET_KEY": secrets.token_urlsafe(48)})
    bad = []
    with app.app_context():
        store = Store(app.config["STORE_DIR"])
        pending = app.extensions["copylab_dispatch"].pending_job_ids()
        for rc in receipts:
            sub = db.session.get(Submission, rc["id"])
            if sub is None:
                bad.append(f"receipt {rc['id']}: no submission row")
                continue
            if sub.receipt != rc["sha256"] or not store.verify_submission(sub.storage_key, sub.files):
                bad.append(f"receipt {rc['id']}: stored files do not match the receipt")
            jobs = db.session.execute(db.select(Job).filter_by(submission_id=sub.id)).scalars().all()
            if len(jobs) != 1 or jobs[0].state != "queued" or jobs[0].id not in pending:
                bad.append(f"receipt {rc['id']}: jobs {[(j.id, j.state) for j in jobs]}, pending "
                           f"{[j.id in pending for j in jobs]}")
        stored = db.session.execute(db.select(db.func.count(Submission.id))).scalar()
        db.engine.dispose()
    return {"bad": bad, "stored": stored, "unreceipted": stored - len(receipts)}
