"""Every route of the real web process tried as every role against every other user's objects, with and
without CSRF tokens, with forged, tampered, logged-out and expired sessions and with revoked, expired and
made-up API tokens. Counts unauthorised reads (a 2xx answer the caller may not have, or any answer that
carries another user's data) and unauthorised writes (a database change made by a request that should
have been refused).

The routes come from the app's URL map, so a new route cannot be missed: a route without an expectation
rule below is reported, and the coverage figure is then off target. The service runs as in production
(`python -m flask --app grader serve`) on a private instance folder and is spoken to over 127.0.0.1 only;
the graded submissions the matrix needs are made beforehand in this process, with the stand-in runner
that replays a recorded engine run (grading on a VM is not what this part measures).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import shutil
import sqlite3
import time
from pathlib import Path

from faults.report import Figure, ratio, zero
from support.app import Browser, make_worker, replay_runner
from support.http import Client, csrf_of, location_path, login, multipart, session_csrf, urlencoded
from support.service import (PASSWORDS, ServiceProcesses, add_token, in_process_app, lab_files, new_sandbox,
                             row_changes, seed, table_rows)

PART = "access"
MISSING = 999999                       # an id no object has
PUBLIC = {"static", "auth.login"}      # answer anyone
SELF_ENDING = {"auth.logout", "auth.password"}   # allowed, they would end the caller's own sessions
SKIP_COLUMNS = {"api_tokens": {"last_used_at"}}  # bookkeeping of any authenticated API call


# --------------------------------------------------------------------------------------------------
# Who may do what (the expectation rules): fn(world, url values, user) -> allowed
# --------------------------------------------------------------------------------------------------

def _any_user(w, v, u) -> bool:
    """Anyone logged in (their own data only)."""
    return True


def _instructor(w, v, u) -> bool:
    """Instructors only."""
    return u["role"] == "instructor"


def _sees_assignment(w, v, u) -> bool:
    """Instructors, and students of the assignment's cohort."""
    return u["role"] == "instructor" or w["assignments"].get(v["assignment_id"]) in u["cohorts"]


def _submits_to(w, v, u) -> bool:
    """Students of the assignment's cohort (instructors do not submit)."""
    return u["role"] == "student" and w["assignments"].get(v["assignment_id"]) in u["cohorts"]


def _owns_submission(w, v, u) -> bool:
    """Instructors, and the submission's owner."""
    return u["role"] == "instructor" or w["submissions"].get(v["submission_id"]) == u["name"]


def _owns_token(w, v, u) -> bool:
    """The token's owner only."""
    return w["tokens"].get(v["token_id"]) == u["name"]


def _enrolled_in_lab(w, v, u) -> bool:
    """Members of a cohort that has the lab."""
    return any(v["lab"] in w["cohort_labs"].get(c, set()) for c in u["cohorts"])


RULES = {
    "auth.logout": _any_user, "auth.password": _any_user, "student.home": _any_user,
    "student.tokens": _any_user, "api.me": _any_user,
    "student.assignment": _sees_assignment, "student.submit": _submits_to,
    "student.submission": _owns_submission, "student.artifact": _owns_submission,
    "student.source": _owns_submission, "api.submission": _owns_submission, "api.artifact": _owns_submission,
    "student.revoke_token": _owns_token, "api.submit": _enrolled_in_lab,
    "instructor.home": _instructor, "instructor.create_cohort": _instructor, "instructor.cohort": _instructor,
    "instructor.roster": _instructor, "instructor.create_assignment": _instructor,
    "instructor.dashboard": _instructor, "instructor.histogram_plot": _instructor,
    "instructor.regrade": _instructor, "instructor.extension": _instructor, "instructor.gradebook": _instructor,
    "instructor.results_json": _instructor, "instructor.student_json": _instructor,
}


@dataclasses.dataclass
class Caller:
    """One set of credentials. `user` is who it must authenticate as (None: nobody, it must be refused);
    `claims` is who it names (a forged cookie claims someone)."""
    label: str
    kind: str                  # anon, session, token, bad-session, bad-token
    user: str | None = None
    claims: str | None = None
    cookie: str | None = None  # the session cookie's value
    token: str | None = None   # the bearer token
    csrf: str | None = None    # the CSRF token that belongs with the cookie


def allowed(world: dict, endpoint: str, method: str, values: dict, caller: Caller, csrf: str) -> bool | None:
    """Whether the request should be served; None when the route has no expectation rule."""
    if endpoint in PUBLIC:
        return True
    if endpoint not in RULES:
        return None
    if endpoint.startswith("api."):
        user = caller.user if caller.kind == "token" else None
    else:
        user = caller.user if caller.kind == "session" else None
        if method == "POST" and csrf != "valid":
            return False
    return user is not None and RULES[endpoint](world, values, world["users"][user])


# --------------------------------------------------------------------------------------------------
# The world: users, cohorts, graded submissions, tokens, and the marker strings of each owner
# --------------------------------------------------------------------------------------------------

def build_world(app) -> dict:
    """teacher, alice and bob (cohort one, assignment a1), eve (cohort two, assignment a2), an empty cohort
    three; a graded submission each for alice, bob and eve; API tokens. Every owner's data carries random
    marker strings (name, e-mail, a comment in the submitted source, receipts, token prefixes), so that an
    answer carrying someone else's data can be recognised."""
    import secrets

    from flask_migrate import upgrade

    from grader.service.models import Assignment, Cohort, Membership, User, db

    with app.app_context():
        upgrade()
    ids = seed(app, deadline_days=30)
    passwords = dict(PASSWORDS, eve="eve-pass-1")
    tag = {u: secrets.token_hex(6) for u in ("teacher", "alice", "bob", "eve", "one", "two", "three")}
    with app.app_context():
        one = db.session.get(Cohort, ids["cohort"])
        one.name = f"cohort-one-{tag['one']}"
        two, three = Cohort(name=f"cohort-two-{tag['two']}"), Cohort(name=f"cohort-three-{tag['three']}")
        eve = User(username="eve", role="student", student_number="S9")
        eve.set_password(passwords["eve"])
        db.session.add_all([two, three, eve])
        db.session.flush()
        db.session.add(Membership(cohort_id=two.id, user_id=eve.id))
        a2 = Assignment(cohort_id=two.id, lab="lab1", title="lab 1", deadline=dt.datetime(2099, 1, 1))
        db.session.add(a2)
        for u in db.session.execute(db.select(User)).scalars():
            t = tag[u.username]
            u.name, u.email = f"{u.username.title()}-{t}", f"{u.username}-{t}@example.invalid"
        db.session.commit()
        ids.update(eve=eve.id, cohort2=two.id, cohort3=three.id, assignment2=a2.id)
    good = lab_files()
    subs = {}
    for user, aid in (("alice", ids["assignment"]), ("bob", ids["assignment"]), ("eve", ids["assignment2"])):
        b = Browser(app)
        b.login(user, passwords[user])
        files = dict(good, **{"sender.c": good["sender.c"] + f"/* owner {user}-{tag[user]}-src */\n".encode()})
        r = b.post(f"/assignments/{aid}/submit", data={n: (io.BytesIO(d), n) for n, d in files.items()},
                   content_type="multipart/form-data")
        if r.status_code != 303 or "/submissions/" not in r.headers.get("Location", ""):
            raise RuntimeError(f"could not submit as {user}: {r.status_code}")
        subs[int(r.headers["Location"].rsplit("/", 1)[1])] = user
    make_worker(app, replay_runner()).drain(timeout=120)
    tokens, spare = {}, {}
    for user in ("alice", "bob", "eve", "teacher"):
        tokens[user] = add_token(app, ids[user])
        spare[user] = add_token(app, ids[user], name="spare")
    bad_tokens = {"revoked": add_token(app, ids["alice"], revoked=True),
                  "expired": add_token(app, ids["alice"], expired=True)}
    world = {"ids": ids, "passwords": passwords, "tag": tag, "tokens_by_user": tokens, "bad_tokens": bad_tokens}
    with app.app_context():
        from grader.service.models import ApiToken

        world["submissions"] = subs
        world["assignments"] = {ids["assignment"]: ids["cohort"], ids["assignment2"]: ids["cohort2"]}
        world["cohort_labs"] = {ids["cohort"]: {"lab1"}, ids["cohort2"]: {"lab1"}}
        members = {u: set() for u in ("teacher", "alice", "bob", "eve")}
        for m in db.session.execute(db.select(Membership)).scalars():
            members[m.user.username].add(m.cohort_id)
        world["users"] = {u: {"name": u, "id": ids[u], "role": "instructor" if u == "teacher" else "student",
                              "cohorts": members[u]} for u in members}
        toks = db.session.execute(db.select(ApiToken)).scalars().all()
        world["spare_token_ids"] = {user: next(t.id for t in toks if t.token_hash == ApiToken.hash(spare[user]))
                                    for user in spare}
        world["tokens"] = {t.id: t.user.username for t in toks}
        world["markers"] = owner_markers(db, tag, subs, toks)
        world["secrets"] = [app.config["SECRET_KEY"], "scrypt:32768", "def create_app(", "root:x:0:0"] + \
            [t.token_hash for t in toks]
        world["cohort_names"] = {ids["cohort"]: f"cohort-one-{tag['one']}", ids["cohort2"]: f"cohort-two-{tag['two']}",
                                 ids["cohort3"]: f"cohort-three-{tag['three']}"}
        db.session.rollback()
    return world


def owner_markers(db, tag: dict, subs: dict, toks) -> dict[str, list[str]]:
    """Per user: strings that appear only in that user's data."""
    from grader.service.models import Submission

    out = {u: [f"{u.title()}-{tag[u]}", f"{u}-{tag[u]}@example.invalid", f"{u}-{tag[u]}-src"]
           for u in ("teacher", "alice", "bob", "eve")}
    for sid, user in subs.items():
        s = db.session.get(Submission, sid)
        out[user] += [s.sha256, s.storage_key]
    for t in toks:
        out[t.user.username].append(t.prefix)
    return out


def foreign_markers(world: dict, user: str | None) -> list[str]:
    """What `user` (None: nobody) must never be shown: other users' markers and cohort names (none of
    either for an instructor), and the service's secrets (for everyone)."""
    if user is not None and world["users"][user]["role"] == "instructor":
        return list(world["secrets"])
    mine = world["users"][user]["cohorts"] if user else set()
    out = [m for owner, ms in world["markers"].items() if owner != user for m in ms]
    out += [name for cid, name in world["cohort_names"].items() if cid not in mine]
    return out + list(world["secrets"])


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------

def cookie_tools(app):
    """(decode(cookie) -> payload, sign(payload, secret, age_s) -> cookie): the service's own session
    cookie format, signed with any key and back-dated by age_s seconds."""
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    si = app.session_interface
    real = si.get_signing_serializer(app)

    def sign(payload: dict, secret: str, age: int = 0) -> str:
        """`payload` as a session cookie signed with `secret`, `age` seconds old."""
        class Signer(TimestampSigner):
            def get_timestamp(self) -> int:
                return int(time.time()) - age
        s = URLSafeTimedSerializer(secret, salt=si.salt, serializer=si.serializer, signer=Signer,
                                   signer_kwargs={"key_derivation": si.key_derivation,
                                                  "digest_method": si.digest_method})
        return s.dumps(payload)
    return real.loads, sign


def tampered(cookie: str, payload: dict, serializer) -> str:
    """`cookie` with its payload replaced by `payload` and its signature kept (so no longer valid)."""
    from itsdangerous.encoding import base64_encode

    _payload, ts, sig = cookie.rsplit(".", 2)
    return base64_encode(serializer.dumps(payload)).decode() + "." + ts + "." + sig


def web_session(port: int, user: str, password: str) -> Client:
    """A client logged in as `user` through the login form."""
    c = Client(port)
    r = login(c, user, password)
    if r.status != 302 or location_path(r).startswith("/login"):
        raise RuntimeError(f"could not log in as {user}: {r.status}")
    return c


def make_callers(app, world: dict, port: int) -> tuple[list[Caller], dict[str, Caller]]:
    """Every set of credentials: anonymous; the four users' sessions and tokens; a session of alice's taken
    before she logged out; a teacher's session taken before a password change; teacher sessions forged
    with another key, back-dated past the session lifetime, and alice's with the user id edited; revoked,
    expired, made-up tokens and a token's stored hash used as a token."""
    import secrets

    pw = world["passwords"]
    # stale sessions first: logging out and changing a password end every session of the account
    old_alice = web_session(port, "alice", pw["alice"])
    old_alice_csrf = session_csrf(old_alice)
    old_alice_cookie = old_alice.cookies["session"]
    body, ctype = urlencoded([("csrf_token", old_alice_csrf)])
    if old_alice.request("POST", "/logout", body, {"Content-Type": ctype}).status != 302:
        raise RuntimeError("alice could not log out")
    old_teacher = web_session(port, "teacher", pw["teacher"])
    old_teacher_csrf = session_csrf(old_teacher)
    changer = web_session(port, "teacher", pw["teacher"])
    new_pw = secrets.token_urlsafe(16)   # the password policy refuses one derived from the user name
    body, ctype = urlencoded([("csrf_token", session_csrf(changer)), ("old", pw["teacher"]), ("new", new_pw)])
    if changer.request("POST", "/account/password", body, {"Content-Type": ctype}).status != 302:
        raise RuntimeError("the teacher's password could not be changed")
    pw["teacher"] = new_pw
    # the password change revoked the teacher's tokens: the old one must now be refused, a new one serves
    teacher_token_before_change = world["tokens_by_user"]["teacher"]
    world["tokens_by_user"]["teacher"] = add_token(app, world["ids"]["teacher"])
    callers = [Caller("anonymous", "anon", csrf=None)]
    anon = Client(port)
    callers[0].csrf = csrf_of(anon.get("/login").text())
    callers[0].cookie = anon.cookies.get("session")
    sessions = {}
    for user in ("alice", "bob", "eve", "teacher"):
        c = changer if user == "teacher" else web_session(port, user, pw[user])
        sessions[user] = Caller(f"session {user}", "session", user, user, c.cookies["session"], None,
                                session_csrf(c))
        callers.append(sessions[user])
    for user in ("alice", "bob", "eve", "teacher"):
        callers.append(Caller(f"token {user}", "token", user, user, token=world["tokens_by_user"][user]))
    decode, sign = cookie_tools(app)
    teacher_payload = decode(sessions["teacher"].cookie)
    alice_payload = decode(sessions["alice"].cookie)
    edited = dict(alice_payload, _user_id=f"{world['ids']['teacher']}:{teacher_payload['_user_id'].split(':')[1]}")
    lifetime = int(app.permanent_session_lifetime.total_seconds())
    callers += [
        Caller("alice's session after she logged out", "bad-session", None, "alice", old_alice_cookie,
               csrf=old_alice_csrf),
        Caller("teacher's session from before a password change", "bad-session", None, "teacher",
               old_teacher.cookies["session"], csrf=old_teacher_csrf),
        Caller("teacher session signed with another key", "bad-session", None, "teacher",
               sign(teacher_payload, secrets.token_urlsafe(48)), csrf=sessions["teacher"].csrf),
        Caller("alice session signed with another key", "bad-session", None, "alice",
               sign(alice_payload, secrets.token_urlsafe(48)), csrf=sessions["alice"].csrf),
        Caller("alice session edited to the teacher's user id", "bad-session", None, "teacher",
               tampered(sessions["alice"].cookie, edited, app.session_interface.serializer),
               csrf=sessions["alice"].csrf),
        Caller("teacher session older than the session lifetime", "bad-session", None, "teacher",
               sign(teacher_payload, app.secret_key, lifetime + 3600), csrf=sessions["teacher"].csrf),
        Caller("revoked token", "bad-token", None, "alice", token=world["bad_tokens"]["revoked"]),
        Caller("expired token", "bad-token", None, "alice", token=world["bad_tokens"]["expired"]),
        Caller("teacher's token from before a password change", "bad-token", None, "teacher",
               token=teacher_token_before_change),
        Caller("made-up token", "bad-token", None, None, token="cl_" + secrets.token_urlsafe(32)),
        Caller("a token's stored hash as token", "bad-token", None, "alice",
               token=next(h for h in world["secrets"] if len(h) == 64)),
    ]
    for c in (old_alice, old_teacher, changer, anon):
        c.close()
    return callers, sessions


def csrf_variants(endpoint: str, method: str, caller: Caller, sessions: dict) -> list[tuple[str, str | None]]:
    """(variant, CSRF token to send) for one caller: valid, missing, forged, foreign (another session's)
    for a POST to a web route; nothing to vary otherwise."""
    if method != "POST" or endpoint.startswith("api."):
        return [("n/a", None)]
    out = [("missing", None)]
    if caller.csrf:
        out.append(("valid", caller.csrf))
    if caller.kind == "session":
        other = sessions["bob" if caller.user == "alice" else "alice"]
        out += [("forged", "IjAxMjM0NTY3ODlhYmNkZWYi.Zz8AAA.forged-signature"), ("foreign", other.csrf)]
    return out


# --------------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------------

def bindings(rule, world: dict) -> list[dict]:
    """Values for a rule's URL arguments: every user's objects and an id nobody has."""
    ids = world["ids"]
    choices = {
        "submission_id": sorted(world["submissions"]) + [MISSING],
        "assignment_id": [ids["assignment"], ids["assignment2"], MISSING],
        "cohort_id": [ids["cohort"], ids["cohort2"], ids["cohort3"]],
        "token_id": sorted(world["spare_token_ids"].values()),
        "user_id": [ids["alice"], ids["bob"], ids["eve"]],
        "name": ["kmsg.txt", "sender.c", ".upload"],
        "lab": ["lab1", "lab2"],
        "filename": ["style.css", "../app.py", "../../../../../../etc/passwd", "..%2fapp.py"],
    }
    out = [{}]
    for arg in sorted(rule.arguments):
        out = [dict(v, **{arg: x}) for v in out for x in choices[arg]]
    return out


def body_for(endpoint: str, values: dict, caller: Caller, csrf: str | None, k: int, world: dict
             ) -> tuple[bytes, str]:
    """A POST body that would change something if it were accepted (so that a missing check shows)."""
    fields: list[tuple] = []
    files: list[tuple] = []
    pw = world["passwords"]
    claims = caller.claims or "alice"
    if endpoint == "auth.login":
        fields = [("username", "alice"), ("password", pw["alice"])]
    elif endpoint == "auth.password":
        fields = [("old", pw.get(claims, "x")), ("new", f"changed-by-matrix-{k}")]
    elif endpoint == "student.tokens":
        fields = [("name", f"matrix-{k}")]
    elif endpoint == "instructor.create_cohort":
        fields = [("name", f"matrix-cohort-{k}")]
    elif endpoint == "instructor.create_assignment":
        fields = [("lab", "lab1"), ("deadline", "2031-01-01T00:00")]
    elif endpoint == "instructor.extension":
        who = "eve" if values.get("assignment_id") == world["ids"]["assignment2"] else "alice"
        fields = [("username", who), ("deadline", f"2031-01-01T{k // 60 % 24:02d}:{k % 60:02d}")]
    elif endpoint == "instructor.roster":
        files = [("roster", "roster.csv", f"student_number,name,email\nM{k},Matrix {k},m{k}@example.org\n".encode())]
    elif endpoint in ("student.submit", "api.submit"):
        files = [(n, n, d) for n, d in lab_files().items()]
    if csrf is not None:
        fields.insert(0, ("csrf_token", csrf))
    if files:
        return multipart([(n, None, v) for n, v in fields] + files)
    return urlencoded(fields)


@dataclasses.dataclass
class Attempt:
    """One request of the matrix and whether it should be served."""
    endpoint: str
    method: str
    url: str
    values: dict
    caller: Caller
    csrf: str
    csrf_token: str | None
    allowed: bool


def plan(app, world: dict, callers: list[Caller], sessions: dict) -> tuple[list[Attempt], list[str], dict]:
    """Every (route, method, objects, caller, CSRF variant), refused ones before allowed ones for each
    route and objects (an allowed write may make a later one a no-op). Returns the attempts, the routes
    without an expectation rule, and what was left out and why."""
    attempts: list[Attempt] = []
    unruled, skipped = [], {"allowed and would end the caller's own sessions": 0}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint not in PUBLIC and rule.endpoint not in RULES:
            unruled.append(rule.endpoint)
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for values in bindings(rule, world):
                url = rule.build(values, append_unknown=False)[1]
                group = []
                for caller in callers:
                    for variant, token in csrf_variants(rule.endpoint, method, caller, sessions):
                        ok = allowed(world, rule.endpoint, method, values, caller, variant)
                        if ok and rule.endpoint in SELF_ENDING and caller.kind == "session":
                            skipped["allowed and would end the caller's own sessions"] += 1
                            continue
                        group.append(Attempt(rule.endpoint, method, url, values, caller, variant, token, bool(ok)))
                attempts += sorted(group, key=lambda a: a.allowed)
    return attempts, unruled, skipped


def send(a: Attempt, client: Client, k: int, world: dict):
    """Send one attempt with its caller's credentials (the caller's cookies are left as they were)."""
    headers = {}
    if a.caller.cookie:
        headers["Cookie"] = f"session={a.caller.cookie}"
    if a.caller.token:
        headers["Authorization"] = f"Bearer {a.caller.token}"
    body = None
    if a.method == "POST":
        body, ctype = body_for(a.endpoint, a.values, a.caller, a.csrf_token, k, world)
        headers["Content-Type"] = ctype
    return client.request(a.method, a.url, body, headers, keep_cookies=False)


def leaks(body: bytes, markers: list[str]) -> list[str]:
    """The markers found in a response body."""
    text = body.decode("utf-8", "replace")
    return [m for m in markers if m and m in text]


class CommitWatch:
    """Whether another connection has committed to an SQLite database since the last look (PRAGMA
    data_version), so that the tables are compared only when something may have changed."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path)
        self.last = self._version()

    def _version(self) -> int:
        """SQLite's data_version of this connection."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def committed(self) -> bool:
        """Whether another connection committed since the last call."""
        v = self._version()
        changed, self.last = v != self.last, v
        return changed

    def close(self) -> None:
        """Close the watching connection."""
        self.conn.close()


def run_matrix(app, world: dict, attempts: list[Attempt], port: int, progress) -> list[dict]:
    """Send every attempt in order, one at a time; after each that committed anything, compare the
    database with the snapshot before it. Returns one record per attempt."""
    client = Client(port)
    watch = CommitWatch(Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")))
    before = table_rows(app, SKIP_COLUMNS)
    markers = {}
    records = []
    t0 = time.monotonic()
    for k, a in enumerate(attempts):
        r = send(a, client, k, world)
        changes = {}
        if watch.committed():
            after = table_rows(app, SKIP_COLUMNS)
            changes = row_changes(before, after)
            before = after
        who = a.caller.user if (a.caller.kind == "token") == a.endpoint.startswith("api.") else None
        if who not in markers:
            markers[who] = foreign_markers(world, who)
        found = leaks(r.body, markers[who]) if 200 <= r.status < 300 else []
        records.append({
            "endpoint": a.endpoint, "method": a.method, "url": a.url, "caller": a.caller.label, "csrf": a.csrf,
            "allowed": a.allowed, "status": r.status, "location": location_path(r),
            "unauthorised_read": (not a.allowed and 200 <= r.status < 300) or bool(found),
            "leaked": found[:3], "unauthorised_write": bool(changes) and not a.allowed,
            "changes": changes, "server_error": r.status >= 500 or r.status < 0,
        })
        if (k + 1) % 500 == 0:
            progress(f"access: {k + 1}/{len(attempts)} requests ({time.monotonic() - t0:.0f}s)")
    client.close()
    watch.close()
    return records


def allowed_reads(records: list[dict]) -> tuple[int, list[dict]]:
    """Allowed GETs of objects that exist: (how many, those not answered), a check that the matrix is not
    refused wholesale (a login redirect is not an answer)."""
    checked, bad = 0, []
    for r in records:
        if r["method"] != "GET" or not r["allowed"] or r["endpoint"] == "static":
            continue
        if str(MISSING) in r["url"] or ".upload" in r["url"]:
            continue
        if r["endpoint"] in ("student.artifact", "api.artifact") and not r["url"].endswith("/kmsg.txt"):
            continue
        if r["endpoint"] == "student.source" and not r["url"].endswith("/sender.c"):
            continue
        checked += 1
        if not (200 <= r["status"] < 400) or r["location"].startswith("/login"):
            bad.append(r)
    return checked, bad


def brief(records: list[dict], n: int = 3) -> str:
    """A figure note from the first records."""
    return "; ".join(f"{r['method']} {r['url']} as {r['caller']} (CSRF {r['csrf']}) -> {r['status']}"
                     + (f" leaked {r['leaked'][0][:20]!r}" if r.get("leaked") else "")
                     + (f" changed {r['changes']}" if r.get("unauthorised_write") else "")
                     for r in records[:n])


def first(records: list[dict], key: str, limit: int = 10) -> list[dict]:
    """The first `limit` records with `key` set."""
    return [r for r in records if r[key]][:limit]


@contextlib.contextmanager
def served_world(part: str, progress):
    """The world of `build_world` on a private instance folder in a temporary sandbox, served by the real
    web process: yields (app, world, server, instance); the sandbox is removed afterwards."""
    t0 = time.monotonic()
    sandbox, instance = new_sandbox(f"copylab-faults-{part}-")
    try:
        with in_process_app(instance) as app:
            world = build_world(app)
            progress(f"{part}: world ready ({time.monotonic() - t0:.1f}s)")
            with ServiceProcesses(instance, progress=progress, logs=sandbox) as server:
                yield app, world, server, instance
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def measure(progress=print) -> dict:
    """Build the world, serve it, send the whole matrix and count unauthorised reads and writes."""
    t0 = time.monotonic()
    with served_world(PART, progress) as (app, world, server, _instance):
        callers, sessions = make_callers(app, world, server.port)
        attempts, unruled, skipped = plan(app, world, callers, sessions)
        progress(f"access: {len(attempts)} requests: {len({(a.endpoint, a.method) for a in attempts})} "
                 f"route methods x objects x {len(callers)} credentials")
        records = run_matrix(app, world, attempts, server.port, progress)
        server.stop()
        exceptions = server.exceptions()
        total_routes = sorted({r.endpoint for r in app.url_map.iter_rules()})
    return report(records, world, callers, unruled, skipped, total_routes, exceptions,
                  round(time.monotonic() - t0, 1))


def report(records, world, callers, unruled, skipped, total_routes, exceptions, elapsed) -> dict:
    """The part's figures and details."""
    reads = [r for r in records if r["unauthorised_read"]]
    writes = [r for r in records if r["unauthorised_write"]]
    errors = [r for r in records if r["server_error"]]
    covered = sorted({r["endpoint"] for r in records})
    checked, bad_reads = allowed_reads(records)
    per_caller = {}
    for r in records:
        s = per_caller.setdefault(r["caller"], {"requests": 0, "allowed": 0, "unauthorised_reads": 0,
                                                "unauthorised_writes": 0})
        s["requests"] += 1
        s["allowed"] += r["allowed"]
        s["unauthorised_reads"] += r["unauthorised_read"]
        s["unauthorised_writes"] += r["unauthorised_write"]
    denied_writes = sum(1 for r in records if r["method"] == "POST" and not r["allowed"])
    figures = [
        zero(PART, "unauthorised reads", len(reads), brief(reads)),
        zero(PART, "unauthorised writes", len(writes),
             brief(writes) if writes else f"{denied_writes} refused POSTs; after every request the database "
             "is checked for commits and its rows compared"),
        Figure(PART, "requests tried (routes x roles x credentials)", str(len(records)), "", None,
               f"{len(covered)} routes x their objects x {len(callers)} credentials, POSTs with valid, missing, "
               f"forged and foreign CSRF tokens; HEAD and OPTIONS not tried"),
        ratio(PART, "routes covered by the matrix", len(covered), len(total_routes),
              f"no expectation rule: {', '.join(unruled)}" if unruled else
              ", ".join(sorted(set(total_routes) - set(covered)))),
        zero(PART, "server errors (HTTP 5xx or dropped connection)", len(errors),
             brief(errors) + (f"; server log: {exceptions[0]}" if exceptions else "")),
        ratio(PART, "allowed reads answered (owners and instructors)", checked - len(bad_reads), checked,
              brief(bad_reads)),
    ]
    return {
        "figures": [f.as_dict() for f in figures], "elapsed_s": elapsed, "requests": len(records),
        "credentials": [c.label for c in callers], "routes": total_routes, "routes_without_rule": unruled,
        "skipped": skipped, "per_credential": per_caller,
        "unauthorised_reads": first(records, "unauthorised_read"),
        "unauthorised_writes": first(records, "unauthorised_write"),
        "allowed_posts_that_changed_the_database": sum(1 for r in records if r["allowed"] and r["changes"]),
        "server_errors": errors[:10], "server_log_exceptions": exceptions,
        "allowed_reads_refused": bad_reads[:10],
    }
