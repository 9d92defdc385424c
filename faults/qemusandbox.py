"""Part ``qemusandbox``: every QEMU a service pool starts runs under QEMU's seccomp sandbox and, when the
worker is root, as the VM account; a kernel panic and the restore from the clean snapshot still work.

One service (web + worker, a pool of ONE QEMU VM: CPU is scarce) grades three hand-ins in turn: the
solution, a submission that panics the kernel (QEMU ends, the next job starts a new QEMU from the clean
snapshot) and the solution again. Meanwhile a sampler reads ``/proc/<pid>/status`` of every QEMU of
the instance (its command line names the instance's VM folder) twice a second; each process counts
with its last reading, taken while it ran.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from faults.report import Figure, ratio, zero
from grader.vm.qemu import read_confinement

PART = "qemusandbox"
USERS = ("sb1", "sb2", "sb3")
# (label, fault name or None for the solution, expected outcome as faults.submissions.outcome names it)
PLAN = (("solution", None, "pass"), ("panic", "panic", "crash"), ("solution after the panic", None, "pass"))


class Sampler(threading.Thread):
    """The confinement of every process ``pids()`` lists, read from /proc until ``stop()``."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5):
        super().__init__(daemon=True, name="qemu-sampler")
        self.pids, self.interval = pids, interval
        self.seen: dict[int, dict] = {}   # pid -> its last reading
        self._stop_flag = threading.Event()

    def sample(self) -> None:
        for pid in self.pids():
            try:
                self.seen[pid] = read_confinement(pid)
            except (OSError, ValueError, KeyError):
                pass   # ended between the listing and the read: its earlier reading stands

    def run(self) -> None:
        while not self._stop_flag.is_set():
            self.sample()
            self._stop_flag.wait(self.interval)

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(10)
        self.sample()


def figures(seen: dict[int, dict], account, outcomes: list[tuple[str, str, str]], envs: list[dict | None],
            leaked: int) -> list[dict]:
    """``seen``: pid -> confinement; ``account``: the QemuAccount the pool should use; ``outcomes``:
    (label, expected, got) per hand-in; ``envs``: each result's environment["qemu"]."""
    n = len(seen)
    unsandboxed = [pid for pid, c in seen.items() if c["seccomp"] != 2]
    note = f"{n} QEMU processes seen (the first boot and each restart from the snapshot)"
    out = [Figure(PART, "QEMU processes of the pool without the seccomp sandbox", str(len(unsandboxed)), "0",
                  n > 0 and not unsandboxed, note)]
    if account.switched:
        wrong = [pid for pid, c in seen.items() if c["uid"] != account.uid]
        out.append(Figure(PART, f"QEMU processes not running as the VM account ({account.name})", str(len(wrong)),
                          "0", n > 0 and not wrong, note))
    else:
        out.append(Figure(PART, "QEMU processes not running as the VM account", "n/a", "0", None, account.why))
    reported = [e for e in envs if e and e.get("sandbox") and (not account.switched or e.get("uid") == account.uid)]
    out.append(ratio(PART, "results whose environment reports the sandbox (and the VM account)", len(reported),
                     len(envs)))
    good = [label for label, want, got in outcomes if want == got]
    out.append(ratio(PART, "hand-ins with the expected outcome under the sandbox (solution 100/100, panic "
                           "detected as a kernel crash, solution 100/100 after the restore)", len(good),
                     len(outcomes), "; ".join(f"{label}: {got}" for label, want, got in outcomes if want != got)))
    out.append(zero(PART, "QEMU processes left after the service stopped", leaked))
    return [f.as_dict() for f in out]


def measure(golden: Path, progress=print) -> dict:
    from faults import submissions as subs
    from faults.pool_run import Clients, job_rows, reap_qemu, wait_final
    from grader.service.config import Defaults
    from support.service import ServiceProcesses
    from grader.vm.qemu import qemu_account

    raw = os.environ.get("GRADER_POOL_QEMU_USER")
    try:   # the way the worker's config reads GRADER_* values: JSON when it parses, else the string
        name = Defaults.POOL_QEMU_USER if raw is None else json.loads(raw)
    except ValueError:
        name = raw
    account = qemu_account(name)
    faults = {f.name: f for f in subs.FAULTS}
    tmp = Path(tempfile.mkdtemp(prefix="copylab-faults-sandbox-"))
    svc = ServiceProcesses(tmp / "instance", golden, progress, pool_vms=1)
    sampler = Sampler(svc.qemu_pids)
    try:
        svc.setup("sandbox", [(u, f"pw-{u}-123456") for u in USERS], ("teacher", "teacher-pw-123456"))
        svc.start()
        sampler.start()
        clients = Clients(svc)
        labels = {}
        for user, (label, fault, _want) in zip(USERS, PLAN):
            r = clients.submit(user, subs.texts(faults[fault] if fault else None), label)
            labels[r["id"]] = label
            progress(f"{PART}: {label} handed in; waiting for its grade")
            wait_final(svc, [r["id"]], 1200, progress)
        rows = job_rows(svc)
    finally:
        sampler.stop()
        svc.stop()
        leaked = reap_qemu(svc)
        svc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    last = {labels[r["submission"]]: r for r in rows if r["submission"] in labels}
    outcomes = [(label, want, subs.outcome(last[label]["result"]) if last.get(label, {}).get("result")
                 else f"no result ({last.get(label, {}).get('state')})") for label, _f, want in PLAN]
    envs = [(r["result"] or {}).get("environment", {}).get("qemu") for r in last.values()]
    accel = next((r["result"]["environment"].get("accel") for r in last.values() if r["result"]), None)
    return {"figures": figures(sampler.seen, account, outcomes, envs, len(leaked)), "accel": accel,
            "qemu_processes": {str(pid): c for pid, c in sampler.seen.items()}, "account": account.name,
            "outcomes": outcomes}
