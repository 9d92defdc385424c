"""Logins under attack, against the real web process (`python -m flask --app grader serve`, 8 threads)
on a private instance folder, spoken to over loopback addresses only (127.0.0.0/8: each source
address is a client the server tells apart).

- An attacker guessing one account's password at full speed (4 connections) from one address, then
  attackers on 8 addresses guessing another account: login tries the service accepted (answered 401
  or 302, not 429/503) per minute per account, while a legitimate user on another address logs in
  every 0.25 s (their /login latency against an unattacked baseline) and, during the second attack,
  the attacked account's owner logs in from the browser they used before (its device cookie).
- Unknown against known user names: wrong-password logins, alternated, one client address per pair.
- Common passwords: the most common entries of John the Ripper's list (Debian's john-data, compiled
  independently of the zxcvbn lists the policy uses) and passwords made of the user's own data, tried
  on the real password form; the whole list through the policy function in this process.
"""
from __future__ import annotations

import multiprocessing
import secrets
import shutil
import statistics
import threading
import time
from pathlib import Path

from faults.report import Figure, ratio, zero
from faults.uploads import Client, Server, csrf_of, in_process_app, login, new_sandbox, repo_on_path, urlencoded

PART = "login"
JOHN_LIST = Path("/usr/share/john/password.lst")   # Debian package john-data (provision/host-packages.txt)
LEGIT_ADDR, OWNER_ADDR, SINGLE_ADDR = "127.0.0.3", "127.0.0.4", "127.0.0.2"
MULTI_ADDRS = [f"127.0.0.{10 + i}" for i in range(8)]
SINGLE_THREADS = 4
PROBE_EVERY = 0.25          # seconds between the legitimate user's logins
OWNER_EVERY = 5.0           # seconds between the attacked owner's logins
HTTP_COMMON = 200           # most common list entries tried on the real password form
TARGET_ONE_ADDRESS = 10     # accepted tries per minute per account
TARGET_MANY_ADDRESSES = 15
TARGET_SLOWDOWN = 2.0       # legitimate median under attack, at most this times the baseline median
TIMING_PAIRS = 40
TARGET_TIMING_MS = 20       # unknown-vs-known: median of the paired differences, either way
TARGET_LEGIT_REFUSED = 0.10  # share of the legitimate user's logins answered 503 (busy) or 429 under attack


def common_passwords() -> list[str]:
    """John the Ripper's list, most common first (comment lines dropped)."""
    if not JOHN_LIST.is_file():
        raise RuntimeError(f"{JOHN_LIST} is missing: install Debian's john-data (make deps)")
    lines = JOHN_LIST.read_text(encoding="latin-1").splitlines()
    return [p for p in lines if p and not p.startswith("#!comment")]


def setup_users(app, timing_pairs: int) -> dict[str, str]:
    """Accounts with random passwords (username -> password): two victims, a legitimate user, a password
    changer, and the known users of the timing comparison."""
    from flask_migrate import upgrade

    from grader.service.models import User, db

    users = {n: secrets.token_urlsafe(12) for n in
             ["S2100001", "S2100002", "S2100003", "S2100009"] + [f"S22{i:05d}" for i in range(timing_pairs)]}
    with app.app_context():
        upgrade()
        for name, pw in users.items():
            u = User(username=name, name=f"Student {name}", role="student", student_number=name,
                     email=f"{name.lower()}@example.invalid")
            u.set_password(pw)
            db.session.add(u)
        db.session.commit()
    return users


def post_login(client: Client, csrf: str, username: str, password: str) -> tuple[int, float]:
    """One POST /login with a CSRF token the client already has: (status, seconds)."""
    body, ctype = urlencoded([("csrf_token", csrf), ("username", username), ("password", password)])
    t = time.monotonic()
    r = client.request("POST", "/login", body, {"Content-Type": ctype}, keep_cookies=False)
    return r.status, time.monotonic() - t


def fresh_login(port: int, addr: str, username: str, password: str, client: Client | None = None
                ) -> tuple[int, float]:
    """A login as a person does it (GET the form, POST it) from `addr`; (status, seconds of the POST).
    With `client`, that browser's cookies (its device cookie) go along; the session it gets is dropped."""
    c = client or Client(port, source=addr)
    c.cookies.pop("session", None)
    csrf = csrf_of(c.get("/login").text())
    status, seconds = post_login(c, csrf, username, password)
    if client is None:
        c.close()
    return status, seconds


class Loop(threading.Thread):
    """Call `step()` until `stop` is set (at most `limit` seconds), every `every` seconds or flat out."""

    def __init__(self, step, stop: threading.Event, every: float = 0.0, limit: float = 600):
        super().__init__(daemon=True)
        self.step, self.stop, self.every, self.limit = step, stop, every, limit

    def run(self) -> None:
        end = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < end:
            t = time.monotonic()
            self.step()
            if self.every:
                self.stop.wait(max(0.0, self.every - (time.monotonic() - t)))


def guess(port: int, victim: str, addrs: list[str], seconds: float, out) -> None:
    """The attacker, run as its own process (its CPU and GIL are not the measuring process's): one
    connection per entry of `addrs` guessing `victim`'s password flat out for `seconds`; puts the
    count of each answer status on the queue `out`."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def guesser(addr: str):
        c = Client(port, source=addr)
        csrf = csrf_of(c.get("/login").text())

        def step():
            status, _ = post_login(c, csrf, victim, secrets.token_urlsafe(9))
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        return step

    run_for([Loop(guesser(a), stop, limit=seconds + 5) for a in addrs], stop, seconds)
    out.put(statuses)


def run_for(threads: list[Loop], stop: threading.Event, seconds: float) -> None:
    """Start the loops, stop them after `seconds` and wait for them."""
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)


def attack(port: int, victim: str, addrs: list[str], seconds: float, legit: tuple[str, str],
           owner: tuple[str, str, Client] | None = None) -> dict:
    """Guessers on `addrs` against `victim` for `seconds`, the legitimate user probing meanwhile."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    attacker = ctx.Process(target=guess, args=(port, victim, addrs, seconds, out), daemon=True)
    stop = threading.Event()
    legit_lat, legit_bad = [], []

    def probe():
        status, s = fresh_login(port, LEGIT_ADDR, *legit)
        (legit_lat if status == 302 else legit_bad).append(s if status == 302 else status)

    owner_ok, owner_bad = [], []

    def owner_step():
        status, _ = fresh_login(port, OWNER_ADDR, owner[0], owner[1], client=owner[2])
        (owner_ok if status == 302 else owner_bad).append(status)

    threads = [Loop(probe, stop, PROBE_EVERY, seconds + 5)]
    if owner:
        threads.append(Loop(owner_step, stop, OWNER_EVERY, seconds + 5))
    t0 = time.monotonic()
    attacker.start()
    run_for(threads, stop, seconds)
    try:
        statuses = out.get(timeout=90)
    finally:
        attacker.join(10)
        if attacker.is_alive():
            attacker.kill()
    elapsed = time.monotonic() - t0
    accepted = statuses.get(401, 0) + statuses.get(302, 0)
    # an attack shorter than a minute counts as a whole minute (its first burst is not extrapolated)
    return {"seconds": round(elapsed, 1), "statuses": statuses, "accepted": accepted,
            "accepted_per_minute": round(accepted * 60 / max(60.0, elapsed), 1), "guesses": sum(statuses.values()),
            "legit": latency(legit_lat), "legit_refused": legit_bad,
            "owner_ok": len(owner_ok), "owner_refused": owner_bad[:10]}


def latency(samples: list[float]) -> dict:
    """Median and p95 in milliseconds."""
    if not samples:
        return {"n": 0, "median_ms": None, "p95_ms": None}
    s = sorted(samples)
    return {"n": len(s), "median_ms": round(statistics.median(s) * 1000, 1),
            "p95_ms": round(s[min(len(s) - 1, int(0.95 * len(s)))] * 1000, 1)}


def baseline(port: int, legit: tuple[str, str], seconds: float) -> dict:
    lat, bad = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, s = fresh_login(port, LEGIT_ADDR, *legit)
        (lat if status == 302 else bad).append(s if status == 302 else status)
        time.sleep(PROBE_EVERY)
    return dict(latency(lat), refused=bad[:10])


def timing(port: int, pairs: int = TIMING_PAIRS) -> dict:
    """Wrong-password logins to a known and an unknown name, alternated, each pair from its own address;
    the median of the pairs' differences (pairs taken close together cancel the host's load drift)."""
    known, unknown, diffs = [], [], []
    for i in range(pairs):
        addr = f"127.0.1.{i + 1}"
        order = [("known", f"S22{i:05d}"), ("unknown", f"S23{i:05d}")]
        got = {}
        for kind, name in (order if i % 2 == 0 else order[::-1]):
            status, s = fresh_login(port, addr, name, secrets.token_urlsafe(9))
            if status == 401:
                got[kind] = s
        if len(got) == 2:
            known.append(got["known"])
            unknown.append(got["unknown"])
            diffs.append(got["unknown"] - got["known"])
    diff = round(statistics.median(diffs) * 1000, 1) if diffs else None
    return {"known": latency(known), "unknown": latency(unknown), "pairs": len(diffs), "difference_ms": diff}


def derived_passwords(username: str) -> list[str]:
    """Passwords made of the user's own data, as people make them."""
    low = username.lower()
    return [username, low + "2026", "Student" + username[-3:] + "!", low + "@example", f"{low}{low}",
            "!" + username + "!", f"student-{low}", low[::-1] + "x9"]


def common_on_form(port: int, user: str, password: str, candidates: list[str]) -> dict:
    """Each candidate as the new password on the real password form: how many were accepted."""
    c = Client(port, source="127.0.0.5")
    if login(c, user, password).status != 302:
        raise RuntimeError(f"{user} could not log in to try the password form")
    csrf = csrf_of(c.get("/account/password").text())
    accepted, statuses = [], {}
    current = password
    for cand in candidates:
        body, ctype = urlencoded([("csrf_token", csrf), ("old", current), ("new", cand)])
        r = c.request("POST", "/account/password", body, {"Content-Type": ctype})
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.status == 302:
            accepted.append(cand)
            current = cand
            csrf = csrf_of(c.get("/account/password").text())
    c.close()
    return {"tried": len(candidates), "accepted": accepted, "statuses": statuses}


def common_in_process(app, candidates: list[str]) -> list[str]:
    """The candidates `password_problem` lets through (a user with unrelated data)."""
    from grader.service.passwords import password_problem

    with app.test_request_context():
        return [p for p in candidates if password_problem(p, username="S2100009", name="Student S2100009",
                                                          email="s2100009@example.invalid",
                                                          student_number="S2100009") is None]


def measure(attack_seconds: float = 60, baseline_seconds: float = 15, timing_pairs: int = TIMING_PAIRS,
            http_common: int = HTTP_COMMON, progress=print) -> dict:
    """Both attacks of `attack_seconds`, the timing pairs and the password form (`http_common` most common
    list entries); bounded: about 2 x attack_seconds + baseline_seconds + a minute."""
    repo_on_path()
    t0 = time.monotonic()
    sandbox, instance = new_sandbox("copylab-faults-login-")
    try:
        with in_process_app(instance) as app:
            users = setup_users(app, timing_pairs)
            common = common_passwords()
            with Server(sandbox, instance) as server:
                port = server.port
                legit = ("S2100003", users["S2100003"])
                base = baseline(port, legit, baseline_seconds)
                progress(f"login: baseline median {base['median_ms']} ms")
                one = attack(port, "S2100001", [SINGLE_ADDR] * SINGLE_THREADS, attack_seconds, legit)
                progress(f"login: one address: {one['accepted_per_minute']} tries/min accepted")
                owner_browser = Client(port, source=OWNER_ADDR)
                if login(owner_browser, "S2100002", users["S2100002"]).status != 302:
                    raise RuntimeError("the owner of S2100002 could not log in before the attack")
                many = attack(port, "S2100002", MULTI_ADDRS, attack_seconds, legit,
                              owner=("S2100002", users["S2100002"], owner_browser))
                progress(f"login: {len(MULTI_ADDRS)} addresses: {many['accepted_per_minute']} tries/min accepted")
                owner_browser.close()
                times = timing(port, timing_pairs)
                form = common_on_form(port, "S2100009", users["S2100009"],
                                      common[:http_common] + derived_passwords("S2100009"))
            exceptions = server.exceptions()
            everywhere = common_in_process(app, common)
        return report(base, one, many, times, form, everywhere, len(common), http_common, exceptions,
                      round(time.monotonic() - t0, 1))
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def _lat(d: dict) -> str:
    return f"median {d['median_ms']} ms, p95 {d['p95_ms']} ms ({d['n']} logins)"


def report(base, one, many, times, form, everywhere, listed, http_common, exceptions, elapsed) -> dict:
    def slowdown_ok(r: dict) -> bool:
        return bool(r["legit"]["n"]) and r["legit"]["median_ms"] <= TARGET_SLOWDOWN * base["median_ms"]

    legit_refused = len(one["legit_refused"]) + len(many["legit_refused"])
    legit_all = legit_refused + one["legit"]["n"] + many["legit"]["n"]

    figures = [
        Figure(PART, f"login tries accepted per minute on one account, attacker on one address "
               f"({SINGLE_THREADS} connections at full speed)", str(one["accepted_per_minute"]),
               f"<= {TARGET_ONE_ADDRESS}", one["accepted_per_minute"] <= TARGET_ONE_ADDRESS,
               f"{one['accepted']} of {one['guesses']} guesses in {one['seconds']} s; answers {one['statuses']}"),
        Figure(PART, f"login tries accepted per minute on one account, attackers on {len(MULTI_ADDRS)} addresses",
               str(many["accepted_per_minute"]), f"<= {TARGET_MANY_ADDRESSES}",
               many["accepted_per_minute"] <= TARGET_MANY_ADDRESSES,
               f"{many['accepted']} of {many['guesses']} guesses in {many['seconds']} s; answers {many['statuses']}"),
        Figure(PART, "/login for another user while one address attacks", _lat(one["legit"]),
               f"median <= {TARGET_SLOWDOWN:g}x baseline", slowdown_ok(one),
               f"unattacked baseline {_lat(base)}"),
        Figure(PART, f"/login for another user while {len(MULTI_ADDRS)} addresses attack", _lat(many["legit"]),
               f"median <= {TARGET_SLOWDOWN:g}x baseline", slowdown_ok(many),
               f"unattacked baseline {_lat(base)}"),
        Figure(PART, "the other user's logins refused while attacked (503 busy or 429)", f"{legit_refused}/{legit_all}",
               f"<= {TARGET_LEGIT_REFUSED:.0%}", legit_all > 0 and legit_refused <= TARGET_LEGIT_REFUSED * legit_all,
               "the hash slots are full while the first guesses of an attack are checked; "
               f"answers {sorted(set(one['legit_refused'] + many['legit_refused']))}"),
        zero(PART, "logins of the attacked account's owner from their earlier browser locked out (429)",
             many["owner_refused"].count(429),
             f"{many['owner_ok']} logged in, {many['owner_refused'].count(503)} answered 503 busy (try again); "
             "the device cookie of an earlier login"),
        Figure(PART, "unknown minus known user name: median difference of wrong-password login times",
               f"{times['difference_ms']} ms", f"within ±{TARGET_TIMING_MS} ms",
               times["difference_ms"] is not None and abs(times["difference_ms"]) <= TARGET_TIMING_MS,
               f"{times['pairs']} pairs; known {_lat(times['known'])}; unknown {_lat(times['unknown'])}"),
        zero(PART, "common and user-derived passwords accepted by the password form", len(form["accepted"]),
             f"accepted {form['accepted'][:5]}" if form["accepted"] else
             f"the {http_common} most common of John the Ripper's list and {form['tried'] - http_common} made of "
             "the user's own data"),
        zero(PART, "entries of John the Ripper's common-password list the policy accepts", len(everywhere),
             f"accepted {everywhere[:5]}" if everywhere else f"all {listed} entries"),
        zero(PART, "server errors (HTTP 5xx other than 503 busy, or tracebacks)",
             sum(n for r in (one, many) for s, n in r["statuses"].items() if (s >= 500 and s != 503) or s < 0)
             + len(exceptions), "; ".join(exceptions[:2])),
    ]
    timed = [f.name for f in figures if f.name.startswith(("/login for", "unknown minus known"))]
    return {"figures": [f.as_dict() for f in figures], "timed_figures": timed, "elapsed_s": elapsed, "baseline": base,
            "one_address": one, "many_addresses": many, "timing": times, "password_form": form,
            "policy_accepts_from_list": everywhere[:20]}
