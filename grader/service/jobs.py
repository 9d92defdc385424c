r"""The job state machine, kept in the database so that it survives any process.

    queued --claim--> running --complete--> done
       ^                 |  \--fail(retry)--> queued (attempts < MAX_ATTEMPTS) / failed
       |                 +-- lease expired (worker gone) --> queued
       +-- a newer live submission of the same student and lab --> superseded (queued jobs only)

Every transition is one conditional UPDATE, so two workers (or a worker and the reconciler) can never
both win: a job is claimed by one lease token, and only that token can complete it. A result is
written in the same transaction as the transition to done: a job completes at most once.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets

from sqlalchemy import and_, exists, or_, update
from sqlalchemy.orm import aliased

from .models import Job, Result, Submission, db, utcnow


def enqueue(submission: Submission, kind: str, priority: int, batch_id: int | None = None) -> Job:
    """Add a job for the submission (the caller commits). A live job supersedes the student's queued
    live jobs for the same assignment."""
    if kind == "live":
        db.session.execute(
            update(Job).where(Job.user_id == submission.user_id, Job.assignment_id == submission.assignment_id,
                              Job.kind == "live", Job.state == "queued")
            .values(state="superseded", finished_at=utcnow(),
                    error=f"superseded by a newer submission (#{submission.id})")
            .execution_options(synchronize_session=False))
    job = Job(submission_id=submission.id, user_id=submission.user_id,
              assignment_id=submission.assignment_id, kind=kind, priority=priority, batch_id=batch_id,
              state="queued")
    db.session.add(job)
    return job


class ClaimRefused(Exception):
    """Why a job was not claimed: 'gone' (done, failed, superseded or running elsewhere) or 'busy'
    (the same student's job for the same lab is running)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def claim(job_id: int, worker: str, lease_seconds: int) -> tuple[Job, str]:
    """Take the job for this worker. Returns (job, lease token) or raises ClaimRefused."""
    now = utcnow()
    token = secrets.token_hex(16)
    other = aliased(Job)
    busy = exists().where(other.user_id == Job.user_id, other.assignment_id == Job.assignment_id,
                          other.id != Job.id, other.state == "running", other.lease_expires > now)
    claimable = or_(Job.state == "queued", and_(Job.state == "running", Job.lease_expires < now))
    res = db.session.execute(
        update(Job).where(Job.id == job_id, claimable, ~busy)
        .values(state="running", lease_owner=worker, lease_token=token,
                lease_expires=now + dt.timedelta(seconds=lease_seconds), started_at=now,
                attempts=Job.attempts + 1, phase="claimed", error=None)
        .execution_options(synchronize_session=False))
    db.session.commit()
    if res.rowcount != 1:
        job = db.session.get(Job, job_id)
        db.session.refresh(job) if job is not None else None
        if job is not None and job.state == "queued":
            raise ClaimRefused("busy")
        raise ClaimRefused("gone")
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    return job, token


def heartbeat(job_id: int, token: str, lease_seconds: int, phase: str | None = None) -> bool:
    """Extend the lease; False when the lease was lost (the job must not be completed)."""
    values = {"lease_expires": utcnow() + dt.timedelta(seconds=lease_seconds)}
    if phase:
        values["phase"] = phase[:40]
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.lease_token == token,
                                               Job.state == "running").values(**values)
                             .execution_options(synchronize_session=False))
    db.session.commit()
    return res.rowcount == 1


def complete(job_id: int, token: str, result: dict, artifacts_key: str | None) -> bool:
    """Record the result and mark the job done, atomically. False (nothing written) when this worker
    no longer holds the job."""
    now = utcnow()
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.lease_token == token,
                                               Job.state == "running")
                             .values(state="done", finished_at=now, phase=None, lease_expires=None)
                             .execution_options(synchronize_session=False))
    if res.rowcount != 1:
        db.session.rollback()
        return False
    job = db.session.get(Job, job_id)
    db.session.add(Result(job_id=job_id, submission_id=job.submission_id, score=float(result["score"]),
                          max_score=float(result["max_score"]), verdict=result.get("verdict"),
                          result_json=json.dumps(result), artifacts_key=artifacts_key, created_at=now))
    db.session.commit()
    return True


def fail(job_id: int, token: str, error: str, retry: bool, max_attempts: int) -> str | None:
    """An infrastructure failure (not the student's fault). Requeue while attempts remain. Returns the
    new state, or None when this worker no longer holds the job."""
    job = db.session.get(Job, job_id)
    db.session.refresh(job)
    state = "queued" if retry and job.attempts < max_attempts else "failed"
    res = db.session.execute(update(Job).where(Job.id == job_id, Job.lease_token == token,
                                               Job.state == "running")
                             .values(state=state, error=error[:4000], lease_owner=None, lease_token=None,
                                     lease_expires=None, phase=None,
                                     finished_at=utcnow() if state == "failed" else None)
                             .execution_options(synchronize_session=False))
    db.session.commit()
    return state if res.rowcount == 1 else None


def release_orphans(worker: str) -> int:
    """At worker start: jobs this worker name held when it last stopped are requeued."""
    res = db.session.execute(update(Job).where(Job.state == "running", Job.lease_owner == worker)
                             .values(state="queued", lease_owner=None, lease_token=None, lease_expires=None,
                                     phase=None, error="requeued: the worker restarted during grading")
                             .execution_options(synchronize_session=False))
    db.session.commit()
    return res.rowcount


def requeue_expired() -> int:
    """Jobs whose worker stopped heartbeating (killed, host down) go back to the queue."""
    res = db.session.execute(update(Job).where(Job.state == "running", Job.lease_expires < utcnow())
                             .values(state="queued", lease_owner=None, lease_token=None, lease_expires=None,
                                     phase=None, error="requeued: the worker's lease expired")
                             .execution_options(synchronize_session=False))
    db.session.commit()
    return res.rowcount


def queued_jobs() -> list[tuple[int, int]]:
    """(job id, priority) of every queued job, highest priority first, oldest first."""
    rows = db.session.execute(db.select(Job.id, Job.priority).where(Job.state == "queued")
                              .order_by(Job.priority.desc(), Job.id)).all()
    return [(r[0], r[1]) for r in rows]


def mark_dispatched(job_ids: list[int]) -> None:
    if job_ids:
        db.session.execute(update(Job).where(Job.id.in_(job_ids)).values(dispatched_at=utcnow())
                           .execution_options(synchronize_session=False))
        db.session.commit()


def latest_result(submission: Submission) -> Result | None:
    return db.session.execute(db.select(Result).where(Result.submission_id == submission.id)
                              .order_by(Result.id.desc()).limit(1)).scalar_one_or_none()


def active_job(submission: Submission) -> Job | None:
    return db.session.execute(db.select(Job).where(Job.submission_id == submission.id,
                                                   Job.state.in_(("queued", "running")))
                              .order_by(Job.id.desc()).limit(1)).scalar_one_or_none()
