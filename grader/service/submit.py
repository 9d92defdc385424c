"""Accepting a submission (web form, API, batch): check access and quota, validate, store durably,
then record it and queue its job in one transaction. The receipt exists only after all of that."""
from __future__ import annotations

import hashlib
import json

from flask import current_app

from grader.submission import Limits

from . import jobs
from .labs import lab_spec
from .models import Assignment, Membership, Submission, User, db
from .policy import check_quota, check_storage
from .store import Store
from .uploads import UploadPart, validate_upload


def limits_for(lab) -> Limits:
    cfg = current_app.config
    return Limits(file_bytes=lab.max_file_bytes, archive_bytes=int(cfg["UPLOAD_MAX_ARCHIVE_BYTES"]),
                  members=int(cfg["UPLOAD_MAX_MEMBERS"]), unpacked_bytes=int(cfg["UPLOAD_MAX_UNPACKED_BYTES"]))


def is_member(user: User, assignment: Assignment) -> bool:
    return db.session.execute(db.select(Membership).filter_by(cohort_id=assignment.cohort_id, user_id=user.id)
                              ).scalar_one_or_none() is not None


def hold_student(user_id: int) -> None:
    """Until the session's transaction ends, no other acceptance for this student gets past this
    point: parallel uploads would otherwise all pass the cooldown, quota and budget checks before any
    of them is committed. A no-op UPDATE of the student's row takes PostgreSQL's row lock or SQLite's
    write lock, in a fresh transaction (the commit before it ends the session's reads)."""
    db.session.commit()
    db.session.execute(db.update(User).where(User.id == user_id).values(active=User.active))


def accept(user: User, assignment: Assignment, parts: list[UploadPart], source: str, *,
           kind: str = "live", batch_id: int | None = None, enforce_quota: bool = True):
    """Returns (submission, job). Raises SubmissionRejected / QuotaExceeded with the student's message."""
    lab = lab_spec(assignment.lab)
    if enforce_quota:
        check_quota(assignment, user.id)   # refused before the upload is read; checked again below
    files = validate_upload(parts, lab.files, limits_for(lab), lab.optional_files)
    store = Store(current_app.config["STORE_DIR"])
    upload = next((p.data for p in parts if p.field == "archive"), None)
    key, digest, per_file = store.put_submission(files, upload)
    try:
        if enforce_quota:
            hold_student(user.id)
            check_quota(assignment, user.id)
            kept = db.session.execute(db.select(Submission.storage_key).filter_by(user_id=user.id)).scalars()
            check_storage(assignment, sum(store.kept_bytes(k) for k in kept), Store.bytes_for(files, upload))
        sub = Submission(user_id=user.id, assignment_id=assignment.id, sha256=digest,
                         upload_sha256=hashlib.sha256(upload).hexdigest() if upload is not None else None,
                         files_json=json.dumps(per_file), size=sum(len(b) for b in files.values()),
                         storage_key=key, source=source)
        db.session.add(sub)
        db.session.flush()
        cfg = current_app.config
        prio = int(cfg["PRIORITY_LIVE"] if kind == "live" else cfg["PRIORITY_REGRADE"])
        job = jobs.enqueue(sub, kind, prio, batch_id=batch_id)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        store.remove(key)
        raise
    dispatch(job)
    return sub, job


def dispatch(job) -> None:
    if current_app.extensions["copylab_dispatch"].send(job.id, job.priority):
        jobs.mark_dispatched([job.id])
