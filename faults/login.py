"""Logins under attack, against the real web process (`python -m flask --app grader serve`, 8 threads)
on a private instance folder, spoken to over loopback addresses only (127.0.0.0/8: each source
address is a client the server tells apart). The attacks run twice: straight to `serve`, and through
the documented deployment (Debian's nginx with the site file `flask --app grader nginx-site` renders,
HTTPS, its per-address login rate limit, `serve` on a Unix socket with PROXY_FIX_HOPS = 1 so the app
sees nginx's client addresses), each against its own unattacked baseline and its own instance.

- An attacker guessing one account's password at full speed (4 connections) from one address, then
  attackers on 8 addresses guessing another account: login tries the service accepted (answered 401
  or 302, not 429/503) per minute per account, while another user logs in every 0.25 s, each time
  from the next of 32 addresses (other people: no one address exceeds nginx's per-address limit),
  their /login latency against an unattacked baseline, and, during the second attack,
  the attacked account's owner logs in from the browser they used before (its device cookie).
- Unknown against known user names: wrong-password logins, alternated, one client address per pair.
- Common passwords: the most common entries of John the Ripper's list (Debian's john-data, compiled
  independently of the zxcvbn lists the policy uses) and passwords made of the user's own data, tried
  on the real password form; the whole list through the policy function in this process.
"""
from __future__ import annotations

import itertools
import multiprocessing
import re
import secrets
import shutil
import statistics
import threading
import time
from pathlib import Path

from faults.report import Figure, zero
from grader.vm.qemu import free_port
from support.http import Client, csrf_of, login, urlencoded
from support.service import LocalNginx, ServiceProcesses, in_process_app, new_sandbox, self_signed_cert, tracebacks

PART = "login"
JOHN_LIST = Path("/usr/share/john/password.lst")   # Debian package john-data (provision/host-packages.txt)
OWNER_ADDR, SINGLE_ADDR = "127.0.0.4", "127.0.0.2"
LEGIT_ADDRS = [f"127.0.2.{i}" for i in range(1, 33)]
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


def post_login(client: Client, csrf: str, username: str, password: str, keep_cookies: bool = False
               ) -> tuple[int, float]:
    """One POST /login with a CSRF token the client already has: (status, seconds)."""
    body, ctype = urlencoded([("csrf_token", csrf), ("username", username), ("password", password)])
    headers = {"Content-Type": ctype}
    if client.tls:   # over HTTPS, Flask-WTF wants a Referer of this site, as a browser sends
        headers["Referer"] = f"https://127.0.0.1:{client.port}/login"
    t = time.monotonic()
    r = client.request("POST", "/login", body, headers, keep_cookies=keep_cookies)
    return r.status, time.monotonic() - t


def fresh_login(port: int, addr: str, username: str, password: str, client: Client | None = None,
                tls=None) -> tuple[int, float]:
    """A login as a person does it (GET the form, POST it) from `addr` (over HTTPS with `tls`); (status,
    seconds of the POST). With `client`, that browser's cookies (its device cookie) go along; the session
    it gets is dropped."""
    c = client or Client(port, source=addr, tls=tls)
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


def guess(port: int, victim: str, addrs: list[str], seconds: float, out, tls=None) -> None:
    """The attacker, run as its own process (its CPU and GIL are not the measuring process's): one
    connection per entry of `addrs` guessing `victim`'s password flat out for `seconds`; puts the
    count of each answer status on the queue `out`."""
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def guesser(addr: str):
        c = Client(port, source=addr, tls=tls)
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
           owner: tuple[str, str, Client] | None = None, tls=None) -> dict:
    """Guessers on `addrs` against `victim` for `seconds`, the legitimate user probing meanwhile."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    attacker = ctx.Process(target=guess, args=(port, victim, addrs, seconds, out, tls), daemon=True)
    stop = threading.Event()
    legit_lat, legit_bad = [], []
    legit_addrs = itertools.cycle(LEGIT_ADDRS)

    def probe():
        status, s = fresh_login(port, next(legit_addrs), *legit, tls=tls)
        (legit_lat if status == 302 else legit_bad).append(s if status == 302 else status)

    owner_ok, owner_bad = [], []

    def owner_step():
        status, _ = fresh_login(port, OWNER_ADDR, owner[0], owner[1], client=owner[2], tls=tls)
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


def baseline(port: int, legit: tuple[str, str], seconds: float, tls=None) -> dict:
    lat, bad = [], []
    end = time.monotonic() + seconds
    for addr in itertools.cycle(LEGIT_ADDRS):
        if time.monotonic() >= end:
            break
        status, s = fresh_login(port, addr, *legit, tls=tls)
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


def attacks(port: int, users: dict[str, str], attack_seconds: float, baseline_seconds: float, where: str,
            progress, tls=None) -> dict:
    """On one server (`port`, HTTPS with `tls`): the unattacked baseline, the attack from one address, then the
    attack from several addresses while the attacked account's owner logs in from their earlier browser."""
    legit = ("S2100003", users["S2100003"])
    base = baseline(port, legit, baseline_seconds, tls)
    progress(f"login: {where}: baseline median {base['median_ms']} ms")
    one = attack(port, "S2100001", [SINGLE_ADDR] * SINGLE_THREADS, attack_seconds, legit, tls=tls)
    progress(f"login: {where}: one address: {one['accepted_per_minute']} tries/min accepted, "
             f"other user median {one['legit']['median_ms']} ms")
    owner_browser = Client(port, source=OWNER_ADDR, tls=tls)
    csrf = csrf_of(owner_browser.get("/login").text())
    if post_login(owner_browser, csrf, "S2100002", users["S2100002"], keep_cookies=True)[0] != 302:
        raise RuntimeError(f"the owner of S2100002 could not log in {where} before the attack")
    many = attack(port, "S2100002", MULTI_ADDRS, attack_seconds, legit,
                  owner=("S2100002", users["S2100002"], owner_browser), tls=tls)
    progress(f"login: {where}: {len(MULTI_ADDRS)} addresses: {many['accepted_per_minute']} tries/min accepted, "
             f"other user median {many['legit']['median_ms']} ms")
    owner_browser.close()
    return {"baseline": base, "one_address": one, "many_addresses": many}


def posts_reaching_app(web_log: str, addrs: list[str]) -> int:
    """POST /login requests from `addrs` in the web process's access log (those nginx let through)."""
    who = "|".join(re.escape(a) for a in set(addrs))
    return len(re.findall(rf"copylab\.access INFO (?:{who}) \S+ \S+ POST /login ", web_log))


def through_nginx(folder: Path, attack_seconds: float, baseline_seconds: float, progress) -> dict:
    """The attacks through the documented deployment: nginx (HTTPS, the site file of `nginx-site` with its
    default login limit) in front of `serve` on a Unix socket, on an instance of its own."""
    from faults.slowclients import timed_requests, tls_context

    sock = folder / "run" / "web.sock"
    svc = ServiceProcesses(folder / "instance", None, progress, settings={
        "SECRET_KEY": secrets.token_urlsafe(48), "PROXY_FIX_HOPS": 1, "SERVE_UNIX_SOCKET": str(sock)})
    sock.parent.mkdir()
    with in_process_app(svc.instance) as app:
        users = setup_users(app, 0)
    cert, key = self_signed_cert(folder)
    tls = tls_context(cert)
    port = free_port()
    site = svc.flask("nginx-site", "--server-name", "localhost", "--cert", str(cert), "--key", str(key),
                     "--https-port", str(port), "--plain-http", "refuse", "--listen-address", "127.0.0.1")
    nginx = LocalNginx(folder / "nginx", site, [port])
    try:
        nginx.start()
        svc.start_web(answers=lambda: timed_requests(port, 1, tls, 2)["failures"] == 0)
        r = attacks(port, users, attack_seconds, baseline_seconds, "through nginx", progress, tls)
    finally:
        nginx.stop()
        svc.stop()
    log = svc.logs("web")
    r["exceptions"] = tracebacks(log)
    r["one_address"]["reached_app"] = posts_reaching_app(log, [SINGLE_ADDR])
    r["many_addresses"]["reached_app"] = posts_reaching_app(log, MULTI_ADDRS)
    rate, burst = re.search(r"rate=(\d+)r/m", site).group(1), re.search(r"burst=(\d+)", site).group(1)
    r["login_limit"] = f"{rate} login attempts a minute after a burst of {burst} per address"
    return r


def measure(attack_seconds: float = 60, baseline_seconds: float = 15, timing_pairs: int = TIMING_PAIRS,
            http_common: int = HTTP_COMMON, progress=print) -> dict:
    """Both attacks of `attack_seconds` straight to `serve` and through nginx, the timing pairs and the password
    form (`http_common` most common list entries); bounded: about 4 x attack_seconds + 2 x baseline_seconds + two
    minutes."""
    t0 = time.monotonic()
    sandbox, instance = new_sandbox("copylab-faults-login-")
    try:
        with in_process_app(instance) as app:
            users = setup_users(app, timing_pairs)
            common = common_passwords()
            with ServiceProcesses(instance, progress=progress, logs=sandbox) as server:
                direct = attacks(server.port, users, attack_seconds, baseline_seconds, "straight to serve", progress)
                times = timing(server.port, timing_pairs)
                form = common_on_form(server.port, "S2100009", users["S2100009"],
                                      common[:http_common] + derived_passwords("S2100009"))
            direct["exceptions"] = server.exceptions()
            everywhere = common_in_process(app, common)
        proxied = through_nginx(sandbox / "nginx-deployment", attack_seconds, baseline_seconds, progress)
        return report(direct, proxied, times, form, everywhere, len(common), http_common,
                      round(time.monotonic() - t0, 1))
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def _lat(d: dict) -> str:
    return f"median {d['median_ms']} ms, p95 {d['p95_ms']} ms ({d['n']} logins)"


def attack_figures(r: dict, where: str, targets: bool) -> list[Figure]:
    """The figures of one server's attacks (`where`: straight to `serve` or through nginx). Without `targets`
    the other user's latency is reported for comparison only."""
    base, one, many = r["baseline"], r["one_address"], r["many_addresses"]

    def passed(a: dict) -> str:
        return f"; {a['reached_app']} reached the web process" if "reached_app" in a else ""

    def slowed(a: dict, attackers: str) -> Figure:
        name = f"/login for another user while {attackers}, {where}"
        if not targets:
            return Figure(PART, name, _lat(a["legit"]), "", None,
                          f"for comparison without a proxy: unattacked baseline {_lat(base)}; the documented "
                          "deployment is behind nginx, which refuses the flood before it reaches Python")
        ok = bool(a["legit"]["n"]) and a["legit"]["median_ms"] <= TARGET_SLOWDOWN * base["median_ms"]
        return Figure(PART, name, _lat(a["legit"]), f"median <= {TARGET_SLOWDOWN:g}x baseline", ok,
                      f"unattacked baseline {_lat(base)}")

    legit_refused = len(one["legit_refused"]) + len(many["legit_refused"])
    legit_all = legit_refused + one["legit"]["n"] + many["legit"]["n"]
    return [
        Figure(PART, f"login tries accepted per minute on one account, attacker on one address "
               f"({SINGLE_THREADS} connections at full speed), {where}", str(one["accepted_per_minute"]),
               f"<= {TARGET_ONE_ADDRESS}", one["accepted_per_minute"] <= TARGET_ONE_ADDRESS,
               f"{one['accepted']} of {one['guesses']} guesses in {one['seconds']} s{passed(one)}; "
               f"answers {one['statuses']}"),
        Figure(PART, f"login tries accepted per minute on one account, attackers on {len(MULTI_ADDRS)} addresses, "
               f"{where}", str(many["accepted_per_minute"]), f"<= {TARGET_MANY_ADDRESSES}",
               many["accepted_per_minute"] <= TARGET_MANY_ADDRESSES,
               f"{many['accepted']} of {many['guesses']} guesses in {many['seconds']} s{passed(many)}; "
               f"answers {many['statuses']}"),
        slowed(one, "one address attacks"),
        slowed(many, f"{len(MULTI_ADDRS)} addresses attack"),
        Figure(PART, f"the other user's logins refused while attacked (503 busy or 429), {where}",
               f"{legit_refused}/{legit_all}", f"<= {TARGET_LEGIT_REFUSED:.0%}",
               legit_all > 0 and legit_refused <= TARGET_LEGIT_REFUSED * legit_all,
               "the hash slots are full while the first guesses of an attack are checked; "
               f"answers {sorted(set(one['legit_refused'] + many['legit_refused']))}"),
        zero(PART, f"logins of the attacked account's owner from their earlier browser locked out (429), {where}",
             many["owner_refused"].count(429),
             f"{many['owner_ok']} logged in, {many['owner_refused'].count(503)} answered 503 busy (try again); "
             "the device cookie of an earlier login"),
        zero(PART, f"server errors (HTTP 5xx other than 503 busy, or tracebacks), {where}",
             sum(n for a in (one, many) for s, n in a["statuses"].items() if (s >= 500 and s != 503) or s < 0)
             + len(r["exceptions"]), "; ".join(r["exceptions"][:2])),
    ]


def report(direct, proxied, times, form, everywhere, listed, http_common, elapsed) -> dict:
    figures = attack_figures(proxied, f"through nginx ({proxied['login_limit']})", targets=True)
    figures += attack_figures(direct, "straight to `serve`", targets=False)
    figures += [
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
    ]
    timed = [f.name for f in figures if f.target and f.name.startswith(("/login for", "unknown minus known"))]
    return {"figures": [f.as_dict() for f in figures], "timed_figures": timed, "elapsed_s": elapsed,
            "direct": direct, "nginx": proxied, "timing": times, "password_form": form,
            "policy_accepts_from_list": everywhere[:20]}
