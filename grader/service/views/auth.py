"""Logging in and out of the web UI (session cookie; every form carries a CSRF token)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..models import User, db

bp = Blueprint("auth", __name__)


def _safe_next(target: str | None) -> str | None:
    """`target` when it is a path on this site, else None. Browsers drop tabs and newlines from a
    Location and read a backslash as a slash, so `/\\evil.example` or `/<TAB>/evil.example` would leave
    the site; a control character in a header would also fail the response."""
    if not target or len(target) > 2000 or not target.isascii() or not target.isprintable():
        return None
    if "\\" in target or not target.startswith("/") or target.startswith("//"):
        return None
    parts = urlsplit(target)
    return None if parts.scheme or parts.netloc else target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("student.home"))
    error = None
    if request.method == "POST":
        username = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
        if user is None or not user.active or not user.check_password(password):
            error = "Unknown user name or wrong password."
        else:
            login_user(user)
            return redirect(_safe_next(request.args.get("next")) or url_for("student.home"))
    return render_template("login.html", error=error), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    # A session cookie is signed, not stored: a copy taken before logging out would still be good. A new
    # session epoch ends it (and this account's other sessions, as a password change does).
    current_user.session_epoch = (current_user.session_epoch or 0) + 1
    db.session.commit()
    logout_user()
    flash("You are logged out.")
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def password():
    error = None
    if request.method == "POST":
        old, new = request.form.get("old") or "", request.form.get("new") or ""
        if not current_user.check_password(old):
            error = "The current password is wrong."
        elif len(new) < 8:
            error = "The new password must have at least 8 characters."
        else:
            current_user.set_password(new)  # also ends every other session of this account
            db.session.commit()
            login_user(current_user)
            flash("Password changed; your other sessions are logged out.")
            return redirect(url_for("student.home"))
    return render_template("password.html", error=error), (400 if error else 200)
