"""Scores per student (the latest graded submission counts, late penalty applied), dashboard
statistics, and the exports (gradebook CSV for an LMS, per-student JSON)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .csvcells import csv_text
from .models import Assignment, Batch, Extension, Job, Membership, Result, Submission, User, db
from .policy import Lateness, lateness


@dataclass
class Row:
    user: User
    submissions: int
    graded: Submission | None
    result: Result | None
    late: Lateness | None
    pending: int             # queued or running jobs
    failed_job: Job | None   # the newest job that failed for infrastructure reasons, if no result since
    extension: Extension | None

    @property
    def raw_score(self) -> float | None:
        return self.result.score if self.result else None

    @property
    def final_score(self) -> float | None:
        return self.late.apply(self.result.score) if self.result and self.late else None

    @property
    def questions(self) -> dict | None:
        """The answers file's score, apart from the lab's (None: not graded, or no questions)."""
        return self.result.data.get("questions") if self.result else None

    @property
    def status(self) -> str:
        if self.result:
            return "graded" + (" (newer pending)" if self.pending else "")
        if self.pending:
            return "pending"
        if self.failed_job:
            return "grading failed"
        return "no submission" if not self.submissions else "not graded"


def students(assignment: Assignment) -> list[User]:
    return list(db.session.execute(
        db.select(User).join(Membership, Membership.user_id == User.id)
        .where(Membership.cohort_id == assignment.cohort_id, User.role == "student")
        .order_by(User.student_number, User.username)).scalars())


def latest_graded(assignment: Assignment, user_id: int) -> tuple[Submission | None, Result | None]:
    row = db.session.execute(
        db.select(Submission, Result).join(Result, Result.submission_id == Submission.id)
        .where(Submission.assignment_id == assignment.id, Submission.user_id == user_id)
        .order_by(Submission.created_at.desc(), Submission.id.desc(), Result.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else (None, None)


def row_for(assignment: Assignment, user: User) -> Row:
    n = db.session.execute(db.select(db.func.count(Submission.id)).where(
        Submission.assignment_id == assignment.id, Submission.user_id == user.id)).scalar_one()
    sub, res = latest_graded(assignment, user.id)
    pending = db.session.execute(db.select(db.func.count(Job.id)).where(
        Job.assignment_id == assignment.id, Job.user_id == user.id,
        Job.state.in_(("queued", "running")))).scalar_one()
    failed = db.session.execute(db.select(Job).where(
        Job.assignment_id == assignment.id, Job.user_id == user.id, Job.state == "failed")
        .order_by(Job.id.desc()).limit(1)).scalar_one_or_none()
    ext = db.session.execute(db.select(Extension).filter_by(assignment_id=assignment.id, user_id=user.id)
                             ).scalar_one_or_none()
    late = lateness(assignment, user.id, sub.created_at) if sub else None
    return Row(user, n, sub, res, late, pending, failed, ext)


def rows(assignment: Assignment) -> list[Row]:
    return [row_for(assignment, u) for u in students(assignment)]


CSV_FIELDS = ["student_number", "username", "name", "email", "submissions", "graded_submission",
              "submitted_at_utc", "deadline_utc", "extension", "late_days", "penalty_percent",
              "raw_score", "max_score", "final_score", "status", "questions_score", "questions_max_score"]


def gradebook_csv(assignment: Assignment) -> str:
    """The gradebook for an LMS: scores and counts as numbers, student-controlled text neutralised."""
    return csv_text(CSV_FIELDS, ({
        "student_number": r.user.student_number, "username": r.user.username,
        "name": r.user.name, "email": r.user.email, "submissions": r.submissions,
        "graded_submission": r.graded.id if r.graded else None,
        "submitted_at_utc": r.graded.created_at.strftime("%Y-%m-%dT%H:%M:%SZ") if r.graded else None,
        "deadline_utc": (r.late.deadline if r.late else (r.extension.deadline if r.extension
                         else assignment.deadline)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "extension": "yes" if r.extension else "no",
        "late_days": r.late.late_days if r.late else None,
        "penalty_percent": float(r.late.penalty_percent) if r.late else None,
        "raw_score": float(r.raw_score) if r.result else None,
        "max_score": float(r.result.max_score) if r.result else None,
        "final_score": float(r.final_score) if r.result else 0,
        "status": r.status,
        # no late penalty: the questions are optional and scored apart from the lab
        "questions_score": float(r.questions["score"]) if r.questions else None,
        "questions_max_score": float(r.questions["max_score"]) if r.questions else None,
    } for r in rows(assignment)))


def student_results(assignment: Assignment, user: User) -> dict:
    """Everything about one student's work on one assignment, as JSON."""
    r = row_for(assignment, user)
    subs = db.session.execute(db.select(Submission).where(
        Submission.assignment_id == assignment.id, Submission.user_id == user.id)
        .order_by(Submission.id)).scalars()
    history = []
    for s in subs:
        results = [res for j in s.jobs if (res := j.result) is not None]
        history.append({"submission": s.id, "submitted_at_utc": s.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "sha256": s.receipt, "content_sha256": s.sha256, "files": s.files, "source": s.source,
                        "jobs": [{"id": j.id, "kind": j.kind, "state": j.state, "attempts": j.attempts,
                                  "error": j.error} for j in s.jobs],
                        "results": [res.data for res in results]})
    return {"student_number": user.student_number, "username": user.username, "name": user.name,
            "lab": assignment.lab, "cohort": assignment.cohort.name,
            "deadline_utc": (r.late.deadline if r.late else assignment.deadline).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "graded_submission": r.graded.id if r.graded else None,
            "raw_score": r.raw_score, "late_days": r.late.late_days if r.late else None,
            "penalty_percent": r.late.penalty_percent if r.late else None,
            "final_score": r.final_score, "status": r.status, "questions": r.questions, "history": history}


def failing_checks(rows_: list[Row]) -> list[tuple[str, str, int]]:
    """(check name, title, how many students' counted result fail it), most failed first. Checks that
    did not run because a dependency failed are not counted: the dependency is."""
    c: Counter = Counter()
    titles = {}
    for r in rows_:
        if not r.result:
            continue
        for ch in r.result.data.get("checks", []):
            titles[ch["name"]] = ch.get("title") or ch["name"]
            if not ch["passed"] and not ch.get("skipped_because"):
                c[ch["name"]] += 1
    return [(name, titles[name], n) for name, n in c.most_common()]


def histogram(scores: list[float], max_score: float = 100.0, bins: int = 10) -> list[int]:
    counts = [0] * bins
    for s in scores:
        i = min(bins - 1, int(bins * max(0.0, s) / max_score)) if max_score else 0
        counts[i] += 1
    return counts


def batch_progress(assignment: Assignment) -> list[dict]:
    out = []
    for b in db.session.execute(db.select(Batch).where(Batch.assignment_id == assignment.id)
                                .order_by(Batch.id.desc()).limit(5)).scalars():
        states = Counter(j.state for j in b.jobs)
        total = sum(states.values())
        finished = states["done"] + states["failed"] + states["superseded"]
        out.append({"id": b.id, "kind": b.kind, "created_at": b.created_at, "total": total,
                    "finished": finished, "states": dict(states), "by": b.created_by})
    return out


def queue_counts(assignment: Assignment) -> dict:
    rows_ = db.session.execute(db.select(Job.state, db.func.count(Job.id)).where(
        Job.assignment_id == assignment.id).group_by(Job.state)).all()
    return {s: n for s, n in rows_}
