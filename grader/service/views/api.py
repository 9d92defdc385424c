"""JSON API for `make handin` and scripts. Authentication: `Authorization: Bearer <token>` only
(no cookies, hence no CSRF); a token acts as its owner with the owner's access."""
from __future__ import annotations

from functools import wraps

from flask import Blueprint, abort, current_app, g, jsonify, request, url_for

from grader.submission import SubmissionRejected

from .. import jobs
from ..headers import send_untrusted
from ..models import ApiToken, Assignment, Membership, User, db, utcnow
from ..policy import QuotaExceeded
from ..store import Store
from ..submit import accept
from .common import form_parts, submission_for

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def token_required(fn):
    @wraps(fn)
    def wrapper(*a, **kw):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return jsonify(error="send an API token: Authorization: Bearer <token> "
                                 "(create one on the Tokens page)"), 401
        tok = db.session.execute(db.select(ApiToken).filter_by(token_hash=ApiToken.hash(token.strip()))
                                 ).scalar_one_or_none()
        now = utcnow()
        if tok is None:
            return jsonify(error="the API token is unknown; create one on the Tokens page"), 401
        if tok.revoked_at is not None:
            why = f" ({tok.revoked_reason})" if tok.revoked_reason else ""
            return jsonify(error=f"the API token was revoked on {tok.revoked_at:%Y-%m-%d %H:%M} UTC{why}; "
                                 "create a new one on the Tokens page"), 401
        expiry = tok.expiry(current_app.config["TOKEN_LIFETIME_DAYS"])
        if expiry <= now:
            return jsonify(error=f"the API token expired on {expiry:%Y-%m-%d %H:%M} UTC; create a new one on "
                                 "the Tokens page"), 401
        user = db.session.get(User, tok.user_id)
        if user is None or not user.active:
            return jsonify(error="the token's account is disabled"), 401
        tok.last_used_at = now
        db.session.commit()
        g.api_user = user
        return fn(*a, **kw)
    return wrapper


def submission_json(sub) -> dict:
    result = jobs.latest_result(sub)
    active = jobs.active_job(sub)
    last = sub.jobs[-1] if sub.jobs else None
    status = "graded" if result else (active.state if active else (last.state if last else "stored"))
    out = {"id": sub.id, "lab": sub.assignment.lab, "sha256": sub.receipt, "content_sha256": sub.sha256,
           "files": sub.files,
           "submitted_at_utc": sub.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "status": status,
           "url": url_for("student.submission", submission_id=sub.id, _external=True)}
    if result:
        out.update(score=result.score, max_score=result.max_score, verdict=result.verdict, result=result.data)
    elif last is not None and last.state == "failed":
        out["error"] = "grading failed for reasons outside your code; your instructor can see why"
    return out


@bp.route("/me")
@token_required
def me():
    u = g.api_user
    return jsonify(username=u.username, name=u.name, role=u.role, student_number=u.student_number)


@bp.route("/labs/<lab>/submissions", methods=["POST"])
@token_required
def submit(lab: str):
    user = g.api_user
    q = db.select(Assignment).join(Membership, Membership.cohort_id == Assignment.cohort_id).where(
        Membership.user_id == user.id, Assignment.lab == lab)
    cohort = request.form.get("cohort")
    candidates = db.session.execute(q).scalars().all()
    if cohort:
        candidates = [a for a in candidates if a.cohort.name == cohort]
    if not candidates:
        return jsonify(error=f"you are not enrolled in a cohort that has {lab}"), 404
    if len(candidates) > 1:
        return jsonify(error=f"{lab} is in several of your cohorts; send the form field cohort "
                             f"({', '.join(a.cohort.name for a in candidates)})"), 400
    try:
        sub, job = accept(user, candidates[0], form_parts(), "api")
    except SubmissionRejected as e:
        return jsonify(error=str(e)), 422
    except QuotaExceeded as e:
        resp = jsonify(error=str(e))
        if e.retry_after:
            resp.headers["Retry-After"] = str(e.retry_after)
        return resp, 429
    body = submission_json(sub)
    body["receipt"] = f"submission {sub.id} stored; sha256 {sub.receipt}"
    return jsonify(body), 201


@bp.route("/submissions/<int:submission_id>")
@token_required
def submission(submission_id: int):
    return jsonify(submission_json(submission_for(g.api_user, submission_id)))


@bp.route("/submissions/<int:submission_id>/artifacts/<name>")
@token_required
def artifact(submission_id: int, name: str):
    sub = submission_for(g.api_user, submission_id)
    result = jobs.latest_result(sub)
    path = Store(current_app.config["STORE_DIR"]).artifact_path(result.artifacts_key, name) \
        if result and result.artifacts_key else None
    if path is None:
        abort(404)
    return send_untrusted(path, name)
