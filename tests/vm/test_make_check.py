"""`make check` inside the VM, as the student: the official checks through a local executor and the
same sudo helper, on the student's own lab folder (the skeleton provisioning put there)."""
from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _as_student(admin_ssh, command: str, timeout: float = 600, check: bool = True):
    return admin_ssh(f"sudo -iu student bash -lc {shlex.quote(command)}", timeout=timeout, check=check)


def test_make_check_in_the_vm_passes_with_the_solution(lab_vm, admin_ssh, golden_manifest):
    lab_vm.acquire()
    try:
        # the student VM holds the skeleton, never the solution
        out = _as_student(admin_ssh, "cd ~/labs/lab1 && ls && sha256sum -c SHA256SUMS").stdout
        assert "copytrace.c: OK" in out and "solution" not in out
        # the student "writes" the solution: copy the three files over the skeleton
        for name in ("sender.c", "receiver.c", "copytrace.c"):
            text = (ROOT / "labs/lab1/solution" / name).read_text()
            admin_ssh(f"sudo -u student tee /home/student/labs/lab1/{name} >/dev/null <<'COPYLAB_EOF'\n"
                      f"{text}\nCOPYLAB_EOF")
        r = _as_student(admin_ssh, "cd ~/labs/lab1 && make >/dev/null && make check", check=False)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "100/100 points" in r.stdout
        assert "[COPY1]" in r.stdout and "[COPY4]" in r.stdout
        # the trace table with this run's addresses
        assert "copy #1 _copy_from_iter" in r.stdout and "0xffff" in r.stdout
    finally:
        lab_vm.release(dirty=True)


def test_make_check_with_the_skeleton_fails_and_explains(lab_vm, admin_ssh):
    lab_vm.acquire()
    try:
        r = _as_student(admin_ssh, "cd ~/labs/lab1 && make >/dev/null 2>&1; make check", check=False)
        assert r.returncode != 0
        assert "[FAIL] programs_report" in r.stdout and "hint:" in r.stdout
    finally:
        lab_vm.release(dirty=True)
