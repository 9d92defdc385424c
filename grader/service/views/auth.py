"""Logging in and out of the web UI (session cookie; every form carries a CSRF token)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ..models import User, db
from ..passwords import user_password_problem, verify
from ..throttle import HashSlotsBusy, LoginGate, hash_slot, remember_device

bp = Blueprint("auth", __name__)

BUSY = "The service is checking too many passwords at once; try again in a few seconds."
BUSY_RETRY_SECONDS = 2


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


def _try_password(gate: LoginGate, user, password: str) -> tuple[bool, str | None, int, dict]:
    """One throttled password attempt: (right, error, status, headers). The throttle is read first,
    the attempt counted just before its hash, inside a hash slot; error None with 401: wrong password."""
    refusal = gate.refusal()
    if refusal is None:
        try:
            with hash_slot(suspect=gate.suspect):
                refusal = gate.admit()   # counted as a failure until the hash says otherwise
                if refusal is None and verify(user, password):
                    gate.succeeded()
                    return True, None, 200, {}
        except HashSlotsBusy:
            return False, BUSY, 503, {"Retry-After": str(BUSY_RETRY_SECONDS)}
    if refusal is not None:
        return False, refusal.message, 429, {"Retry-After": str(refusal.retry_after)}
    return False, None, 401, {}


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("student.home"))
    error, status, headers = None, 200, {}
    if request.method == "POST":
        username = (request.form.get("username") or "").strip()
        password = request.form.get("password") or ""
        user = db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none()
        ok, error, status, headers = _try_password(LoginGate(username), user, password)
        if ok:
            login_user(user)
            response = redirect(_safe_next(request.args.get("next")) or url_for("student.home"))
            remember_device(response, username)
            return response
        error = error or "Unknown user name or wrong password."
    return render_template("login.html", error=error), status, headers


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
    error, status, headers = None, 200, {}
    if request.method == "POST":
        old, new = request.form.get("old") or "", request.form.get("new") or ""
        # the current password is guessed like a login (a stolen session must not try it at will)
        ok, error, status, headers = _try_password(LoginGate(current_user.username), current_user, old)
        if ok:
            error = user_password_problem(new, current_user)
            status = 400
            if error is None:
                current_user.set_password(new)  # also ends the other sessions and revokes the API tokens
                db.session.commit()
                login_user(current_user)
                flash("Password changed; your other sessions are logged out and your API tokens revoked.")
                return redirect(url_for("student.home"))
        elif error is None:
            error, status = "The current password is wrong.", 400
    return render_template("password.html", error=error, min_length=current_app.config["PASSWORD_MIN_LENGTH"]), \
        status, headers
