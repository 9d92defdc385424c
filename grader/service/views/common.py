"""Access rules shared by every blueprint, the upload form's file parts, and template filters.

A student reaches only their own submissions, results and artifacts; someone else's object answers
404 (its existence is not revealed). Instructors reach everything.
"""
from __future__ import annotations

import datetime as dt
import json
from functools import wraps

from flask import abort, current_app, request
from flask_login import current_user, login_required

from grader.submission import SubmissionRejected

from ..models import Assignment, Submission, User, db
from ..submit import is_member
from ..uploads import UploadPart


def instructor_required(fn):
    @wraps(fn)
    @login_required
    def wrapper(*a, **kw):
        if not current_user.is_instructor:
            abort(403)
        return fn(*a, **kw)
    return wrapper


def submission_for(user: User, submission_id: int) -> Submission:
    sub = db.session.get(Submission, submission_id)
    if sub is None or not (user.is_instructor or sub.user_id == user.id):
        abort(404)
    return sub


def assignment_for(user: User, assignment_id: int) -> Assignment:
    a = db.session.get(Assignment, assignment_id)
    if a is None or not (user.is_instructor or is_member(user, a)):
        abort(404)
    return a


def form_parts() -> list[UploadPart]:
    """Every part of the form that is a file; text fields named like files are refused later."""
    parts = []
    for field, storage in request.files.items(multi=True):
        if not storage or (not storage.filename and field != "archive"):
            continue  # an empty file input
        cap = int(current_app.config["MAX_CONTENT_LENGTH"]) + 1
        parts.append(UploadPart(field, storage.filename or "", storage.stream.read(cap)))
    for field in request.form:
        if field not in ("csrf_token", "cohort"):
            raise SubmissionRejected(f"field {field[:40]!r} must be a file upload, not text")
    return parts


def register_filters(app) -> None:
    @app.template_filter("utc")
    def utc(value: dt.datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""

    @app.template_filter("score")
    def score(value) -> str:
        return "" if value is None else f"{value:g}"

    @app.template_filter("pretty_json")
    def pretty_json(value) -> str:
        return json.dumps(value, indent=2)
