"""Roster import from CSV: validated as a whole, imported in one transaction, or not at all.

Columns (header row required; extra columns ignored): student_number, name, email, and optionally
username (default: the student number) and password (default: a generated one, returned once).
"""
from __future__ import annotations

import csv
import io
import re
import secrets
from dataclasses import dataclass, field

from .models import Cohort, Membership, User, db
from .passwords import password_problem

EMAIL_RE = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
REQUIRED = ("student_number", "name", "email")


class RosterError(ValueError):
    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass
class ImportReport:
    created: list[tuple[str, str | None]] = field(default_factory=list)   # (username, new password)
    enrolled: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)


def parse(text: str) -> list[dict]:
    try:
        return _parse(text)
    except csv.Error as e:  # a field over csv.field_size_limit(), ...
        raise RosterError([f"the file is not valid CSV ({e})"]) from None


def _parse(text: str) -> list[dict]:
    errors: list[str] = []
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise RosterError(["the file is empty: expected a header row with student_number,name,email"])
    heads = [h.strip().lower() for h in reader.fieldnames]
    reader.fieldnames = heads
    missing = [c for c in REQUIRED if c not in heads]
    if missing:
        raise RosterError([f"the header lacks column(s) {', '.join(missing)} (found: {', '.join(heads)})"])
    rows, seen_num, seen_user = [], {}, {}
    for i, raw in enumerate(reader, start=2):
        if None in raw:
            errors.append(f"row {i}: more fields than the header has columns")
            continue
        r = {k: (v or "").strip() for k, v in raw.items()}
        if not any(r.values()):
            continue
        num, name, email = r["student_number"], r["name"], r["email"]
        username = r.get("username") or num
        row_errors = []
        if not ID_RE.match(num):
            row_errors.append(f"student_number {num!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if not name:
            row_errors.append("name is empty")
        elif len(name) > 200:
            row_errors.append(f"name is longer than 200 characters ({len(name)})")
        elif not name.isprintable():
            row_errors.append(f"name {name[:40]!r} contains control characters")
        if len(email) > 200:
            row_errors.append(f"email is longer than 200 characters ({len(email)})")
        elif not EMAIL_RE.match(email):
            row_errors.append(f"email {email!r} is not an email address")
        if not ID_RE.match(username):
            row_errors.append(f"username {username!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if r.get("password"):
            problem = password_problem(r["password"], username=username, name=name, email=email,
                                       student_number=num)
            if problem:
                row_errors.append(f"password: {problem}")
        if num in seen_num:
            row_errors.append(f"student_number {num} repeats row {seen_num[num]}")
        if username in seen_user:
            row_errors.append(f"username {username} repeats row {seen_user[username]}")
        seen_num.setdefault(num, i)
        seen_user.setdefault(username, i)
        errors += [f"row {i}: {e}" for e in row_errors]
        rows.append({"row": i, "student_number": num, "name": name, "email": email, "username": username,
                     "password": r.get("password") or None})
    if not rows and not errors:
        errors.append("the file has a header but no students")
    if errors:
        raise RosterError(errors)
    return rows


def import_roster(cohort: Cohort, text: str) -> ImportReport:
    rows = parse(text)
    errors = []
    plan = []
    for r in rows:
        by_num = db.session.execute(db.select(User).filter_by(student_number=r["student_number"])).scalar_one_or_none()
        by_name = db.session.execute(db.select(User).filter_by(username=r["username"])).scalar_one_or_none()
        if by_name is not None and by_name is not by_num:
            errors.append(f"row {r['row']}: username {r['username']} belongs to another account")
        elif by_num is not None and by_num.role != "student":
            errors.append(f"row {r['row']}: {r['student_number']} is not a student account")
        plan.append((r, by_num))
    if errors:
        raise RosterError(errors)
    report = ImportReport()
    try:
        for r, user in plan:
            if user is None:
                user = User(username=r["username"], name=r["name"], email=r["email"],
                            student_number=r["student_number"], role="student")
                password = r["password"] or secrets.token_urlsafe(9)
                user.set_password(password)
                db.session.add(user)
                db.session.flush()
                report.created.append((user.username, None if r["password"] else password))
            else:
                user.name, user.email = r["name"], r["email"]
            if db.session.execute(db.select(Membership).filter_by(cohort_id=cohort.id, user_id=user.id)
                                  ).scalar_one_or_none() is None:
                db.session.add(Membership(cohort_id=cohort.id, user_id=user.id))
                report.enrolled.append(user.username)
            else:
                report.already.append(user.username)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return report
