"""Part ``isolation``: what a student's programs can reach, and what a run leaves behind.

One lab VM boots from the golden image. Restored from its clean snapshot, it grades a submission
whose sender and receiver try sudo (the helper, root, the grader) and the grader's files, then one
that fills the disk. Restored once more, the same guest is used as an inventory host (StaticHostVM:
SSH only, never restored): a job that leaves a process and files behind, then a job that looks for
an earlier job's files and processes. Between and after them, the image's admin counts what the
program account still has on the host.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from faults.report import zero

from support import lab1_submissions as fx

REPO = Path(__file__).resolve().parents[1]

SUDO_PROBES = [name for name, cmd in fx.ESCALATIONS.items() if "sudo " in cmd or cmd.startswith("su ")]


def leftovers_command(user: str, runs_dir: str) -> str:
    """Admin (root) command: one line per process or file of ``user`` and per run folder left."""
    return (f"sudo sh -c 'pgrep -u {user} -a | sed \"s/^/process /\"; "
            f"find / /tmp /dev/shm /run -xdev -user {user} 2>/dev/null | sed \"s/^/file /\"; "
            f"find {runs_dir} -mindepth 1 -maxdepth 1 | sed \"s/^/run-folder /\"; true'")


def figures(obs: dict) -> list[dict]:
    """The part's figures from what ``measure`` observed (kept apart so that a unit test reads them)."""
    part = "isolation"
    sudo_ok = {who: [n for n in SUDO_PROBES if probes.get(n) == "0"] for who, probes in obs["escalate"].items()}
    missing = {who: [n for n in fx.ESCALATIONS if n not in probes] for who, probes in obs["escalate"].items()}
    missing = {who: names for who, names in missing.items() if names}
    # a program that did not report every probe is not shown to be refused: it counts as able
    could = sorted({who for who, names in sudo_ok.items() if names} | set(missing))
    other = sorted({n for probes in obs["escalate"].values() for n, v in probes.items()
                    if v == "0" and n not in SUDO_PROBES and n != "user"})
    users = sorted({probes.get("user", "?") for probes in obs["escalate"].values()})
    read = obs["read_earlier"]
    left_procs = [ln for ln in obs["leftovers_after_each_job"] if ln.startswith("process ")]
    left_files = [ln for ln in obs["leftovers_after_each_job"] if not ln.startswith("process ")]
    files_read = int(read.get("earlier-files", "-1"))
    procs_seen = int(read.get("earlier-processes", "-1"))
    return [
        zero(part, "student-run processes that could use sudo (sender and receiver, each trying "
             f"{len(SUDO_PROBES)} sudo/su commands)", len(could),
             f"ran as {', '.join(users)}; " + (f"sudo worked for {sudo_ok}; " if could else "")
             + (f"probes not reported: {missing}; " if missing else "")
             + f"other probes that worked: {', '.join(other) or 'none'} (of {len(fx.ESCALATIONS) - len(SUDO_PROBES)}: "
             "grader's files, own sources and module, run folder writes, kernel log, /etc/shadow)").as_dict(),
        zero(part, "files of an earlier job readable on an inventory host", max(files_read, 0) + len(left_files)
             + (1 if files_read < 0 else 0),
             f"the next job's sender found {read.get('earlier-files', 'nothing (no report)')}; "
             f"left on the host after each job (seen as root): {len(left_files)}"
             + (f" ({', '.join(left_files[:3])})" if left_files else "")).as_dict(),
        zero(part, "processes surviving a run on an inventory host", max(procs_seen, 0) + len(left_procs)
             + (1 if procs_seen < 0 else 0),
             f"the earlier job started {obs['left_started']} background process(es); the next job saw "
             f"{read.get('earlier-processes', 'nothing (no report)')}; left after each job (seen as root): "
             f"{len(left_procs)}").as_dict(),
        zero(part, "full-disk runs graded as passing", int(obs["fill_disk"]["passed"]),
             f"run phase {obs['fill_disk']['run_status']}: {obs['fill_disk']['run_detail'][:200]}; "
             f"free disk after the run: {obs['fill_disk']['free']} bytes").as_dict(),
    ]


def measure(golden: Path, progress=print) -> dict:
    from grader.engine.labspec import load_lab
    from grader.engine.run import PROGRAM_USER, RUNS_DIR, grade
    from grader.vm.labvm import QemuLabVM, StaticHostVM

    from faults import submissions

    gm = json.loads((golden / "manifest.json").read_text())
    lab = load_lab("lab1", REPO / "labs")
    tmp = Path(tempfile.mkdtemp(prefix="copylab-faults-isolation-"))

    def graded(vm, kind, files=None):
        sub = tmp / kind
        sub.mkdir()
        for name, text in (files or fx.submission_texts(kind)).items():
            (sub / name).write_text(text)
        outcome = grade(lab, vm, sub, tmp / f"{kind}-out")
        progress(f"isolation: {kind}: {outcome.result['score']}/{outcome.result['max_score']}")
        return outcome

    obs: dict = {"leftovers_after_each_job": []}
    try:
        vm = QemuLabVM(golden=golden, workdir=tmp / "vm", name="isolation", progress=progress)
        with vm:
            vm.prepare()

            def leftovers() -> list[str]:
                from grader.ssh import SSHConnection

                with SSHConnection(host="127.0.0.1", port=vm.vm.ssh_port, user=gm["admin_user"],
                                   key_path=gm["admin_key_path"], known_hosts=vm.vm.known_hosts) as admin:
                    r = admin.run(leftovers_command(PROGRAM_USER, RUNS_DIR), timeout=120)
                return r.stdout.split("\n") if r.stdout.strip() else []

            esc = graded(vm, "escalate")
            obs["escalate"] = {"sender": fx.probes(esc.run.sender_out),
                               "receiver": fx.probes(esc.run.receiver_out)}
            obs["escalate_score"] = esc.result["score"]
            fault = next(f for f in submissions.FAULTS if f.name == "fill_disk")
            fill = graded(vm, "fill_disk", submissions.texts(fault))
            run_phase = {p["name"]: p for p in fill.result["phases"]}["run"]
            obs["fill_disk"] = {"passed": fill.result["score"] == fill.result["max_score"],
                                "run_status": run_phase["status"], "run_detail": run_phase["detail"],
                                "free": fill.result.get("disk_free_after_run_bytes")}
            vm.acquire()   # the clean snapshot, then the guest as an inventory host: never restored
            host = StaticHostVM(host="127.0.0.1", port=vm.vm.ssh_port, key=vm.key,
                                known_hosts=vm.vm.known_hosts, user=gm.get("grader_user", "grader"))
            left = graded(host, "leave_process")
            obs["left_started"] = fx.probes(left.run.sender_out).get("left", "?")
            obs["leftovers_after_each_job"] += leftovers()
            read = graded(host, "read_earlier")
            obs["read_earlier"] = fx.probes(read.run.sender_out)
            obs["leftovers_after_each_job"] += leftovers()
            obs["inventory_releases"] = [{p["name"]: p for p in o.result["phases"]}["release"]
                                         for o in (left, read)]
            obs["accel"] = esc.result["environment"].get("accel")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"figures": figures(obs), "accel": obs.get("accel"), "observed": obs}
