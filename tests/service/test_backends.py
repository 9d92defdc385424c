"""The multi-host configuration against real servers: PostgreSQL for the database (migrations, the
conditional-UPDATE claims under concurrency) and Redis for the queue (two workers with their own
huey consumers, as on two grader hosts)."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from support.app import make_worker, replay_runner
from support.service import lab_files, seed


@pytest.fixture
def pg_app(tmp_path, monkeypatch, postgres_server, redis_server):
    monkeypatch.setenv("GRADER_INSTANCE_PATH", str(tmp_path / "instance"))
    from grader import create_app

    url = postgres_server.new_database(f"t_{uuid.uuid4().hex[:10]}")
    app = create_app({"TESTING": True, "SECRET_KEY": "t" * 40, "SQLALCHEMY_DATABASE_URI": url,
                      "QUEUE_URL": redis_server.url, "QUEUE_NAME": f"q{uuid.uuid4().hex[:8]}",
                      "HEARTBEAT_SECONDS": 0.2, "RECONCILE_SECONDS": 0.5, "LEASE_SECONDS": 5,
                      "BUSY_RETRY_SECONDS": 0.2, "SUBMIT_COOLDOWN_SECONDS": 0})
    app.ids = seed(app)
    yield app
    from grader.service.models import db

    app.extensions["copylab_dispatch"].flush()
    with app.app_context():
        db.engine.dispose()


def submit(app, user, kind="live"):
    from grader.service.models import Assignment, User, db
    from grader.service.submit import accept
    from grader.service.uploads import UploadPart

    with app.test_request_context():
        parts = [UploadPart(n, n, d) for n, d in lab_files().items()]
        sub, job = accept(db.session.get(User, app.ids[user]), db.session.get(Assignment, app.ids["assignment"]),
                          parts, "api", kind=kind)
        return sub.id, job.id


def test_postgres_schema_matches_models(pg_app):
    from flask_migrate import check

    with pg_app.app_context():
        assert pg_app.extensions["sqlalchemy"].engine.dialect.name == "postgresql"
        check()   # raises when the migrations and the models disagree


def test_parallel_uploads_of_one_student_pass_the_cooldown_once(pg_app):
    """PostgreSQL's row lock serialises one student's acceptances (grader/service/submit.py)."""
    from tests.service.test_storage import parallel_uploads

    assert parallel_uploads(pg_app) == [201] + [429] * 7


def test_concurrent_claims_have_one_winner(pg_app):
    from grader.service import jobs

    _, jid = submit(pg_app, "alice")
    winners, barrier = [], threading.Barrier(8)

    def claimer(i):
        with pg_app.app_context():
            barrier.wait()
            try:
                jobs.claim(jid, f"w{i}", 60)
                winners.append(i)
            except jobs.ClaimRefused:
                pass
    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(winners) == 1


def test_two_workers_over_redis_grade_each_job_once(pg_app):
    from grader.service.models import Job, Result, db

    expected = []
    for i in range(4):
        for user in ("alice", "bob"):
            expected.append(submit(pg_app, user, kind="regrade"))
    live = [submit(pg_app, "alice"), submit(pg_app, "bob")]
    calls_a, calls_b = [], []
    both = threading.Barrier(2, timeout=60)

    def holding_its_first_job(run):
        """Each host holds its first job until the other host has one too: both hosts work, however
        late one host's consumer starts polling on a loaded machine."""
        first = [True]

        def runner(*args):
            if first and first.pop():
                both.wait()
            return run(*args)
        return runner
    runner_a = holding_its_first_job(replay_runner(delay=0.2, calls=calls_a))
    runner_b = holding_its_first_job(replay_runner(delay=0.2, calls=calls_b))
    wa = make_worker(pg_app, runner_a)
    wb = make_worker(pg_app, runner_b)
    wa.name, wb.name = "host-a", "host-b"
    ca, cb = wa.start_consumer(), wb.start_consumer()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with pg_app.app_context():
                left = db.session.execute(db.select(db.func.count(Job.id)).where(
                    Job.state.in_(("queued", "running")))).scalar_one()
            if left == 0:
                break
            time.sleep(0.3)
    finally:
        ca.stop(graceful=True)
        cb.stop(graceful=True)
        wa.stop()
        wb.stop()
    with pg_app.app_context():
        states = dict(db.session.execute(db.select(Job.state, db.func.count(Job.id)).group_by(Job.state)).all())
        per_job = db.session.execute(db.select(Result.job_id, db.func.count(Result.id)).group_by(Result.job_id)).all()
        owners = set(db.session.execute(db.select(Job.lease_owner).where(Job.state == "done")).scalars())
    assert states == {"done": 10}, states
    assert len(per_job) == 10 and all(n == 1 for _, n in per_job)
    assert len(calls_a) + len(calls_b) == 10 and calls_a and calls_b   # both hosts worked
    assert owners == {"host-a", "host-b"}
    assert live
