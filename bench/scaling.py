"""Pool scaling: jobs per minute with 1, 2 and 4 pool slots through the real service parts (database,
job claims and leases, huey consumer threads, the worker). On 2 cores only one TCG VM runs at full
speed, so each slot holds a stand-in VM that replays a grading run's measured phase durations
(time-scaled); what is measured is the dispatcher, queue and database, not the emulator."""
from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# median phase durations of a solution's grading run under TCG (bench floor, 2026-11-25), seconds
DEFAULT_PHASES = {"acquire": 2.1, "verify": 1.0, "upload": 1.2, "build": 60.0, "trace_start": 1.5,
                  "load": 1.5, "run": 3.0, "collect": 2.5, "unload": 1.2, "release": 0.1}


class ReplayVM:
    """Stands in for a lab VM: alive, never dirty."""

    prepared = True

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


def replay_runner(phases: dict[str, float], scale: float):
    template = None

    def run(lab, vm, subdir, outdir):
        nonlocal template
        from grader.engine.result import write_result

        time.sleep(sum(phases.values()) * scale)
        if template is None:
            template = _recorded_result(lab)
        result = dict(template, phases=[{"name": k, "status": "ok", "duration_s": v * scale, "detail": ""}
                                        for k, v in phases.items()])
        Path(outdir).mkdir(parents=True, exist_ok=True)
        write_result(result, outdir)
        return result
    return run


def _recorded_result(lab) -> dict:
    from grader.engine.checkrun import run_checks
    from grader.engine.result import build_result
    from support.engine_runs import good_run

    r = good_run()
    return build_result(r, run_checks(lab.checks, r), {}, max_score=lab.max_score)


def one(slots: int, jobs_per_slot: int, phases: dict, scale: float) -> dict:
    from flask_migrate import upgrade

    from grader import create_app
    from grader.service.models import Assignment, Cohort, Job, Membership, User, db
    from grader.service.pool import Slot, VMPool
    from grader.service.submit import accept
    from grader.service.uploads import UploadPart
    from grader.service.worker import Worker

    files = {n: (REPO / "labs" / "lab1" / "solution" / n).read_bytes()
             for n in ("sender.c", "receiver.c", "copytrace.c")}
    n_jobs = slots * jobs_per_slot
    with tempfile.TemporaryDirectory(prefix="copylab-scale-") as tmp:
        os.environ["GRADER_INSTANCE_PATH"] = str(Path(tmp) / "instance")
        app = create_app({"SECRET_KEY": secrets.token_urlsafe(48), "HEARTBEAT_SECONDS": 2, "LEASE_SECONDS": 30})
        with app.test_request_context():
            upgrade()
            c = Cohort(name="scale")
            db.session.add(c)
            db.session.flush()
            a = Assignment(cohort_id=c.id, lab="lab1", title="lab1", deadline=dt.datetime(2099, 1, 1))
            db.session.add(a)
            users = []
            for i in range(n_jobs):   # one student per job: no supersede, no per-student serialisation
                u = User(username=f"s{i}", role="student", name=f"s{i}")
                db.session.add(u)
                db.session.flush()
                db.session.add(Membership(cohort_id=c.id, user_id=u.id))
                users.append(u)
            db.session.commit()
            for u in users:
                accept(u, a, [UploadPart(n, n, d) for n, d in files.items()], "api")
        pool = VMPool([Slot(f"replay{i}", ReplayVM) for i in range(slots)])
        worker = Worker(app, pool, runner=replay_runner(phases, scale))
        t0 = time.monotonic()
        consumer = worker.start_consumer()
        try:
            while True:
                with app.app_context():
                    done = db.session.execute(db.select(db.func.count(Job.id)).where(Job.state == "done")).scalar_one()
                    db.session.remove()
                if done >= n_jobs:
                    break
                if time.monotonic() - t0 > 600:
                    raise RuntimeError(f"scaling run with {slots} slots: {done}/{n_jobs} after 600 s")
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
        finally:
            consumer.stop(graceful=True)
            worker.stop()
            with app.app_context():
                db.engine.dispose()
    per_job = sum(phases.values())
    return {"slots": slots, "jobs": n_jobs, "elapsed_s": round(elapsed, 2),
            # in real-time terms: the replay ran `scale` times faster than a real grading run
            "jobs_per_minute_real_time": round(60 * n_jobs / (elapsed / scale), 3),
            "overhead_per_job_s": round(elapsed * slots / n_jobs - per_job * scale, 3)}


def measure(slot_counts=(1, 2, 4), jobs_per_slot: int = 6, scale: float = 0.05, phases: dict | None = None,
            progress=print) -> dict:
    phases = phases or DEFAULT_PHASES
    rows = []
    for n in slot_counts:
        r = one(n, jobs_per_slot, phases, scale)
        progress(f"scaling: {n} slot(s): {r['jobs']} jobs in {r['elapsed_s']}s "
                 f"({r['jobs_per_minute_real_time']} jobs/min in real time)")
        rows.append(r)
    base = rows[0]["jobs_per_minute_real_time"]
    for r in rows:
        r["efficiency"] = round(r["jobs_per_minute_real_time"] / (r["slots"] * base), 3)
    return {"replayed_seconds_per_job": round(sum(phases.values()), 1), "time_scale": scale,
            "phases": phases, "rows": rows, "min_efficiency": min(r["efficiency"] for r in rows)}
