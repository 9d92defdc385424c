"""Logins under attack (throttling per account, client and address; equal cost for unknown users; a bound
on hashes computed at once), the password policy wherever a password is chosen, and API token
lifetime and revocation. The throttling tests run on SQLite and on a real PostgreSQL server, each with
two app objects on one database, as two web processes are."""
from __future__ import annotations

import contextlib
import threading
import time
import uuid

import pytest

from support.app import Browser, page_csrf
from support.service import PASSWORDS, seed

STRONG = "quiet-harbor-lantern-42"


@pytest.fixture(params=["sqlite", "postgresql"])
def apps(request, tmp_path, monkeypatch):
    """Two app objects (two web processes) on one database, seeded with teacher, alice and bob."""
    monkeypatch.setenv("GRADER_INSTANCE_PATH", str(tmp_path / "instance"))
    from grader import create_app
    from grader.service.models import db

    cfg = {"TESTING": True, "SECRET_KEY": "login-" + "k" * 40, "LOGIN_LOCKOUT_SECONDS": 60}
    if request.param == "postgresql":
        cfg["SQLALCHEMY_DATABASE_URI"] = request.getfixturevalue("postgres_server").new_database(
            f"t_{uuid.uuid4().hex[:10]}")
    first = create_app(dict(cfg))
    first.ids = seed(first)
    second = create_app(dict(cfg))
    yield first, second
    for a in (first, second):
        with a.app_context():
            db.engine.dispose()


class Visitor:
    """A browser at one network address (its own cookies: session, CSRF, device)."""

    def __init__(self, app, addr: str):
        self.c, self.addr = app.test_client(), addr

    def login(self, username: str, password: str):
        env = {"REMOTE_ADDR": self.addr}
        page = self.c.get("/login", environ_base=env).get_data(as_text=True)
        return self.c.post("/login", data={"username": username, "password": password, "csrf_token": page_csrf(page)},
                           environ_base=env)

    def logout(self):
        env = {"REMOTE_ADDR": self.addr}
        token = page_csrf(self.c.get("/tokens", environ_base=env).get_data(as_text=True))
        assert self.c.post("/logout", data={"csrf_token": token}, environ_base=env).status_code == 302


def retry_after(r) -> int:
    assert r.status_code == 429, (r.status_code, r.get_data(as_text=True)[:300])
    return int(r.headers["Retry-After"])


def test_one_client_guessing_one_account_is_locked(apps):
    """5 wrong passwords from one address: 401 each; the 6th try answers 429 with Retry-After, even with
    the right password, and in the other web process too."""
    a, b = apps
    guesser = Visitor(a, "192.0.2.10")
    for i in range(5):
        assert guesser.login("alice", f"wrong-{i}").status_code == 401
    r = guesser.login("alice", PASSWORDS["alice"])
    assert 50 <= retry_after(r) <= 60 and b"Too many failed logins to this account from here" in r.data
    assert 50 <= retry_after(Visitor(b, "192.0.2.10").login("alice", PASSWORDS["alice"])) <= 60
    # another client is not locked out by this one (its address, the account's count: 5 of 10)
    assert Visitor(b, "192.0.2.11").login("alice", PASSWORDS["alice"]).status_code == 302


def test_lockout_doubles_with_each_further_failure(apps):
    a, _ = apps
    from grader.service.models import LoginThrottle, db

    a.config.update(LOGIN_LOCKOUT_SECONDS=1)
    guesser = Visitor(a, "192.0.2.20")
    for i in range(5):
        guesser.login("bob", f"wrong-{i}")
    assert retry_after(guesser.login("bob", "wrong")) == 1
    locks = []
    for _ in range(3):
        time.sleep(max(0.0, (locks[-1] if locks else 1) + 0.05))
        assert guesser.login("bob", "still-wrong").status_code == 401   # the lock ended: one more try
        with a.app_context():
            rows = db.session.execute(db.select(LoginThrottle)).scalars().all()
            pair = [r for r in rows if r.key.startswith("pair:")][0]
            locks.append(round((pair.locked_until - pair.last_failure_at).total_seconds()))
    assert locks == [2, 4, 8]


def test_many_clients_lock_the_account_but_not_its_owners_browser(apps):
    """Guessers from 5 addresses (2 tries each) lock the account for every client without its device
    cookie; the owner's browser, which logged in before, still gets in."""
    a, b = apps
    owner = Visitor(a, "198.51.100.7")
    assert owner.login("alice", PASSWORDS["alice"]).status_code == 302
    owner.logout()
    for n in range(5):
        g = Visitor(b, f"203.0.113.{n + 1}")
        assert [g.login("alice", f"guess-{n}-{i}").status_code for i in range(2)] == [401, 401]
    r = Visitor(a, "203.0.113.99").login("alice", PASSWORDS["alice"])   # a new browser
    assert retry_after(r) > 0 and b"from a browser you have logged in to it with before" in r.data
    assert owner.login("alice", PASSWORDS["alice"]).status_code == 302
    # the device cookie names one account: it does not lift the lock of another
    owner.logout()
    for i in range(10):
        Visitor(b, f"203.0.114.{i}").login("bob", "wrong")
    assert retry_after(owner.login("bob", PASSWORDS["bob"])) > 0


def test_one_address_spraying_many_accounts_is_locked(apps):
    a, _ = apps
    sprayer = Visitor(a, "192.0.2.30")
    for i in range(30):
        assert sprayer.login(f"S{1000 + i}", "12345678").status_code == 401
    r = sprayer.login("bob", PASSWORDS["bob"])
    assert retry_after(r) > 0 and b"from your network address" in r.data


def test_unknown_user_costs_one_hash_of_the_same_parameters_and_is_throttled_alike(apps, monkeypatch):
    a, _ = apps
    from werkzeug import security

    from grader.service import passwords
    from grader.service.models import User, db

    checked = []
    real = security.check_password_hash
    monkeypatch.setattr(passwords, "check_password_hash", lambda h, p: checked.append(h) or real(h, p))
    v = Visitor(a, "192.0.2.40")
    assert v.login("no-such-user", "guess").status_code == 401
    assert v.login("alice", "guess").status_code == 401
    with a.app_context():
        alice_hash = db.session.get(User, a.ids["alice"]).password_hash
    method = alice_hash.split("$", 1)[0]
    assert method.startswith("scrypt:") and [h.split("$", 1)[0] for h in checked] == [method, method]
    for _ in range(4):
        v.login("no-such-user", "guess")
    r = v.login("no-such-user", "guess")
    assert retry_after(r) > 0 and b"to this account from here" in r.data


@contextlib.contextmanager
def held(slots):
    """Take a hash slot of `slots` in another thread for the duration of the block."""
    taken, release = threading.Event(), threading.Event()

    def hold():
        with slots.slot():
            taken.set()
            release.wait(30)
    t = threading.Thread(target=hold)
    t.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        t.join(10)


def test_password_hashes_at_once_are_bounded(apps):
    """With every hash slot taken and no room to wait, a login answers 503 with Retry-After at once
    (the thread is not held); when a slot frees, logins work again."""
    a, _ = apps
    from grader.service.throttle import HashSlots

    clean = HashSlots(1, 0, 0.1)
    a.extensions["copylab_hash_slots"] = {"clean": clean, "suspect": HashSlots(1, 0, 0.1)}
    with held(clean):
        r = Visitor(a, "192.0.2.50").login("alice", PASSWORDS["alice"])
        assert r.status_code == 503 and r.headers["Retry-After"] == "2" and b"too many passwords" in r.data
    assert Visitor(a, "192.0.2.50").login("alice", PASSWORDS["alice"]).status_code == 302


def test_guessers_do_not_take_the_hash_slots_of_others(apps):
    """Attempts with recent failures (of their account name, client or address) hash in their own pool:
    with it full they answer 503, while a client without failures still logs in."""
    a, _ = apps
    from grader.service.throttle import HashSlots

    suspect = HashSlots(1, 0, 0.1)
    a.extensions["copylab_hash_slots"] = {"clean": HashSlots(1, 0, 0.1), "suspect": suspect}
    guesser = Visitor(a, "192.0.2.60")
    assert guesser.login("bob", "wrong").status_code == 401
    with held(suspect):
        assert guesser.login("bob", "wrong again").status_code == 503
        assert Visitor(a, "192.0.2.61").login("alice", PASSWORDS["alice"]).status_code == 302


def test_password_form_guesses_are_throttled_like_logins(app, browser):
    """A session (perhaps a stolen one) guessing the current password meets the same limit."""
    alice = browser("alice")
    for i in range(5):
        r = alice.post("/account/password", data={"old": f"guess-{i}", "new": STRONG})
        assert r.status_code == 400 and b"current password is wrong" in r.data
    r = alice.post("/account/password", data={"old": PASSWORDS["alice"], "new": STRONG})
    assert retry_after(r) > 0 and b"Too many failed logins to this account from here" in r.data


# ------------------------------------------------------------------------------ password policy
@pytest.mark.parametrize("new,reason", [
    ("12345678", "too easy to guess"), ("password1", "too easy to guess"), ("short", "at least 8 characters"),
    ("Alice-2024!", "must not contain your user name"), ("xyS1-alice@@", "must not contain your user name"),
    ("qwertyuiop", "too easy to guess"),
])
def test_password_change_refuses_weak_and_personal_passwords(app, browser, new, reason):
    alice = browser("alice")
    r = alice.post("/account/password", data={"old": PASSWORDS["alice"], "new": new})
    assert r.status_code == 400 and reason in r.get_data(as_text=True)


def test_cli_and_roster_apply_the_policy(app, tmp_path):
    runner = app.test_cli_runner()
    for pw, reason in (("12345678", "too easy to guess"), ("maria-kowalska-1", "must not contain")):
        r = runner.invoke(args=["create-instructor", "mkowalska", "--name", "Maria Kowalska"],
                          env={"GRADER_NEW_PASSWORD": pw})
        assert r.exit_code == 1 and reason in r.output, r.output
    r = runner.invoke(args=["create-instructor", "mkowalska", "--name", "Maria Kowalska"],
                      env={"GRADER_NEW_PASSWORD": STRONG})
    assert r.exit_code == 0, r.output
    runner.invoke(args=["create-cohort", "spring"])
    roster = tmp_path / "r.csv"
    roster.write_text("student_number,name,email,password\n"
                      "S31,Jan Nowak,jan@example.invalid,iloveyou1\n"
                      "S32,Ewa Lis,elis@example.invalid,elis-secret-99\n"
                      f"S33,Olaf Berg,olaf@example.invalid,{STRONG}\n")
    r = runner.invoke(args=["import-roster", "spring", str(roster)])
    assert r.exit_code == 1 and "row 2: password: The password is too easy to guess" in r.output, r.output
    assert "row 3: password: The password must not contain" in r.output and "row 4" not in r.output


# ------------------------------------------------------------------------------ API tokens
def api_me(app, token: str):
    return app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


def new_token(b: Browser) -> tuple[str, str]:
    """(token, the expiry shown with it) from the tokens page."""
    import re

    page = b.post("/tokens", data={"name": "handin"}).get_data(as_text=True)
    token = re.search(r'<pre id="new-token">([^<]+)</pre>', page).group(1)
    expiry = re.search(r'<strong id="new-token-expiry">([^<]+)</strong>', page).group(1)
    return token, expiry


def test_token_shows_its_expiry_and_is_refused_after_it(apps):
    import datetime as dt

    from grader.service.models import ApiToken, db, utcnow

    app, _ = apps
    app.config["TOKEN_LIFETIME_DAYS"] = 30
    alice = Browser(app, "alice")
    token, shown = new_token(alice)
    expected = utcnow() + dt.timedelta(days=30)
    assert abs(dt.datetime.strptime(shown, "%Y-%m-%d %H:%M UTC") - expected) < dt.timedelta(minutes=2)
    assert api_me(app, token).status_code == 200
    with app.app_context():   # 31 days later
        tok = db.session.execute(db.select(ApiToken).filter_by(token_hash=ApiToken.hash(token))).scalar_one()
        tok.created_at -= dt.timedelta(days=31)
        tok.expires_at -= dt.timedelta(days=31)
        db.session.commit()
    r = api_me(app, token)
    assert r.status_code == 401 and r.json["error"].startswith("the API token expired on ")
    assert "expired" in alice.get("/tokens").get_data(as_text=True)
    # a token made before the lifetime was shortened follows the shorter lifetime
    other, _ = new_token(alice)
    app.config["TOKEN_LIFETIME_DAYS"] = 0
    assert "expired on" in api_me(app, other).json["error"]


def test_password_change_revokes_every_token(apps):
    """Revoked in the database: the other web process refuses the tokens too."""
    app, other = apps
    alice = Browser(app, "alice")
    tokens = [new_token(alice)[0] for _ in range(2)]
    bob_token = new_token(Browser(app, "bob"))[0]
    assert all(api_me(other, t).status_code == 200 for t in tokens)
    r = alice.post("/account/password", data={"old": PASSWORDS["alice"], "new": STRONG})
    assert r.status_code == 302
    for t in tokens:
        r = api_me(other, t)
        assert r.status_code == 401 and "revoked" in r.json["error"] and "password was changed" in r.json["error"]
    assert api_me(app, bob_token).status_code == 200
    fresh = new_token(alice)[0]
    assert api_me(app, fresh).status_code == 200


def test_cli_password_reset_revokes_tokens(app, browser):
    teacher = browser("teacher")
    token = new_token(teacher)[0]
    r = app.test_cli_runner().invoke(args=["create-instructor", "teacher"], env={"GRADER_NEW_PASSWORD": STRONG})
    assert r.exit_code == 0, r.output
    assert "password was changed" in api_me(app, token).json["error"]
