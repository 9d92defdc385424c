"""Login throttling and the bound on password hashes computed at once.

Failed logins are counted in the database (table ``login_throttle``): it is the one store every web
process and host of a service shares, whatever the queue is (Redis is optional), and one conditional
UPDATE per key keeps the counts exact under concurrent guesses. Three keys count each failure:

- ``pair``: this account name from this client. The client is the browser's device cookie when it
  holds one for this account name (set by a successful login), else its network address
  (``request.remote_addr``; behind the documented proxy, ProxyFix makes it the real client's).
- ``account``: this account name from every client without that account's device cookie.
- ``client``: this network address, over every account name (password spraying).

A key that reaches its limit is locked for LOGIN_LOCKOUT_SECONDS; each further failure doubles the
lock up to LOGIN_LOCKOUT_MAX_SECONDS. A browser holding the account's device cookie is counted only
by its own ``pair`` key, so an attacker who locks an account from elsewhere does not lock out its
owner: the owner logs in from a browser they logged in with before (a new browser waits for the
lock, at most LOGIN_LOCKOUT_MAX_SECONDS). Account names are hashed into the keys exactly as typed, so
an unknown name is counted, locked and timed like a real one.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import random
import secrets
import threading
from dataclasses import dataclass

from flask import Flask, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from .models import LoginThrottle, db, utcnow

DEVICE_COOKIE = "copylab_device"
# one failed login in this many also deletes the keys forgotten since (the table stays small)
SWEEP_ONE_IN = 50


class HashSlotsBusy(Exception):
    """Every password-hash slot of this process is taken and the wait was too long."""


class HashSlots:
    """At most `concurrency` password hashes at once in this process, and at most `waiting` requests
    waiting for one: guessers cannot hold every worker thread of the web server."""

    def __init__(self, concurrency: int, waiting: int, wait_seconds: float):
        self._slots = threading.BoundedSemaphore(concurrency)
        self._entries = threading.BoundedSemaphore(concurrency + waiting)
        self._wait = wait_seconds

    @contextlib.contextmanager
    def slot(self):
        if not self._entries.acquire(blocking=False):
            raise HashSlotsBusy()
        try:
            if not self._slots.acquire(timeout=self._wait):
                raise HashSlotsBusy()
            try:
                yield
            finally:
                self._slots.release()
        finally:
            self._entries.release()


def init_app(app: Flask) -> None:
    cfg = app.config
    waiting, wait = int(cfg["LOGIN_HASH_WAITING"]), float(cfg["LOGIN_HASH_WAIT_SECONDS"])
    app.extensions["copylab_hash_slots"] = {
        "clean": HashSlots(int(cfg["LOGIN_HASH_CONCURRENCY"]), waiting, wait),
        "suspect": HashSlots(int(cfg["LOGIN_HASH_SUSPECT_CONCURRENCY"]), waiting, wait)}


def hash_slot(suspect: bool = False):
    """`with hash_slot(): ...` around a password hash, from the suspect pool for attempts with recent
    failures; raises HashSlotsBusy."""
    return current_app.extensions["copylab_hash_slots"]["suspect" if suspect else "clean"].slot()


# ------------------------------------------------------------------------------ device cookie
def _device_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="copylab-login-device")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def device_for(username: str) -> str | None:
    """The device id of this browser's cookie when it was set by a login to ``username``."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return None
    try:
        data = _device_serializer().loads(raw, max_age=int(current_app.config["LOGIN_DEVICE_COOKIE_DAYS"]) * 86400)
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("u") != _digest(username) or not isinstance(data.get("d"), str):
        return None
    return data["d"]


def remember_device(response, username: str) -> None:
    """Mark this browser as one that logged in to ``username`` (the cookie holds a digest of the name)."""
    value = _device_serializer().dumps({"u": _digest(username), "d": secrets.token_urlsafe(12)})
    response.set_cookie(DEVICE_COOKIE, value, max_age=int(current_app.config["LOGIN_DEVICE_COOKIE_DAYS"]) * 86400,
                        httponly=True, samesite="Lax", secure=request.is_secure)


# ------------------------------------------------------------------------------ the counters
@dataclass
class Refusal:
    retry_after: int     # seconds
    message: str


@dataclass
class Key:
    key: str
    limit: int
    refusal: str         # the message when this key is locked ({s}: seconds)


class LoginGate:
    """The throttle keys of one login attempt: `refusal()` first (a read), `admit()` just before the hash
    (counts the attempt as a failure), `succeeded()` when the password was right."""

    def __init__(self, username: str):
        cfg = current_app.config
        self.suspect = False
        name = _digest(username)
        client = request.remote_addr or "unknown"
        device = device_for(username)
        pair = ("device:" + device) if device else _digest(client)
        self.keys = [Key(f"pair:{_digest(name + '|' + pair)}", int(cfg["LOGIN_PAIR_FAILURES"]),
                         "Too many failed logins to this account from here; try again in {s} seconds.")]
        if device is None:
            self.keys += [
                Key(f"account:{name}", int(cfg["LOGIN_ACCOUNT_FAILURES"]),
                    "Too many failed logins to this account; try again in {s} seconds, or from a browser "
                    "you have logged in to it with before."),
                Key(f"client:{_digest(client)}", int(cfg["LOGIN_CLIENT_FAILURES"]),
                    "Too many failed logins from your network address; try again in {s} seconds."),
            ]

    def refusal(self) -> Refusal | None:
        """Why this attempt may not be tried now (the longest lock of its keys), or None. Only reads:
        a locked-out guess costs one SELECT. Also sets `suspect`: a key has failures in the window."""
        now = utcnow()
        forget = now - dt.timedelta(seconds=int(current_app.config["LOGIN_FAILURE_WINDOW_SECONDS"]))
        found = db.session.execute(db.select(LoginThrottle).where(
            LoginThrottle.key.in_([k.key for k in self.keys]))).scalars().all()
        rows = {r.key: r.locked_until for r in found}
        self.suspect = any(r.failures > 0 and r.last_failure_at >= forget for r in found)
        worst = None
        for k in self.keys:
            until = rows.get(k.key)
            if until is not None and until > now and (worst is None or until > worst[0]):
                worst = (until, k)
        if worst is None:
            return None
        seconds = max(1, math.ceil((worst[0] - now).total_seconds()))
        return Refusal(seconds, worst[1].refusal.format(s=seconds))

    def admit(self) -> Refusal | None:
        """Count this attempt on every key before its password is hashed, and lock the keys it brings to
        their limit: parallel guesses (in any process) cannot pass a limit while hashes are computed.
        Returns the refusal when another request locked a key first."""
        cfg = current_app.config
        now = utcnow()
        forget = now - dt.timedelta(seconds=int(cfg["LOGIN_FAILURE_WINDOW_SECONDS"]))
        base, longest = float(cfg["LOGIN_LOCKOUT_SECONDS"]), float(cfg["LOGIN_LOCKOUT_MAX_SECONDS"])
        table = LoginThrottle.__table__
        open_ = db.or_(table.c.locked_until.is_(None), table.c.locked_until <= now)
        for k in self.keys:
            db.session.execute(_insert_missing(table, {"key": k.key, "failures": 0, "last_failure_at": now}))
            failures = db.session.execute(
                db.update(table).where(table.c.key == k.key, open_)
                .values(failures=db.case((table.c.last_failure_at < forget, 1), else_=table.c.failures + 1),
                        last_failure_at=now)
                .returning(table.c.failures)).scalar_one_or_none()
            if failures is None:   # locked meanwhile by another request
                db.session.commit()
                return self.refusal()
            if failures >= k.limit:
                seconds = min(longest, base * 2 ** min(failures - k.limit, 30))
                db.session.execute(db.update(table).where(table.c.key == k.key)
                                   .values(locked_until=now + dt.timedelta(seconds=seconds)))
        if random.randrange(SWEEP_ONE_IN) == 0:
            db.session.execute(db.delete(table).where(table.c.last_failure_at < forget))
        db.session.commit()
        return None

    def succeeded(self) -> None:
        """The right password: this client's own key starts afresh; on the account and address keys the
        attempt is taken back (they keep counting what others tried), and a lock it set is lifted."""
        table = LoginThrottle.__table__
        db.session.execute(db.delete(table).where(table.c.key == self.keys[0].key))
        for k in self.keys[1:]:
            db.session.execute(db.update(table).where(table.c.key == k.key, table.c.failures > 0)
                               .values(failures=table.c.failures - 1,
                                       locked_until=db.case((table.c.failures - 1 < k.limit, None),
                                                            else_=table.c.locked_until)))
        db.session.commit()


def _insert_missing(table, row: dict):
    """INSERT ... ON CONFLICT DO NOTHING in the database's own dialect (PostgreSQL or SQLite)."""
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).values(**row).on_conflict_do_nothing(index_elements=["key"])
