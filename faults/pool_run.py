"""Parts ``kernel``, ``user`` and ``restarts``: one grader service (web and worker processes, a pool of
QEMU lab VMs from the golden image) grades the fault submissions interleaved with correct ones, in
rounds: one fault per pool VM, then one correct submission per pool VM, so that every fault is
followed on its VM by a correct job. Meanwhile a chaos thread SIGKILLs the worker, the web process
and QEMU at random points of grading jobs and restarts what it killed (the worker's pool replaces a
killed QEMU by itself).

Everything is on this machine: the service on 127.0.0.1, the VMs on QEMU's user-mode network.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from faults import submissions as subs
from faults.report import Figure, ratio, zero
from support.http import multipart
from support.service import ServiceProcesses

FINAL = ("done", "failed", "superseded")


class Clients:
    """Students' hand-ins over HTTP, retried while the web process is down (as `make handin` users do)."""

    def __init__(self, svc: ServiceProcesses):
        self.svc = svc
        self.receipts: list[dict] = []      # every receipt a client received
        self.retries = 0

    def submit(self, username: str, files: dict[str, str], label: str, deadline_s: float = 180) -> dict:
        token = self.svc.token(username)
        body, ctype = multipart([(n, n, t.encode()) for n, t in files.items()])
        t0 = time.monotonic()
        while True:
            wait = 1.0
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.svc.port, timeout=30)
                c.request("POST", "/api/v1/labs/lab1/submissions", body=body,
                          headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"})
                r = c.getresponse()
                data = r.read()
                c.close()
                if r.status == 201:
                    receipt = dict(json.loads(data), label=label, username=username)
                    self.receipts.append(receipt)
                    return receipt
                if r.status == 429:   # the cooldown after a hand-in stored just before a kill of the web
                    wait = float(r.getheader("Retry-After") or 1)
                elif r.status < 500:
                    raise RuntimeError(f"{label}: the service refused the hand-in: {r.status} {data[:300]!r}")
            except (OSError, http.client.HTTPException):
                pass
            self.retries += 1
            if time.monotonic() - t0 > deadline_s:
                raise RuntimeError(f"{label}: no receipt within {deadline_s:.0f}s")
            time.sleep(wait)


class Chaos(threading.Thread):
    """Kills from ``plan`` (a list of "worker", "web", "qemu") at random points of grading jobs."""

    def __init__(self, svc: ServiceProcesses, plan: list[str], rng: random.Random, progress,
                 expected_s: float = 600):
        super().__init__(daemon=True, name="chaos")
        self.svc, self.plan, self.rng, self.progress = svc, list(plan), rng, progress
        # kills spread over the whole batch: the mean gap is the batch's expected length per kill
        self.gap = max(15.0, expected_s / max(1, len(plan)) - 40)
        self.events: list[dict] = []
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()      # held while a process is down and being restarted
        self.leaked_after_worker_kill = 0

    def running_jobs(self) -> list[tuple[int, str]]:
        return [(j, p) for j, p in self.svc.db("SELECT id, phase FROM jobs WHERE state='running'")
                if p and p.startswith("grading on ")]

    def run(self) -> None:
        for target in self.plan:
            if self.stop_flag.wait(self.rng.uniform(0.5, 1.5) * self.gap):
                return
            if target in ("worker", "qemu"):
                while not self.running_jobs():
                    if self.stop_flag.wait(1):
                        return
                # a random point of the grading run (~70-90 s under TCG)
                if self.stop_flag.wait(self.rng.uniform(5, 80)):
                    return
                running = self.running_jobs()
                if not running:
                    continue
                job, phase = self.rng.choice(running)
                ev = {"target": target, "job": job, "at": time.time(), "phase": phase}
                if target == "worker":
                    self._kill_worker(ev)
                else:
                    self._kill_qemu(ev, phase.rsplit(" ", 1)[1])
            else:
                ev = {"target": "web", "at": time.time()}
                with self.lock:
                    self.svc.kill_web()
                    time.sleep(1)
                    ev["recover_s"] = 1 + self.svc.start_web()
            self.events.append(ev)
            self.progress(f"chaos: killed {target}" + (f" during job {ev.get('job')} ({ev.get('phase')})"
                                                       if ev.get("job") else ""))

    def _kill_worker(self, ev: dict) -> None:
        with self.lock:
            self.svc.kill_worker()
            deadline = time.monotonic() + 15
            while self.svc.qemu_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            left = self.svc.qemu_pids()
            self.leaked_after_worker_kill += len(left)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            time.sleep(1)
            self.svc.start_worker()

    def _kill_qemu(self, ev: dict, vm: str) -> None:
        pids = [int(x) for x in os.popen(f"pgrep -f '{self.svc.instance}/vms/{vm}/'").read().split()]
        ev["qemu_pids"] = pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)


def job_rows(svc: ServiceProcesses) -> list[dict]:
    rows = svc.db("SELECT j.id, j.submission_id, u.username, j.state, j.attempts, j.started_at, j.finished_at, "
                  "j.error, r.result_json FROM jobs j JOIN users u ON u.id = j.user_id "
                  "LEFT JOIN results r ON r.job_id = j.id ORDER BY j.id")
    out = []
    for jid, sid, user, state, attempts, started, finished, error, rj in rows:
        out.append({"job": jid, "submission": sid, "user": user, "state": state, "attempts": attempts,
                    "started": started, "finished": finished, "error": error,
                    "result": json.loads(rj) if rj else None})
    return out


def reap_qemu(svc: ServiceProcesses, grace: float = 20) -> list[int]:
    """After the service stopped: the QEMU processes still there after ``grace`` seconds (leaked), killed."""
    deadline = time.monotonic() + grace
    while svc.qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    leaked = svc.qemu_pids()
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    return leaked


def wait_final(svc: ServiceProcesses, sub_ids: list[int], timeout: float, progress) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {s: st for s, st in svc.db(
            f"SELECT submission_id, state FROM jobs WHERE submission_id IN ({','.join(map(str, sub_ids))})")}
        if len(states) == len(sub_ids) and all(st in FINAL for st in states.values()):
            return
        time.sleep(2)
    progress(f"round did not finish within {timeout:.0f}s: {states}")


def _taint_seq(result: dict) -> tuple[int | None, int | None]:
    for p in result.get("phases", []):
        if p["name"] == "trace_start":
            m = re.search(r"kmsg seq (\d+), taint (\d+)", p.get("detail") or "")
            if m:
                return int(m.group(2)), int(m.group(1))
    return None, None


def measure(golden: Path, pool_vms: int = 2, kills: dict | None = None, seed: int = 1,
            faults: list[str] | None = None, progress=print) -> dict:
    kills = {"worker": 2, "web": 4, "qemu": 2} if kills is None else kills
    chosen = [f for f in subs.FAULTS if faults is None or f.name in faults]
    rng = random.Random(seed)
    plan = [t for t, n in kills.items() for _ in range(n)]
    rng.shuffle(plan)
    tmp = Path(tempfile.mkdtemp(prefix="copylab-faults-pool-"))
    rounds = [chosen[i:i + pool_vms] for i in range(0, len(chosen), pool_vms)]
    students = [f"f{i:02d}" for i in range(len(chosen) + pool_vms * len(rounds))]
    svc = ServiceProcesses(tmp / "instance", golden, progress, pool_vms=pool_vms,
                           settings={"LEASE_SECONDS": 30, "MAX_ATTEMPTS": 4})
    # random passwords: the password policy refuses ones derived from the user names
    svc.setup("faults", [(u, secrets.token_urlsafe(12)) for u in students], ("teacher", secrets.token_urlsafe(12)))
    svc.start()
    clients = Clients(svc)
    # under TCG a round of grading runs takes about 110 s (boot, ~60 s module build, run)
    chaos = Chaos(svc, plan, rng, progress, expected_s=2 * 110 * len(rounds))
    labels: dict[int, str] = {}
    t_start = time.monotonic()
    it = iter(students)
    try:
        chaos.start()
        for n, rnd in enumerate(rounds, 1):
            progress(f"round {n}/{len(rounds)}: faults {', '.join(f.name for f in rnd)}")
            ids = []
            for f in rnd:
                r = clients.submit(next(it), subs.texts(f), f.name)
                labels[r["id"]] = f.name
                ids.append(r["id"])
            wait_final(svc, ids, 1200, progress)
            ids = []
            for _ in range(pool_vms):
                r = clients.submit(next(it), subs.texts(None), "correct")
                labels[r["id"]] = "correct"
                ids.append(r["id"])
            wait_final(svc, ids, 1200, progress)
        chaos.stop_flag.set()
        chaos.join(120)
        t_graded = time.monotonic()
        rows = job_rows(svc)
    finally:
        chaos.stop_flag.set()
        with chaos.lock:
            svc.stop()
        leaked = reap_qemu(svc)
        worker_log = svc.logs("worker")
        svc.kill()
    try:
        return _figures(svc, rows, labels, clients, chaos, leaked, chosen, worker_log, t_graded - t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _figures(svc, rows, labels, clients, chaos, leaked, chosen, worker_log, wall_s) -> dict:
    by_sub: dict[int, list[dict]] = {}
    for r in rows:
        by_sub.setdefault(r["submission"], []).append(r)
    final = {}
    for sid, rs in by_sub.items():
        done = [r for r in rs if r["state"] == "done"]
        final[sid] = done[-1] if done else rs[-1]
    # order of jobs on each VM
    per_vm: dict[str, list[dict]] = {}
    for sid, r in final.items():
        if r["result"]:
            per_vm.setdefault(r["result"]["environment"].get("vm") or "?", []).append(r)
    for jobs in per_vm.values():
        jobs.sort(key=lambda r: r["started"] or "")
    taints = [_taint_seq(r["result"]) for r in final.values() if r["result"]]
    base_taint = min((t for t, _ in taints if t is not None), default=0)
    base_seq = min((s for _, s in taints if s is not None), default=0)
    dirty = [r["job"] for r in final.values() if r["result"] and (
        (_taint_seq(r["result"])[0] or 0) != base_taint or (_taint_seq(r["result"])[1] or 0) > base_seq + 500)]

    figures: list[dict] = []
    details: dict = {"faults": [], "kills": chaos.events, "wall_s": round(wall_s, 1),
                     "accel": next((r["result"]["environment"].get("accel") for r in final.values() if r["result"]),
                                   None)}
    for part in ("kernel", "user"):
        these = [f for f in chosen if f.part == part]
        right, after_ok, caught, notes_v, notes_a = 0, 0, [], [], []
        for f in these:
            sid = next((s for s, lab in labels.items() if lab == f.name), None)
            r = final.get(sid)
            res = r and r["result"]
            out = subs.outcome(res) if res else f"not graded ({r and r['state']}: {r and r['error']})"
            ok = res is not None and out in f.expect
            right += ok
            caught.append(f"{f.name}: {out}")
            if not ok:
                notes_v.append(f"{f.name} got {out}, expected {' or '.join(f.expect)}")
            nxt = None
            if res:
                jobs = per_vm.get(res["environment"].get("vm") or "?", [])
                i = jobs.index(r)
                nxt = jobs[i + 1] if i + 1 < len(jobs) else None
            good = nxt is not None and labels.get(nxt["submission"]) == "correct" and \
                nxt["result"]["score"] == nxt["result"]["max_score"]
            after_ok += good
            if not good:
                notes_a.append(f"after {f.name}: " + (
                    "no later job on its VM" if nxt is None else
                    f"{labels.get(nxt['submission'])} scored {nxt['result']['score']}"))
            details["faults"].append({"fault": f.name, "part": part, "what": f.what, "outcome": out,
                                      "expected": list(f.expect), "attempts": r and r["attempts"],
                                      "next_on_vm": nxt and {"label": labels.get(nxt["submission"]),
                                                             "score": nxt["result"]["score"]}})
        what = "crashes" if part == "kernel" else "user-space faults"
        figures.append(ratio(part, f"{what} detected with the right verdict", right, len(these),
                             "; ".join(notes_v) or "phase that caught each: " + ", ".join(caught)).as_dict())
        figures.append(ratio(part, "correct submissions right after each fault on the same VM with full marks",
                             after_ok, len(these), "; ".join(notes_a)).as_dict())
    figures.append(zero("kernel", "jobs that started on a VM left dirty by the job before (taint or kernel log "
                        "not back to the clean snapshot's)", len(dirty), ", ".join(map(str, dirty))).as_dict())
    figures.append(zero("kernel", "QEMU processes leaked (after the service stopped, and after each worker kill)",
                        len(leaked) + chaos.leaked_after_worker_kill).as_dict())

    # restarts
    receipts = clients.receipts
    lost = [rc["id"] for rc in receipts if rc["id"] not in final or final[rc["id"]]["state"] == "failed"
            or (final[rc["id"]]["state"] == "done" and final[rc["id"]]["result"] is None)]
    twice = [sid for sid, rs in by_sub.items() if sum(1 for r in rs if r["result"]) > 1]
    stuck = [r["job"] for r in rows if r["state"] not in FINAL]
    kills = chaos.events
    counts = {t: sum(1 for e in kills if e["target"] == t) for t in ("worker", "web", "qemu")}
    rec = _recovery(kills, rows)
    figures.append(Figure("restarts", "kills at random points of grading (worker, web process, QEMU)",
                          f"{counts['worker']} worker, {counts['web']} web, {counts['qemu']} QEMU", "", None,
                          f"{clients.retries} hand-in retries while the web process was down").as_dict())
    figures.append(zero("restarts", "submissions lost (a receipt was given, the job did not end graded)",
                        len(lost), ", ".join(map(str, lost))).as_dict())
    figures.append(zero("restarts", "jobs graded twice to completion", len(twice),
                        ", ".join(map(str, twice))).as_dict())
    figures.append(zero("restarts", "jobs stuck (not done, failed or superseded at the end)", len(stuck),
                        ", ".join(map(str, stuck))).as_dict())
    infra = sum(1 for r in final.values() if r["attempts"] > 1)
    figures.append(Figure("restarts", "time to recover, median / max (web: until it answers; worker and QEMU: "
                          "until the interrupted job runs again)", rec["text"], "", None,
                          f"{infra} jobs needed more than one attempt").as_dict())
    details["recovery"] = rec
    details["vm_replacements_logged"] = worker_log.count("replacing VM")
    return {"figures": figures, **details}


def _recovery(kills: list[dict], rows: list[dict]) -> dict:
    """Seconds from each kill until the service had recovered from it."""
    import datetime as dt

    def ts(s):
        return dt.datetime.fromisoformat(s).replace(tzinfo=dt.timezone.utc).timestamp() if s else None
    out: dict[str, list[float]] = {"web": [], "worker": [], "qemu": []}
    for e in kills:
        if e["target"] == "web":
            out["web"].append(e["recover_s"])
            continue
        # the interrupted job (same id) was claimed again: its started_at moved past the kill
        r = next((r for r in rows if r["job"] == e["job"]), None)
        t = r and ts(r["started"])
        if t and t > e["at"]:
            out[e["target"]].append(t - e["at"])
    parts = [f"{k} {statistics.median(v):.0f} / {max(v):.0f} s" for k, v in out.items() if v]
    return {"seconds": out, "text": ", ".join(parts) or "no kills"}
