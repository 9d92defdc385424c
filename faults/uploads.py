"""Hostile uploads against the real web process: generated archives and forms, each of which must be
refused with a message that says what is wrong, without a server error, without anything stored and
without a file written outside the store.

The service runs as it does in production (`python -m flask --app grader serve`, waitress, SQLite) on a
private instance folder in a temporary sandbox, and is spoken to over HTTP on 127.0.0.1 only. Cases are
generated deterministically from a seed; a few well-formed control uploads are mixed in, so that a
harness that cannot upload at all does not pass for a service that refuses everything.

This module sends the cases, judges each answer and checks the store, the database and the sandbox
afterwards; the cases are faults/upload_cases.py (their archives faults/upload_archives.py), the
sandbox, server and HTTP client support/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from faults.report import ratio, zero
from faults.upload_archives import Bombs
from faults.upload_cases import Case, make_case
from support.http import (Client, location_path, login, multipart, page_messages, reply_message, session_csrf,
                          urlencoded)
from support.service import (PASSWORDS, ServiceProcesses, add_token, in_process_app, lab_files, new_sandbox,
                             row_changes, seed, table_rows)

REPO = Path(__file__).resolve().parents[1]
PART = "uploads"
SERVICE_FILES = re.compile(r"^(config\.py|(grader|queue)\.sqlite3(-wal|-shm|-journal)?)$")


# --------------------------------------------------------------------------------------------------
# Sending cases
# --------------------------------------------------------------------------------------------------

class Callers:
    """One worker thread's callers: the API (no cookies), alice and the teacher logged in on the web,
    an anonymous visitor; each web caller with the CSRF token of its session."""

    WEB_PATHS = {"password": "/account/password", "cohort": "/instructor/cohorts", "login": "/login"}

    def __init__(self, port: int, ids: dict):
        self.ids = ids
        self.api = Client(port)
        self.alice, self.teacher, self.anon = Client(port), Client(port), Client(port)
        for c, user in ((self.alice, "alice"), (self.teacher, "teacher")):
            r = login(c, user, PASSWORDS[user])
            if r.status != 302:
                raise RuntimeError(f"could not log in as {user}: {r.status} {reply_message(r)}")
        self.csrf = {id(c): session_csrf(c) for c in (self.alice, self.teacher, self.anon)}

    def for_channel(self, channel: str) -> tuple[Client, str]:
        """The caller and URL of a channel."""
        a = self.ids
        if channel == "web":
            return self.alice, f"/assignments/{a['assignment']}/submit"
        if channel == "password":
            return self.alice, self.WEB_PATHS["password"]
        if channel == "login":
            return self.anon, "/login"
        paths = {"roster": f"/instructor/cohorts/{a['cohort']}/roster",
                 "assignment": f"/instructor/cohorts/{a['empty_cohort']}/assignments",
                 "extension": f"/instructor/assignments/{a['assignment']}/extensions",
                 "cohort": "/instructor/cohorts"}
        return self.teacher, paths[channel]

    def close(self) -> None:
        """Close every caller's connection."""
        for c in (self.api, self.alice, self.teacher, self.anon):
            c.close()

    @property
    def requests(self) -> int:
        """HTTP requests sent by this worker's callers."""
        return sum(c.requests for c in (self.api, self.alice, self.teacher, self.anon))


def body_of(case: Case, csrf: str | None) -> tuple[bytes, str]:
    """The request body of a case (with `csrf` as the first field when not None)."""
    if case.raw is not None:
        return case.raw
    parts = ([("csrf_token", None, csrf)] if csrf is not None else []) + list(case.parts)
    if case.encoding == "urlencoded":
        return urlencoded([(name, data) for name, _fn, data in parts])
    return multipart(parts)


def send(case: Case, callers: Callers, tokens: dict[str, str]) -> dict:
    """Send one case; returns what came back: status, message, where a redirect led, a receipt id."""
    if case.channel == "api":
        headers = {}
        if case.auth == "token":
            headers["Authorization"] = f"Bearer {tokens['alice']}"
        elif case.auth is not None:
            headers["Authorization"] = case.auth
        body, ctype = body_of(case, None)
        headers["Content-Type"] = ctype
        r = callers.api.request("POST", case.path or "/api/v1/labs/lab1/submissions", body, headers)
        j = r.json() or {}
        receipt = j.get("id") if r.status == 201 else None
        return {"status": r.status, "message": reply_message(r), "receipt": receipt, "error": r.error}
    client, path = callers.for_channel(case.channel)
    own = callers.csrf[id(client)]
    csrf = {"valid": own, "missing": None, "forged": "IjAxMjM0NTY3ODlhYmNkZWYi.ZZZZZZ.forged",
            "foreign": callers.csrf[id(callers.anon if client is not callers.anon else callers.alice)]}[case.csrf]
    body, ctype = body_of(case, csrf)
    r = client.request("POST", case.path or path, body, {"Content-Type": ctype})
    out = {"status": r.status, "message": reply_message(r), "receipt": None, "error": r.error, "flash": ""}
    if r.status in (302, 303):
        target = location_path(r)
        out["location"] = target
        m = re.match(r"^/submissions/(\d+)$", target)
        if m:
            out["receipt"] = int(m.group(1))
        page = client.get(target) if target else None
        if page is not None:
            errors, others = page_messages(page.text())
            out["message"] = " | ".join(errors)
            out["flash"] = " | ".join(others)
            if page.status >= 500 or page.status < 0:
                out["follow_status"] = page.status
    return out


def judge(case: Case, out: dict) -> dict:
    """Classify a reply: server error, refused with a clear message, refused unclearly, or accepted."""
    status = out["status"]
    server_error = status < 0 or status >= 500 or out.get("follow_status", 0) >= 500 or \
        out.get("follow_status", 0) < 0
    msg = out["message"] or ""
    said = any(k.lower() in msg.lower() for k in case.expect) if case.expect else False
    refused_status = 400 <= status < 500 or (case.channel != "api" and status in (302, 303) and bool(msg)
                                             and not out.get("receipt"))
    accepted = bool(out.get("receipt")) or (case.channel != "api" and status in (302, 303) and not msg)
    return {"server_error": server_error, "refused": refused_status and said and not server_error,
            "unclear": refused_status and not said, "accepted": accepted}


def run_cases(n: int, make, port: int, ids: dict, tokens: dict, workers: int, progress
              ) -> tuple[list[Case], list[dict], int]:
    """Make and send cases 0..n-1 (make(i) -> Case), `workers` callers in parallel, case i by worker
    i % workers; progress every ~250 cases. Returns the cases (without their bodies), what came back
    and how many HTTP requests were sent."""
    cases: list[Case | None] = [None] * n
    results: list[dict | None] = [None] * n
    counts = {"done": 0, "requests": 0}
    lock = threading.Lock()
    failures: list[BaseException] = []
    t0 = time.monotonic()

    def work(k: int) -> None:
        try:
            callers = Callers(port, ids)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failures.append(e)
            return
        try:
            for idx in range(k, n, workers):
                case = make(idx)
                out = send(case, callers, tokens)
                out.update(judge(case, out))
                cases[idx], results[idx] = dataclasses.replace(case, parts=[], raw=None), out
                with lock:
                    counts["done"] += 1
                    if counts["done"] % 250 == 0 or counts["done"] == n:
                        progress(f"uploads: {counts['done']}/{n} cases sent ({time.monotonic() - t0:.0f}s)")
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failures.append(e)
        finally:
            with lock:
                counts["requests"] += callers.requests
            callers.close()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return cases, results, counts["requests"]


# --------------------------------------------------------------------------------------------------
# After the run: what is in the store, what changed in the database, what escaped
# --------------------------------------------------------------------------------------------------

def file_listing(root: Path) -> set[str]:
    """Every file and folder under `root`, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def marker_hits(roots: list[Path], needle: str, shallow: list[Path]) -> list[str]:
    """Paths whose name contains `needle`: a full walk of `roots` (not following links), and the entries
    directly in each of `shallow`."""
    hits = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            for name in dirnames + filenames:
                if needle in name:
                    hits.add(os.path.join(dirpath, name))
    for folder in shallow:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if needle in entry.name:
                    hits.add(entry.path)
    return sorted(hits)


def outside_files(sandbox: Path, instance: Path, before: set[str]) -> list[str]:
    """New files in the sandbox that are neither in the store nor the service's own (database, queue,
    config, the server's log)."""
    out = []
    for rel in sorted(file_listing(sandbox) - before):
        parts = Path(rel).parts
        if re.fullmatch(r"web\d+\.log", rel) or parts == ("instance",):
            continue
        if parts[0] == "instance" and len(parts) > 1:
            if parts[1] == "store" or (len(parts) == 2 and SERVICE_FILES.match(parts[1])):
                continue
        out.append(rel)
    return out


def store_check(app, control_receipts: set[int]) -> dict:
    """Submissions rows that no control upload produced, and store entries that belong to no submission
    (left-over temp folders, stray files)."""
    from grader.service.models import Submission, db

    with app.app_context():
        subs = db.session.execute(db.select(Submission.id, Submission.storage_key, Submission.files_json)).all()
        store_dir = Path(app.config["STORE_DIR"])
    keys = {key: set(json.loads(files)) | {".upload"} for _id, key, files in subs}
    stray = []
    for p in sorted(store_dir.rglob("*")) if store_dir.exists() else []:
        rel = p.relative_to(store_dir)
        parts = rel.parts
        if p.is_dir() and not p.is_symlink() and (len(parts) <= 2 and parts[0] == "submissions"
                                                 or "/".join(parts) in keys):
            continue
        key = "/".join(parts[:-1])
        if p.is_file() and not p.is_symlink() and key in keys and parts[-1] in keys[key]:
            continue
        if parts[0] == "artifacts":
            continue
        stray.append(str(rel))
    hostile_rows = sorted(i for i, _k, _f in subs if i not in control_receipts)
    return {"submissions": len(subs), "hostile_rows": hostile_rows, "stray_store_entries": stray}


# --------------------------------------------------------------------------------------------------
# The part
# --------------------------------------------------------------------------------------------------

def seed_instance(app) -> tuple[dict, dict]:
    """Seed like the service tests (teacher, alice and bob in c1 with lab1) plus a cohort without
    assignments (the target of the lab-settings forms); API tokens for alice: valid, revoked, expired."""
    from grader.service.models import Cohort, db

    ids = seed(app, deadline_days=30)
    with app.app_context():
        c = Cohort(name="faults-empty")
        db.session.add(c)
        db.session.commit()
        ids["empty_cohort"] = c.id
    tokens = {"alice": add_token(app, ids["alice"]), "revoked": add_token(app, ids["alice"], revoked=True),
              "expired": add_token(app, ids["alice"], expired=True)}
    return ids, tokens


def summarise(cases: list[Case], results: list[dict]) -> dict:
    """Per category: cases, refused with a clear message, refused unclearly, accepted, server errors."""
    out: dict[str, dict] = {}
    for c, r in zip(cases, results):
        s = out.setdefault(c.category, {"cases": 0, "refused": 0, "unclear": 0, "accepted": 0, "server_errors": 0})
        s["cases"] += 1
        s["refused"] += r["refused"]
        s["unclear"] += r["unclear"]
        s["accepted"] += r["accepted"]
        s["server_errors"] += r["server_error"]
    return out


def failing(cases: list[Case], results: list[dict], pred, limit: int = 8) -> list[dict]:
    """The first `limit` cases for which pred(case, result) holds, as (category, what, status, message)."""
    out = []
    for c, r in zip(cases, results):
        if pred(c, r):
            out.append({"case": c.i, "category": c.category, "channel": c.channel, "what": c.what[:120],
                        "status": r["status"], "message": (r["message"] or r.get("error") or "")[:200],
                        "expected": list(c.expect)})
            if len(out) >= limit:
                break
    return out


def brief(items: list[dict], n: int = 3) -> str:
    """A figure note from the first failing cases."""
    return "; ".join(f"#{x['case']} {x['category']}/{x['channel']} {x['what'][:60]} -> {x['status']} "
                     f"{x['message'][:80]!r}" for x in items[:n])


def measure(n: int = 2000, progress=print, seed: int = 20240601, workers: int = 3) -> dict:
    """Generate `n` hostile upload and form cases, send them to a real web process over 127.0.0.1, and
    count server errors, escapes, refusals with a clear message and anything hostile stored."""
    t0 = time.monotonic()
    run_id = secrets.token_hex(4)
    sandbox, instance = new_sandbox("copylab-faults-uploads-")
    try:
        with in_process_app(instance) as app:
            from flask_migrate import upgrade

            with app.app_context():
                upgrade()
            ids, tokens = seed_instance(app)
            skip = {"api_tokens": {"last_used_at"}}
            rows_before = table_rows(app, skip)
        bombs, good = Bombs(), lab_files()

        def make(i: int) -> Case:
            return make_case(i, n, seed, run_id, bombs, tokens, good)
        listing_before = file_listing(sandbox)
        with ServiceProcesses(instance, progress=progress, logs=sandbox) as server:
            progress(f"uploads: {n} cases against the web process on 127.0.0.1:{server.port}")
            cases, results, requests = run_cases(n, make, server.port, ids, tokens, workers, progress)
        exceptions = server.exceptions()
        with in_process_app(instance) as app:
            control_receipts = {r["receipt"] for c, r in zip(cases, results) if c.control and r["receipt"]}
            store = store_check(app, control_receipts)
            changes = row_changes(rows_before, table_rows(app, skip))
        hits = marker_hits([sandbox, Path(tempfile.gettempdir())], f"copylab-faults-{run_id}",
                           [REPO, REPO.parent, Path.home(), Path("/")])
        outside = outside_files(sandbox, instance, listing_before)
        return report(cases, results, store, changes, hits, outside, exceptions,
                      {"n": n, "seed": seed, "run_id": run_id, "workers": workers, "requests": requests,
                       "elapsed_s": round(time.monotonic() - t0, 1)})
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def report(cases, results, store, changes, hits, outside, exceptions, meta) -> dict:
    """The part's figures and details from the results and the checks after the run."""
    hostile = [(c, r) for c, r in zip(cases, results) if not c.control]
    controls = [(c, r) for c, r in zip(cases, results) if c.control]
    errors = failing(cases, results, lambda c, r: r["server_error"])
    not_refused = failing(cases, results, lambda c, r: not c.control and not r["refused"])
    controls_bad = failing(cases, results, lambda c, r: c.control and not r["accepted"])
    refused = sum(r["refused"] for _c, r in hostile)
    # rows changed by hostile forms: everything but the control submissions and their jobs, and the
    # login throttle's counts of the hostile logins' failures (digests, nothing the forms sent)
    table_changes = {t: v for t, v in changes.items() if t not in ("submissions", "jobs", "login_throttle")}
    stored_hostile = len(store["hostile_rows"]) + len(store["stray_store_entries"]) + \
        sum(v["added"] + v["removed"] + v["changed"] for v in table_changes.values())
    escapes = len(hits) + len(outside)
    figures = [
        zero(PART, "server errors (HTTP 5xx or dropped connection)", sum(r["server_error"] for r in results),
             brief(errors) + (f"; server log: {exceptions[0]}" if exceptions else "")),
        zero(PART, "files written outside the store", escapes, "; ".join((hits + outside)[:3])),
        ratio(PART, "hostile cases refused with a clear message", refused, len(hostile),
              brief(not_refused) if refused < len(hostile) else
              f"{len(hostile)} cases in {len({c.category for c, _r in hostile})} categories; web forms "
              "answer 303 and show the refusal as an error message on the next page"),
        zero(PART, "hostile cases stored", stored_hostile,
             f"submissions {store['hostile_rows'][:5]}, store {store['stray_store_entries'][:3]}, "
             f"tables {table_changes}" if stored_hostile else ""),
        ratio(PART, "well-formed control uploads accepted", sum(r["accepted"] for _c, r in controls), len(controls),
              brief(controls_bad)),
    ]
    return {
        "figures": [f.as_dict() for f in figures],
        **meta,
        "categories": summarise(cases, results),
        "server_errors": errors, "not_refused": not_refused, "controls_refused": controls_bad,
        "server_log_exceptions": exceptions, "escaped_markers": hits[:20], "files_outside_store": outside[:20],
        "store": {"submissions": store["submissions"], "hostile_rows": store["hostile_rows"][:20],
                  "stray_store_entries": store["stray_store_entries"][:20]},
        "table_changes": table_changes,
    }

