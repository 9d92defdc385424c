"""Deadlines, the late policy and the submission quota (pure functions over the models)."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from .models import Assignment, Extension, Submission, db, utcnow

DAY = 86400


@dataclass(frozen=True)
class Lateness:
    deadline: dt.datetime       # the student's effective deadline (an extension replaces the cohort's)
    extended: bool
    late_days: int              # started 24-hour periods after the deadline
    penalty_percent: float      # min(cap, late_days * per_day)

    def apply(self, score: float) -> float:
        return round(score * (1.0 - self.penalty_percent / 100.0), 2)


def effective_deadline(assignment: Assignment, user_id: int) -> tuple[dt.datetime, bool]:
    ext = db.session.execute(db.select(Extension).filter_by(assignment_id=assignment.id, user_id=user_id)
                             ).scalar_one_or_none()
    if ext is not None:
        return ext.deadline, True
    return assignment.deadline, False


def lateness(assignment: Assignment, user_id: int, submitted_at: dt.datetime) -> Lateness:
    deadline, extended = effective_deadline(assignment, user_id)
    late_s = (submitted_at - deadline).total_seconds()
    days = math.ceil(late_s / DAY) if late_s > 0 else 0
    penalty = min(float(assignment.penalty_cap), days * float(assignment.penalty_per_day))
    return Lateness(deadline, extended, days, max(0.0, penalty))


class QuotaExceeded(Exception):
    """The student may not submit now; the message says why and until when."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def check_quota(assignment: Assignment, user_id: int, now: dt.datetime | None = None) -> None:
    now = now or utcnow()
    q = db.select(Submission).filter_by(assignment_id=assignment.id, user_id=user_id)
    if assignment.max_submissions:
        count = db.session.execute(db.select(db.func.count()).select_from(q.subquery())).scalar_one()
        if count >= assignment.max_submissions:
            raise QuotaExceeded(f"you have used all {assignment.max_submissions} submissions for "
                                f"{assignment.lab}; ask your instructor if you need another")
    if assignment.cooldown_seconds:
        last = db.session.execute(q.order_by(Submission.created_at.desc()).limit(1)).scalar_one_or_none()
        if last is not None:
            wait = assignment.cooldown_seconds - (now - last.created_at).total_seconds()
            if wait > 0:
                raise QuotaExceeded(f"please wait {math.ceil(wait)} s before submitting {assignment.lab} "
                                    f"again (cooldown {assignment.cooldown_seconds} s)", math.ceil(wait))
