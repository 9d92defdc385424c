"""Floor vs grader on ONE lab VM, alternated: (a) the bare steps a person would type over plain ssh,
(b) one full grading run of the same submission (the build in the host sandbox when the host can),
(c) the same grading run with the build in the VM. Also the per-phase breakdown of the grading runs
and the VM reset time (restore of the clean snapshot until SSH answers)."""
from __future__ import annotations

import random
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from grader.engine.labspec import load_lab
from grader.engine.run import HELPER, grade, new_message, new_port

REPO = Path(__file__).resolve().parents[1]


class PlainSSH:
    """The `ssh`/`scp` commands a person would use, over one multiplexed connection."""

    def __init__(self, vm, workdir: Path):
        self.vm = vm
        self.base = ["-i", str(vm.key), "-o", f"UserKnownHostsFile={vm.vm.known_hosts}",
                     "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                     "-o", f"ControlPath={workdir}/cm-%p", "-o", "ControlMaster=auto",
                     "-o", "ControlPersist=120"]

    def ssh(self, command: str, timeout: float = 300) -> str:
        r = subprocess.run(["ssh", *self.base, "-p", str(self.vm.vm.ssh_port), "grader@127.0.0.1", command],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ssh {command!r} exited {r.returncode}: {r.stderr.strip()[-500:]}")
        return r.stdout

    def scp(self, files: list[Path], dest: str) -> None:
        r = subprocess.run(["scp", "-q", *self.base, "-P", str(self.vm.vm.ssh_port), *map(str, files),
                            f"grader@127.0.0.1:{dest}"], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"scp exited {r.returncode}: {r.stderr.strip()}")

    def close(self) -> None:
        subprocess.run(["ssh", *self.base, "-p", str(self.vm.vm.ssh_port), "-O", "exit", "grader@127.0.0.1"],
                       capture_output=True, timeout=30)


def floor_run(vm, lab, submission: Path, workdir: Path, rng: random.Random) -> dict:
    """Restore, copy, build, load, run receiver and sender, read the kernel log, unload."""
    steps = {}
    t0 = time.monotonic()
    steps["restore"] = vm.reset()
    vm.fresh = False
    ssh = PlainSSH(vm, workdir)
    try:
        d = f"/home/grader/floor-{rng.randrange(1 << 30)}"
        msg, port = new_message(lab, rng), new_port(lab, rng)
        t = time.monotonic()
        ssh.ssh(f"mkdir -p {d}")
        ssh.scp([submission / n for n in lab.files] + [lab.dir / n for n in lab.build_files], d)
        steps["copy"] = time.monotonic() - t
        t = time.monotonic()
        ssh.ssh(f"cd {d} && {lab.build_command} >/dev/null")
        steps["build"] = time.monotonic() - t
        t = time.monotonic()
        seq = ssh.ssh(f"sudo -n {HELPER} kmsg-seq").split()[0]
        ssh.ssh(f"sudo -n {HELPER} load {d}/{lab.module_file} payload={msg}")
        steps["load"] = time.monotonic() - t
        t = time.monotonic()
        out = ssh.ssh(f"cd {d} && (./receiver {port} > r.out 2>&1 &) && sleep 0.3 && ./sender {msg} {port} && "
                      f"sleep 0.3 && cat r.out")
        steps["run"] = time.monotonic() - t
        t = time.monotonic()
        kmsg = ssh.ssh(f"sudo -n {HELPER} kmsg-since {shlex.quote(seq)}")
        steps["read_log"] = time.monotonic() - t
        t = time.monotonic()
        ssh.ssh(f"sudo -n {HELPER} unload {lab.module}")
        steps["unload"] = time.monotonic() - t
    finally:
        ssh.close()
    ok = f'received {len(msg)} bytes "{msg}"' in out and "[COPY1]" in kmsg and "[COPY4]" in kmsg
    return {"seconds": time.monotonic() - t0, "steps": steps, "ok": ok}


def grader_run(vm, lab, submission: Path, workdir: Path, build_place: str = "auto") -> dict:
    t0 = time.monotonic()
    outcome = grade(lab, vm, submission, workdir / f"grade-{time.monotonic_ns()}", build_place=build_place)
    seconds = time.monotonic() - t0
    r = outcome.result
    return {"seconds": seconds, "score": r["score"], "reset_s": vm.last_reset_s,
            "build_place": r["environment"].get("build_place"),
            "phases": {p["name"]: p["duration_s"] for p in r["phases"]}}


def measure(pairs: int = 3, resets: int = 5, progress=print) -> dict:
    from grader.vm.labvm import QemuLabVM

    lab = load_lab("lab1")
    submission = REPO / "labs" / "lab1" / "solution"
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="copylab-bench-") as tmp, \
            QemuLabVM(progress=progress, name="bench") as vm:
        work = Path(tmp)
        vm.acquire()                     # first boot and the clean snapshot (not measured)
        vm.fresh = False
        rows = []
        for i in range(pairs):
            a = floor_run(vm, lab, submission, work, rng)
            progress(f"pair {i + 1}/{pairs}: floor {a['seconds']:.1f}s ({'ok' if a['ok'] else 'NOT OK'})")
            b = grader_run(vm, lab, submission, work)
            progress(f"pair {i + 1}/{pairs}: grader {b['seconds']:.1f}s (score {b['score']}, build in the "
                     f"{b['build_place']})")
            c = grader_run(vm, lab, submission, work, build_place="vm")
            progress(f"pair {i + 1}/{pairs}: grader, build in the VM {c['seconds']:.1f}s (score {c['score']})")
            rows.append({"floor": a, "grader": b, "grader_vm_build": c, "ratio": b["seconds"] / a["seconds"]})
        reset_times = []
        for _ in range(resets):
            vm.fresh = False
            reset_times.append(vm.reset())
        accel = vm.environment().get("accel")
    phases = {}
    for name in rows[0]["grader"]["phases"]:
        phases[name] = statistics.median(r["grader"]["phases"][name] for r in rows)
    floor_steps = {k: statistics.median(r["floor"]["steps"][k] for r in rows) for k in rows[0]["floor"]["steps"]}
    return {
        "accel": accel, "pairs": rows,
        "floor_median_s": statistics.median(r["floor"]["seconds"] for r in rows),
        "grader_median_s": statistics.median(r["grader"]["seconds"] for r in rows),
        "ratio_median": statistics.median(r["ratio"] for r in rows),
        "ratio_max": max(r["ratio"] for r in rows),
        "floor_all_ok": all(r["floor"]["ok"] for r in rows),
        "grader_scores": [r["grader"]["score"] for r in rows],
        "grader_phases_median_s": phases, "floor_steps_median_s": floor_steps,
        "build_place": rows[0]["grader"]["build_place"],
        "grader_vm_build_median_s": statistics.median(r["grader_vm_build"]["seconds"] for r in rows),
        "grader_vm_build_scores": [r["grader_vm_build"]["score"] for r in rows],
        "build_in_vm_median_s": statistics.median(r["grader_vm_build"]["phases"]["build"] for r in rows),
        "build_in_sandbox_median_s": statistics.median(r["grader"]["phases"]["build"] for r in rows),
        "reset_s": reset_times, "reset_median_s": statistics.median(reset_times),
    }
