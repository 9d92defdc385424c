"""Database models. Times are naive UTC. The job row is the truth about grading; queue messages
(grader/service/dispatch.py) only wake workers up."""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from werkzeug.security import generate_password_hash


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


ROLES = ("instructor", "student")


class User(UserMixin, db.Model):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(120), unique=True)   # the login name
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(200), nullable=True)
    student_number: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # bumped when the password changes or sessions are revoked: older session cookies stop working
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    memberships = relationship("Membership", back_populates="user", cascade="all, delete-orphan")

    @property
    def is_instructor(self) -> bool:
        return self.role == "instructor"

    @property
    def is_active(self) -> bool:  # flask-login
        return bool(self.active)

    def get_id(self) -> str:  # flask-login: the cookie names the user and the session epoch
        return f"{self.id}:{self.session_epoch}"

    def set_password(self, password: str) -> None:
        """Also ends the account's sessions and revokes its API tokens (whoever knew the old password
        may have made them)."""
        self.password_hash = generate_password_hash(password)
        self.session_epoch = (self.session_epoch or 0) + 1
        if self.id is not None:
            db.session.execute(db.update(ApiToken).where(ApiToken.user_id == self.id, ApiToken.revoked_at.is_(None))
                               .values(revoked_at=utcnow(), revoked_reason="the password was changed"))


class Cohort(db.Model):
    __tablename__ = "cohorts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    memberships = relationship("Membership", back_populates="cohort", cascade="all, delete-orphan")
    assignments = relationship("Assignment", back_populates="cohort", cascade="all, delete-orphan")


class Membership(db.Model):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("cohort_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    cohort = relationship("Cohort", back_populates="memberships")
    user = relationship("User", back_populates="memberships")


class Assignment(db.Model):
    """A lab (labs/<lab>) given to a cohort, with its deadline and policies."""
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("cohort_id", "lab"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id"))
    lab: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    deadline: Mapped[dt.datetime] = mapped_column(DateTime)
    penalty_per_day: Mapped[float] = mapped_column(Float, default=10.0)   # percent of the score per late day
    penalty_cap: Mapped[float] = mapped_column(Float, default=50.0)       # percent, at most
    # 0: the service's SUBMIT_MAX_PER_ASSIGNMENT / SUBMIT_COOLDOWN_SECONDS (grader/service/policy.py)
    max_submissions: Mapped[int] = mapped_column(Integer, default=0)
    cooldown_seconds: Mapped[int] = mapped_column(Integer, default=0)     # between two submissions
    # the Debian release (so the kernel) its jobs are graded on: bookworm (6.1), trixie (6.12);
    # None: the service's POOL_SUITE
    suite: Mapped[str | None] = mapped_column(String(20), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    cohort = relationship("Cohort", back_populates="assignments")
    extensions = relationship("Extension", back_populates="assignment", cascade="all, delete-orphan")


class Extension(db.Model):
    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("assignment_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    deadline: Mapped[dt.datetime] = mapped_column(DateTime)
    reason: Mapped[str] = mapped_column(String(300), default="")
    assignment = relationship("Assignment", back_populates="extensions")
    user = relationship("User")


class Submission(db.Model):
    """Write-once: the files live in the store under ``storage_key``; ``sha256`` is the receipt."""
    __tablename__ = "submissions"
    __table_args__ = (Index("ix_submissions_user_assignment", "user_id", "assignment_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sha256: Mapped[str] = mapped_column(String(64))          # content digest of the lab's files
    # sha256 of the archive exactly as uploaded (kept next to the files), None for separate files
    upload_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    files_json: Mapped[str] = mapped_column(Text)            # {name: sha256}
    size: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(20))          # web, api, batch
    user = relationship("User")
    assignment = relationship("Assignment")
    jobs = relationship("Job", back_populates="submission", order_by="Job.id")

    @property
    def files(self) -> dict[str, str]:
        return json.loads(self.files_json)

    @property
    def receipt(self) -> str:
        """What the submitter can check against what they sent: the archive's sha256 when they sent
        an archive, else the content digest of the files."""
        return self.upload_sha256 or self.sha256


class Batch(db.Model):
    """A batch grading or regrade of an assignment, for progress on the dashboard and the CLI."""
    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    kind: Mapped[str] = mapped_column(String(20))            # grade, regrade
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(120), default="")
    jobs = relationship("Job", back_populates="batch")


class Job(db.Model):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_priority", "state", "priority"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"))
    # denormalised from the submission: "one active job per student per lab" is checked on these
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(20))            # live, regrade
    priority: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="queued")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    phase: Mapped[str | None] = mapped_column(String(40), nullable=True)   # progress while running
    error: Mapped[str | None] = mapped_column(Text, nullable=True)         # why it failed (infrastructure)
    submission = relationship("Submission", back_populates="jobs")
    batch = relationship("Batch", back_populates="jobs")
    result = relationship("Result", back_populates="job", uselist=False)


class Result(db.Model):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)  # one result per job, ever
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id"))
    score: Mapped[float] = mapped_column(Float)
    max_score: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_json: Mapped[str] = mapped_column(Text)
    artifacts_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    job = relationship("Job", back_populates="result")

    @property
    def data(self) -> dict:
        return json.loads(self.result_json)


class ApiToken(db.Model):
    """Bearer tokens for `make handin`. Only a hash is stored; the token is shown once."""
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)
    user = relationship("User")

    @staticmethod
    def hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def expiry(self, lifetime_days: float) -> dt.datetime:
        """When the token stops working: its own expiry, or its age reaching the configured lifetime
        (whichever comes first, so a shorter lifetime applies to tokens made before it)."""
        by_age = self.created_at + dt.timedelta(days=lifetime_days)
        return min(self.expires_at, by_age) if self.expires_at else by_age


class LoginThrottle(db.Model):
    """Failed logins of one throttle key (grader/service/throttle.py): "pair:", "account:" or "client:"
    and a digest of the account name as typed and/or the client, so that unknown names are counted
    exactly like real ones and nothing typed into the form is stored."""
    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)       # within the window
    last_failure_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
