"""Deadlines, the late policy, the submission quota and cooldown, the storage budget."""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from flask import current_app

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


def parse_utc(text: str) -> dt.datetime:
    text = (text or "").strip().replace(" ", "T")
    if text.endswith("Z"):
        text = text[:-1]
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is not None:
        try:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
            raise ValueError(f"{text[:40]!r} is out of range") from None
    return value


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


@dataclass(frozen=True)
class SubmitLimits:
    """What a student may submit to an assignment (0: no limit)."""
    max_submissions: int        # submissions to this assignment
    cooldown_seconds: int       # between two of them
    storage_bytes: int          # bytes kept in the store for all of the student's submissions


def submit_limits(assignment: Assignment) -> SubmitLimits:
    """The assignment's own quota and cooldown where it sets them, else the service's defaults
    (SUBMIT_MAX_PER_ASSIGNMENT, SUBMIT_COOLDOWN_SECONDS, STORAGE_BUDGET_BYTES in the config)."""
    cfg = current_app.config
    return SubmitLimits(int(assignment.max_submissions or cfg["SUBMIT_MAX_PER_ASSIGNMENT"] or 0),
                        int(assignment.cooldown_seconds or cfg["SUBMIT_COOLDOWN_SECONDS"] or 0),
                        int(cfg["STORAGE_BUDGET_BYTES"] or 0))


def mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def check_quota(assignment: Assignment, user_id: int, now: dt.datetime | None = None) -> None:
    """Count quota and cooldown, before the upload is read."""
    now = now or utcnow()
    lim = submit_limits(assignment)
    q = db.select(Submission).filter_by(assignment_id=assignment.id, user_id=user_id)
    if lim.max_submissions:
        count = db.session.execute(db.select(db.func.count()).select_from(q.subquery())).scalar_one()
        if count >= lim.max_submissions:
            raise QuotaExceeded(f"you have used all {lim.max_submissions} submissions for "
                                f"{assignment.lab}; ask your instructor if you need another")
    if lim.cooldown_seconds:
        last = db.session.execute(q.order_by(Submission.created_at.desc()).limit(1)).scalar_one_or_none()
        if last is not None:
            wait = lim.cooldown_seconds - (now - last.created_at).total_seconds()
            if wait > 0:
                raise QuotaExceeded(f"please wait {math.ceil(wait)} s before submitting {assignment.lab} "
                                    f"again (cooldown {lim.cooldown_seconds} s)", math.ceil(wait))


def check_storage(assignment: Assignment, used: int, adding: int) -> None:
    """The student's storage budget: ``used`` bytes kept already, ``adding`` for this submission."""
    budget = submit_limits(assignment).storage_bytes
    if budget and used + adding > budget:
        raise QuotaExceeded(f"this submission ({adding} bytes) would exceed your storage budget of "
                            f"{budget} bytes ({mib(budget)}): your submissions keep {used} bytes "
                            f"({mib(used)}) already; ask your instructor to remove old ones or raise it")
