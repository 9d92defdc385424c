"""Batch grading and regrades (instructor-initiated, queued behind live submissions)."""
from __future__ import annotations

from pathlib import Path

from flask import current_app

from grader.submission import SubmissionRejected, read_folder

from . import jobs
from .gradebook import students
from .labs import lab_spec
from .models import Assignment, Batch, Submission, User, db
from .submit import accept, dispatch, limits_for
from .uploads import UploadPart


def regrade(assignment: Assignment, created_by: str) -> Batch:
    """A new job for every student's latest submission."""
    batch = Batch(assignment_id=assignment.id, kind="regrade", created_by=created_by)
    db.session.add(batch)
    db.session.flush()
    prio = int(current_app.config["PRIORITY_REGRADE"])
    new = []
    for user in students(assignment):
        sub = db.session.execute(db.select(Submission).where(
            Submission.assignment_id == assignment.id, Submission.user_id == user.id)
            .order_by(Submission.id.desc()).limit(1)).scalar_one_or_none()
        if sub is not None:
            new.append(jobs.enqueue(sub, "regrade", prio, batch_id=batch.id))
    db.session.commit()
    for job in new:
        dispatch(job)
    return batch


def grade_folder(assignment: Assignment, folder: Path, created_by: str) -> tuple[Batch, list[str]]:
    """Submissions collected elsewhere: FOLDER/<student_number or username>{/, .tar.gz, .tgz, .tar, .zip}.
    Returns the batch and one message per entry that was not accepted."""
    batch = Batch(assignment_id=assignment.id, kind="grade", created_by=created_by)
    db.session.add(batch)
    db.session.commit()
    problems = []
    for entry in sorted(Path(folder).iterdir()):
        key = entry.name
        for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
            if key.endswith(suffix):
                key = key[: -len(suffix)]
        user = db.session.execute(db.select(User).where(
            (User.student_number == key) | (User.username == key))).scalars().first()
        if user is None or not any(m.cohort_id == assignment.cohort_id for m in user.memberships):
            problems.append(f"{entry.name}: no student {key!r} in {assignment.cohort.name}")
            continue
        if entry.is_symlink():
            problems.append(f"{entry.name}: a symbolic link, not read")
            continue
        try:
            if entry.is_dir():   # read as the grade CLI reads a folder: the lab's file names only
                lab = lab_spec(assignment.lab)
                found = read_folder(entry, {*lab.files, *lab.optional_files}, limits_for(lab))
                parts = [UploadPart(name, name, data) for name, data in found.items()]
            else:
                parts = [UploadPart("archive", entry.name, entry.read_bytes())]
            accept(user, assignment, parts, "batch", kind="regrade", batch_id=batch.id, enforce_quota=False)
        except SubmissionRejected as e:
            problems.append(f"{entry.name}: {e}")
    return batch, problems
