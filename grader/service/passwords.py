"""Choosing and checking passwords.

`password_problem` is the policy, applied wherever a person chooses a password (the password form,
`create-instructor`, a roster's password column): a minimum length, nothing derived from the account's
user name, student number, name or e-mail address, and a zxcvbn guessability score (zxcvbn knows the
common-password lists, keyboard walks, dates and l33t spellings of dictionary words).

`verify` checks a password against an account, or against a dummy hash of the same parameters when
there is no such account, so that an unknown user name costs as much as a known one.
"""
from __future__ import annotations

import re
import threading

from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash
from zxcvbn import zxcvbn

# zxcvbn's time grows with the length it analyses; past this many characters a password is long
# enough that its first part decides the score
ZXCVBN_MAX_CHARS = 100
# pieces of user data shorter than this are too common to refuse (initials, "s1")
MIN_PERSONAL_PIECE = 3

_dummy_lock = threading.Lock()
_dummy: dict[str, str] = {}


def personal_pieces(username: str | None, name: str | None, email: str | None,
                    student_number: str | None) -> list[str]:
    """The lower-cased words of the user's own data that a password must not contain (of an e-mail
    address only the part before the @: the domain is everyone's)."""
    values = [username, name, student_number, (email or "").split("@", 1)[0]]
    pieces = set()
    for v in filter(None, values):
        v = v.lower()
        pieces.add(v)
        pieces.update(re.split(r"[\W_]+", v))
    return sorted(p for p in pieces if len(p) >= MIN_PERSONAL_PIECE)


def password_problem(password: str, *, username: str | None = None, name: str | None = None,
                     email: str | None = None, student_number: str | None = None) -> str | None:
    """None when ``password`` may be used by this person; else why not, as a sentence."""
    cfg = current_app.config
    minimum = int(cfg["PASSWORD_MIN_LENGTH"])
    if len(password) < minimum:
        return f"The password must have at least {minimum} characters."
    lowered = password.lower()
    pieces = personal_pieces(username, name, email, student_number)
    for piece in pieces:
        if piece in lowered:
            return "The password must not contain your user name, student number, name or e-mail address."
    verdict = zxcvbn(password[:ZXCVBN_MAX_CHARS], user_inputs=pieces)
    if verdict["score"] < int(cfg["PASSWORD_MIN_SCORE"]):
        warning = verdict["feedback"].get("warning") or "It is easy to guess."
        hints = " ".join(verdict["feedback"].get("suggestions") or [])
        return f"The password is too easy to guess: {warning.rstrip('.')}. {hints}".strip()
    return None


def user_password_problem(password: str, user) -> str | None:
    """`password_problem` for an account (a User row)."""
    return password_problem(password, username=user.username, name=user.name, email=user.email,
                            student_number=user.student_number)


def _dummy_hash() -> str:
    """A hash made with the same method and parameters as real ones (werkzeug's default), made once per
    process."""
    with _dummy_lock:
        if "hash" not in _dummy:
            _dummy["hash"] = generate_password_hash("not a password of anyone")
        return _dummy["hash"]


def verify(user, password: str) -> bool:
    """Whether ``password`` is the password of ``user`` (a User or None). Always computes one hash of the
    same cost; a disabled account or one without a password never matches."""
    stored = user.password_hash if user is not None and user.password_hash else None
    ok = check_password_hash(stored or _dummy_hash(), password)
    return ok and stored is not None and bool(user.active)
