"""What a student sees: their labs, upload, their submissions with every check, the journey picture
and the trace table, their artifacts, and API tokens for `make handin`."""
from __future__ import annotations

import datetime as dt
import secrets

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from markupsafe import Markup

from grader.engine.journey import journey_from_result, render_svg
from grader.submission import SubmissionRejected

from .. import jobs
from ..gradebook import row_for
from ..headers import send_untrusted
from ..labs import lab_spec
from ..models import ApiToken, Assignment, Membership, Submission, db, utcnow
from ..policy import QuotaExceeded, effective_deadline, submit_limits
from ..store import Store
from ..submit import accept
from .common import assignment_for, form_parts, submission_for

bp = Blueprint("student", __name__)


@bp.route("/")
@login_required
def home():
    if current_user.is_instructor:
        return redirect(url_for("instructor.home"))
    assignments = db.session.execute(
        db.select(Assignment).join(Membership, Membership.cohort_id == Assignment.cohort_id)
        .where(Membership.user_id == current_user.id).order_by(Assignment.deadline)).scalars().all()
    rows = [(a, row_for(a, current_user), effective_deadline(a, current_user.id)[0]) for a in assignments]
    return render_template("student_home.html", rows=rows)


@bp.route("/assignments/<int:assignment_id>")
@login_required
def assignment(assignment_id: int):
    a = assignment_for(current_user, assignment_id)
    subs = db.session.execute(db.select(Submission).where(
        Submission.assignment_id == a.id, Submission.user_id == current_user.id)
        .order_by(Submission.id.desc())).scalars().all()
    deadline, extended = effective_deadline(a, current_user.id)
    return render_template("assignment.html", a=a, lab=lab_spec(a.lab), subs=subs, deadline=deadline,
                           extended=extended, row=row_for(a, current_user), now=utcnow(),
                           latest_result=jobs.latest_result, active_job=jobs.active_job, limits=submit_limits(a))


@bp.route("/assignments/<int:assignment_id>/submit", methods=["POST"])
@login_required
def submit(assignment_id: int):
    a = assignment_for(current_user, assignment_id)
    if current_user.is_instructor:
        abort(403)
    try:
        sub, _job = accept(current_user, a, form_parts(), "web")
    except (SubmissionRejected, QuotaExceeded) as e:
        flash(f"Not accepted: {e}", "error")
        return redirect(url_for("student.assignment", assignment_id=a.id)), 303
    flash(f"Received submission #{sub.id}; receipt sha256 {sub.receipt}. It is queued for grading.")
    return redirect(url_for("student.submission", submission_id=sub.id), 303)


@bp.route("/submissions/<int:submission_id>")
@login_required
def submission(submission_id: int):
    sub = submission_for(current_user, submission_id)
    result = jobs.latest_result(sub)
    active = jobs.active_job(sub)
    last_job = sub.jobs[-1] if sub.jobs else None
    late = None
    if sub.assignment:
        from ..policy import lateness

        late = lateness(sub.assignment, sub.user_id, sub.created_at)
    journey = None
    if result is not None:
        # the engine escapes every text of the result it draws (render_svg), so the SVG is markup
        journey = Markup(render_svg(journey_from_result(result.data)))
    return render_template("submission.html", sub=sub, result=result, data=result.data if result else None,
                           active=active, last_job=last_job, late=late, journey_svg=journey)


@bp.route("/submissions/<int:submission_id>/artifacts/<name>")
@login_required
def artifact(submission_id: int, name: str):
    sub = submission_for(current_user, submission_id)
    result = jobs.latest_result(sub)
    if result is None or not result.artifacts_key:
        abort(404)
    path = Store(current_app.config["STORE_DIR"]).artifact_path(result.artifacts_key, name)
    if path is None:
        abort(404)
    return send_untrusted(path, name)


@bp.route("/submissions/<int:submission_id>/files/<name>")
@login_required
def source(submission_id: int, name: str):
    sub = submission_for(current_user, submission_id)
    if name not in sub.files:
        abort(404)
    path = Store(current_app.config["STORE_DIR"]).submission_dir(sub.storage_key) / name
    return send_untrusted(path, name)


@bp.route("/tokens", methods=["GET", "POST"])
@login_required
def tokens():
    new_token, new_row = None, None
    lifetime = current_app.config["TOKEN_LIFETIME_DAYS"]
    if request.method == "POST":
        name = (request.form.get("name") or "handin").strip()[:100]
        new_token = "cl_" + secrets.token_urlsafe(32)
        now = utcnow()
        new_row = ApiToken(user_id=current_user.id, name=name, token_hash=ApiToken.hash(new_token),
                           prefix=new_token[:10], created_at=now, expires_at=now + dt.timedelta(days=lifetime))
        db.session.add(new_row)
        db.session.commit()
    mine = db.session.execute(db.select(ApiToken).where(ApiToken.user_id == current_user.id)
                              .order_by(ApiToken.id.desc())).scalars().all()
    return render_template("tokens.html", tokens=mine, new_token=new_token, new_row=new_row, lifetime=lifetime,
                           now=utcnow(), url=request.host_url.rstrip("/"))


@bp.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@login_required
def revoke_token(token_id: int):
    tok = db.session.get(ApiToken, token_id)
    if tok is None or tok.user_id != current_user.id:
        abort(404)
    if tok.revoked_at is None:
        tok.revoked_at, tok.revoked_reason = utcnow(), "revoked by its owner"
    db.session.commit()
    flash(f"Token {tok.prefix}... revoked.")
    return redirect(url_for("student.tokens"), 303)
