"""The job state machine and the dispatch: no submission lost, none graded twice to completion."""
from __future__ import annotations

import datetime as dt

import pytest

from support.app import make_worker, replay_runner
from support.service import lab_files


@pytest.fixture
def submit(app):
    """submit(user) -> (submission id, job id), through the same path as the web and the API."""
    from grader.service.models import Assignment, User, db
    from grader.service.submit import accept
    from grader.service.uploads import UploadPart

    def go(user="alice", kind="live"):
        with app.test_request_context():
            u = db.session.get(User, app.ids[user])
            a = db.session.get(Assignment, app.ids["assignment"])
            parts = [UploadPart(n, n, d) for n, d in lab_files().items()]
            sub, job = accept(u, a, parts, "api", kind=kind)
            return sub.id, job.id
    return go


def job_state(app, jid):
    from grader.service.models import Job, db

    with app.app_context():
        j = db.session.get(Job, jid)
        return j.state, j.attempts


def results_of(app, sub_id):
    from grader.service.models import Result, db

    with app.app_context():
        return db.session.execute(db.select(Result).filter_by(submission_id=sub_id)).scalars().all()


def test_newer_submission_supersedes_queued(app, submit):
    s1, j1 = submit()
    s2, j2 = submit()
    _, jb = submit("bob")
    assert job_state(app, j1)[0] == "superseded"
    assert job_state(app, j2)[0] == "queued" and job_state(app, jb)[0] == "queued"
    make_worker(app, replay_runner()).drain(timeout=30)
    assert results_of(app, s1) == [] and len(results_of(app, s2)) == 1


def test_claim_once_and_stale_worker_cannot_complete(app, submit):
    from grader.service import jobs
    from grader.service.models import Job, db

    sub, jid = submit()
    with app.app_context():
        job, t1 = jobs.claim(jid, "w1", 60)
        with pytest.raises(jobs.ClaimRefused) as e:
            jobs.claim(jid, "w2", 60)
        assert e.value.why == "gone"
        # w1 goes silent: its lease runs out, the job is requeued and w2 takes it
        db.session.get(Job, jid).lease_expires = dt.datetime.utcnow() - dt.timedelta(seconds=1)
        db.session.commit()
        assert jobs.requeue_expired() == 1
        job, t2 = jobs.claim(jid, "w2", 60)
        assert job.attempts == 2
        result = {"score": 100, "max_score": 100, "verdict": None}
        assert jobs.complete(jid, t1, result, None) is False      # the stale worker's result is discarded
        assert jobs.complete(jid, t2, result, None) is True
        assert jobs.complete(jid, t2, result, None) is False      # and nobody completes it twice
        assert jobs.heartbeat(jid, t1, 60) is False
    assert len(results_of(app, sub)) == 1 and job_state(app, jid) == ("done", 2)


def test_one_running_job_per_student_and_lab(app, submit):
    from grader.service import jobs

    _, j1 = submit(kind="regrade")
    _, j2 = submit()               # live: does not supersede the regrade job
    _, jb = submit("bob")
    with app.app_context():
        jobs.claim(j1, "w1", 60)
        with pytest.raises(jobs.ClaimRefused) as e:
            jobs.claim(j2, "w2", 60)
        assert e.value.why == "busy"
        jobs.claim(jb, "w2", 60)   # another student is not held up


def test_live_submissions_go_before_regrades(app, submit):
    _, jr = submit("bob", kind="regrade")
    _, jl = submit("alice")
    hy = app.extensions["copylab_dispatch"].huey
    first = hy.dequeue()
    assert first.args == (jl,)
    assert hy.dequeue().args == (jr,)


def test_infrastructure_failure_retries_then_fails_visibly(app, submit, browser):
    sub, jid = submit()
    w = make_worker(app, replay_runner(fail_acquire=True))
    w.drain(timeout=30)
    assert job_state(app, jid) == ("failed", 3)
    assert results_of(app, sub) == []
    slot = w.pool.slots[0]
    assert slot.replaced == 3
    page = browser("alice").get(f"/submissions/{sub}").get_data(as_text=True)
    assert "outside your code" in page
    dash = browser("teacher").get(f"/instructor/assignments/{app.ids['assignment']}").get_data(as_text=True)
    assert "Grading failures" in dash and "QEMU could not start" in dash


def test_a_damaged_store_fails_the_job_at_once(app, submit):
    """Stored files that no longer match their receipt: no attempt can do better, so the job fails on
    the first one, says why, and nothing is graded."""
    from grader.service.models import Job, Submission, db
    from grader.service.store import Store

    sub, jid = submit()
    calls = []
    with app.app_context():
        s = db.session.get(Submission, sub)
        (Store(app.config["STORE_DIR"]).submission_dir(s.storage_key) / "sender.c").write_bytes(b"damaged")
    make_worker(app, replay_runner(calls=calls)).drain(timeout=30)
    assert job_state(app, jid) == ("failed", 1)
    assert calls == [] and results_of(app, sub) == []
    with app.app_context():
        assert "store damaged" in db.session.get(Job, jid).error

def test_worker_restart_requeues_its_orphans(app, submit):
    from grader.service import jobs

    sub, jid = submit()
    name = app.config["WORKER_NAME"]
    with app.app_context():
        jobs.claim(jid, name, 600)         # the worker is killed mid-job (its lease is still valid)
    w = make_worker(app, replay_runner())
    w.recover()                            # what a restarted worker does first
    assert job_state(app, jid) == ("queued", 1)
    w.drain(timeout=30)
    assert job_state(app, jid) == ("done", 2) and len(results_of(app, sub)) == 1


def test_lost_message_is_resent_and_duplicates_are_harmless(app, submit):
    sub, jid = submit()
    d = app.extensions["copylab_dispatch"]
    d.flush()                                            # the queue lost the message
    with app.app_context():
        assert d.reconcile() == 1                        # resent
        assert d.reconcile() == 0                        # not twice while it is pending
    d.send(jid, 100)                                     # a duplicate message
    w = make_worker(app, replay_runner())
    d.handler = w.handle
    outcomes = []
    while (task := d.huey.dequeue()) is not None:
        with app.app_context():
            outcomes.append(w.handle(task.args[0]))
    assert sorted(outcomes) == ["done", "gone"]
    assert len(results_of(app, sub)) == 1


def test_queue_down_at_submit_loses_nothing(app, submit, monkeypatch):
    d = app.extensions["copylab_dispatch"]

    def broken(*a, **kw):
        raise ConnectionError("queue unreachable")
    monkeypatch.setattr(d.huey, "enqueue", broken)
    sub, jid = submit()                                  # accepted: the job row is the truth
    assert job_state(app, jid) == ("queued", 0)
    monkeypatch.undo()
    w = make_worker(app, replay_runner())
    w.recover()                                          # the reconciler sends it
    task = d.huey.dequeue()
    assert task.args == (jid,)
    with app.app_context():
        assert w.handle(jid) == "done"


def test_consumer_threads_grade_everything_once(app, submit):
    """Real huey consumer threads (2 slots) over the SQLite queue."""
    import time

    subs = [submit(u)[0] for u in ("alice", "bob")] + [submit("alice", kind="regrade")[0]]
    calls = []
    w = make_worker(app, replay_runner(delay=0.3, calls=calls), slots=2)
    consumer = w.start_consumer()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(len(results_of(app, s)) for s in subs) < 3:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        consumer.stop(graceful=True)
        w.stop()
    counts = [len(results_of(app, s)) for s in subs]
    assert counts == [1, 1, 1], counts
    assert len(calls) == 3


def test_a_vm_stopped_from_outside_mid_run_is_retried_not_scored(app, submit):
    """QEMU killed by someone else while grading: whatever the engine concluded, no result is kept
    for that attempt; the job runs again on a replaced VM and is scored once."""
    from support.app import StandInVM

    sub, jid = submit()
    vms = []

    class FirstKilled(StandInVM):   # the pool's first VM is killed from outside during its run
        def __init__(self):
            super().__init__()
            vms.append(self)

        def infrastructure_fault(self):
            return "QEMU was killed by signal 9 from outside the grader" if self is vms[0] else None

    w = make_worker(app, replay_runner())
    w.pool.slots[0].factory = FirstKilled
    w.drain(timeout=30)
    assert job_state(app, jid) == ("done", 2)
    assert len(results_of(app, sub)) == 1
    assert w.pool.slots[0].replaced == 1 and len(vms) == 2
