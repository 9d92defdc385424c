"""What an instructor sees: cohorts and rosters, assignments with their policies, the dashboard
(grading progress, the checks that fail most, the score histogram), regrades, extensions, exports."""
from __future__ import annotations

import io

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, send_file, url_for
from flask_login import current_user

from .. import batches
from ..gradebook import (batch_progress, failing_checks, gradebook_csv, histogram, queue_counts, rows,
                         student_results)
from ..headers import download_name
from ..labs import available_labs, lab_spec, suite_problem
from ..models import Assignment, Cohort, Extension, Job, Membership, User, db
from ..plots import histogram_svg
from ..policy import parse_utc
from ..roster import RosterError, import_roster
from .common import instructor_required

bp = Blueprint("instructor", __name__, url_prefix="/instructor")


def form_number(name: str, cast, default, low, high):
    """The form field `name` as int or float (`cast`) within [low, high]; `default` when it is empty."""
    text = (request.form.get(name) or "").strip()
    if not text:
        return default
    try:
        value = cast(text)
    except ValueError:
        value = None
    if value is None or not (low <= value <= high):  # also NaN
        kind = "a whole number" if cast is int else "a number"
        raise ValueError(f"{name} must be {kind} from {low} to {high} (got {text[:40]!r})")
    return value


@bp.route("/")
@instructor_required
def home():
    cohorts = db.session.execute(db.select(Cohort).order_by(Cohort.name)).scalars().all()
    return render_template("instructor_home.html", cohorts=cohorts)


@bp.route("/cohorts", methods=["POST"])
@instructor_required
def create_cohort():
    name = (request.form.get("name") or "").strip()
    if not name or len(name) > 120 or not name.isprintable():
        flash("A cohort needs a name of 1-120 printable characters.", "error")
    elif db.session.execute(db.select(Cohort).filter_by(name=name)).scalar_one_or_none():
        flash(f"A cohort named {name} exists already.", "error")
    else:
        db.session.add(Cohort(name=name))
        db.session.commit()
        flash(f"Cohort {name} created.")
    return redirect(url_for("instructor.home"), 303)


def _cohort(cohort_id: int) -> Cohort:
    c = db.session.get(Cohort, cohort_id)
    if c is None:
        abort(404)
    return c


def _assignment(assignment_id: int) -> Assignment:
    a = db.session.get(Assignment, assignment_id)
    if a is None:
        abort(404)
    return a


@bp.route("/cohorts/<int:cohort_id>")
@instructor_required
def cohort(cohort_id: int):
    c = _cohort(cohort_id)
    members = db.session.execute(db.select(User).join(Membership, Membership.user_id == User.id)
                                 .where(Membership.cohort_id == c.id).order_by(User.student_number)
                                 ).scalars().all()
    return render_template("cohort.html", c=c, members=members, labs=available_labs(), report=None,
                           errors=None)


@bp.route("/cohorts/<int:cohort_id>/roster", methods=["POST"])
@instructor_required
def roster(cohort_id: int):
    c = _cohort(cohort_id)
    f = request.files.get("roster")
    if f is None:
        flash("Choose a CSV file to import.", "error")
        return redirect(url_for("instructor.cohort", cohort_id=c.id), 303)
    raw = f.stream.read(1024 * 1024 + 1)
    try:
        if len(raw) > 1024 * 1024:
            raise RosterError(["the file is larger than 1 MiB"])
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise RosterError(["the file is not UTF-8 text (save the CSV as UTF-8)"]) from None
        report = import_roster(c, text)
    except RosterError as e:
        members = [m.user for m in c.memberships]
        return render_template("cohort.html", c=c, members=members, labs=available_labs(), report=None,
                               errors=e.errors), 400
    members = [m.user for m in c.memberships]
    return render_template("cohort.html", c=c, members=members, labs=available_labs(), report=report,
                           errors=None)


@bp.route("/cohorts/<int:cohort_id>/assignments", methods=["POST"])
@instructor_required
def create_assignment(cohort_id: int):
    c = _cohort(cohort_id)
    f = request.form
    try:
        lab = f.get("lab") or ""
        if lab not in available_labs():
            raise ValueError(f"unknown lab {lab!r}")
        if db.session.execute(db.select(Assignment).filter_by(cohort_id=c.id, lab=lab)).scalar_one_or_none():
            raise ValueError(f"{lab} is already assigned to {c.name}")
        try:
            deadline = parse_utc(f.get("deadline"))
        except ValueError:
            raise ValueError("the deadline must look like 2026-12-01T23:59 (UTC)") from None
        suite = f.get("suite") or None
        why = suite and suite_problem(lab, suite)
        if why:
            raise ValueError(why)
        a = Assignment(cohort_id=c.id, lab=lab, title=(f.get("title") or lab_spec(lab).title)[:200],
                       deadline=deadline,
                       penalty_per_day=form_number("penalty_per_day", float, 10.0, 0, 100),
                       penalty_cap=form_number("penalty_cap", float, 50.0, 0, 100),
                       max_submissions=form_number("max_submissions", int, 0, 0, 1_000_000),
                       cooldown_seconds=form_number("cooldown_seconds", int, 0, 0, 366 * 86400), suite=suite)
    except ValueError as e:
        flash(f"Not created: {e}", "error")
        return redirect(url_for("instructor.cohort", cohort_id=c.id), 303)
    db.session.add(a)
    db.session.commit()
    flash(f"{a.lab} assigned to {c.name}, due {a.deadline:%Y-%m-%d %H:%M} UTC.")
    return redirect(url_for("instructor.dashboard", assignment_id=a.id), 303)


@bp.route("/assignments/<int:assignment_id>")
@instructor_required
def dashboard(assignment_id: int):
    a = _assignment(assignment_id)
    rs = rows(a)
    finals = [r.final_score for r in rs if r.result]
    max_score = max((r.result.max_score for r in rs if r.result), default=float(lab_spec(a.lab).max_score))
    recent = db.session.execute(db.select(Job).where(Job.assignment_id == a.id, Job.state == "failed")
                                .order_by(Job.id.desc()).limit(10)).scalars().all()
    return render_template("dashboard.html", a=a, rows=rs, failing=failing_checks(rs),
                           batches=batch_progress(a), counts=queue_counts(a), graded=len(finals),
                           mean=(sum(finals) / len(finals)) if finals else None, failed_jobs=recent,
                           max_score=max_score)


@bp.route("/assignments/<int:assignment_id>/histogram.svg")
@instructor_required
def histogram_plot(assignment_id: int):
    a = _assignment(assignment_id)
    rs = rows(a)
    max_score = max((r.result.max_score for r in rs if r.result), default=float(lab_spec(a.lab).max_score))
    counts = histogram([r.final_score for r in rs if r.result], max_score)
    svg = histogram_svg(counts, max_score, f"{a.cohort.name} {a.lab}: {sum(counts)} graded")
    return Response(svg, mimetype="image/svg+xml")


@bp.route("/assignments/<int:assignment_id>/regrade", methods=["POST"])
@instructor_required
def regrade(assignment_id: int):
    a = _assignment(assignment_id)
    batch = batches.regrade(a, created_by=current_user.username)
    flash(f"Regrade batch #{batch.id}: {len(batch.jobs)} job(s) queued behind live submissions.")
    return redirect(url_for("instructor.dashboard", assignment_id=a.id), 303)


@bp.route("/assignments/<int:assignment_id>/extensions", methods=["POST"])
@instructor_required
def extension(assignment_id: int):
    a = _assignment(assignment_id)
    username = (request.form.get("username") or "").strip()
    user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
    if user is None or not any(m.cohort_id == a.cohort_id for m in user.memberships):
        flash(f"{username!r} is not a student of {a.cohort.name}.", "error")
        return redirect(url_for("instructor.dashboard", assignment_id=a.id), 303)
    try:
        deadline = parse_utc(request.form.get("deadline"))
    except ValueError:
        flash("The new deadline must look like 2026-12-01T23:59 (UTC).", "error")
        return redirect(url_for("instructor.dashboard", assignment_id=a.id), 303)
    ext = db.session.execute(db.select(Extension).filter_by(assignment_id=a.id, user_id=user.id)
                             ).scalar_one_or_none() or Extension(assignment_id=a.id, user_id=user.id)
    ext.deadline = deadline
    ext.reason = (request.form.get("reason") or "")[:300]
    db.session.add(ext)
    db.session.commit()
    flash(f"{username} now has until {deadline:%Y-%m-%d %H:%M} UTC.")
    return redirect(url_for("instructor.dashboard", assignment_id=a.id), 303)


@bp.route("/assignments/<int:assignment_id>/gradebook.csv")
@instructor_required
def gradebook(assignment_id: int):
    a = _assignment(assignment_id)
    return send_file(io.BytesIO(gradebook_csv(a).encode()), mimetype="text/csv", as_attachment=True,
                     download_name=download_name(a.cohort.name, a.lab, "grades.csv"))


@bp.route("/assignments/<int:assignment_id>/results.json")
@instructor_required
def results_json(assignment_id: int):
    a = _assignment(assignment_id)
    from flask import jsonify

    return jsonify([student_results(a, r.user) for r in rows(a)])


@bp.route("/assignments/<int:assignment_id>/students/<int:user_id>.json")
@instructor_required
def student_json(assignment_id: int, user_id: int):
    a = _assignment(assignment_id)
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    from flask import jsonify

    return jsonify(student_results(a, user))
