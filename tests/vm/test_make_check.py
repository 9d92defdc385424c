"""`make check` inside the VM, as the student: the official checks through a local executor and the
same sudo helper, on the student's own lab folder (the skeleton provisioning put there)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from labs.tools import samplecheck

ROOT = Path(__file__).resolve().parents[2]


def _as_student(admin_ssh, command: str, timeout: float = 600, check: bool = True):
    return admin_ssh(f"sudo -iu student bash -lc {shlex.quote(command)}", timeout=timeout, check=check)


def _write_solution(admin_ssh, names, lab: str = "lab1") -> None:
    """The student's lab folder gets the solution's version of these files."""
    for name in names:
        text = (ROOT / "labs" / lab / "solution" / name).read_text()
        admin_ssh(f"sudo -u student tee /home/student/labs/{lab}/{name} >/dev/null <<'COPYLAB_EOF'\n"
                  f"{text}\nCOPYLAB_EOF")


def _matches_the_handouts_sample(lab: str, output: str) -> None:
    """The handout's sample is a run like this one, line for line, but for what changes per run."""
    readme = ROOT / "labs" / lab / "README.md"
    sample = samplecheck.sample_of(readme.read_text(), str(readme))
    assert samplecheck.differences(sample, output) == [], (
        f"regenerate the sample: labs/tools/samplecheck.py labs/{lab} --from <this run's output>\n"
        + output)


def test_make_check_in_the_vm_passes_with_the_solution(lab_vm, admin_ssh, golden_manifest):
    lab_vm.acquire()
    try:
        # the student VM holds the skeleton, never the solution
        out = _as_student(admin_ssh, "cd ~/labs/lab1 && ls && sha256sum -c SHA256SUMS").stdout
        assert "copytrace.c: OK" in out and "solution" not in out
        # the student "writes" the solution: copy the three files over the skeleton
        _write_solution(admin_ssh, ("sender.c", "receiver.c", "copytrace.c"))
        r = _as_student(admin_ssh, "cd ~/labs/lab1 && make >/dev/null && make check", check=False)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "100/100 points" in r.stdout
        assert "[COPY1]" in r.stdout and "[COPY4]" in r.stdout
        # the trace table with this run's addresses
        assert "copy #1 _copy_from_iter" in r.stdout and "0xffff" in r.stdout
        # the journey picture: the skb in the kernel half, both buffers in the user half
        picture = r.stdout.split("the journey: 48 bytes in 3 places", 1)[1].split("\n\n", 1)[0]
        assert re.search(r"^kernel half +0xffff[0-9a-f]{12}$", picture, re.M), picture
        assert re.search(r"^user half +0x0000[0-9a-f]{12} +0x0000[0-9a-f]{12}$", picture, re.M), picture
        # the answers template provisioning installed: the questions show as not answered
        assert "questions (answers file, scored apart): 0/10 points" in r.stdout
        # the handout's sample is a run like this one, line for line, but for what changes per run;
        # COPYLAB_SAMPLE_OUT keeps this run's output for labs/tools/samplecheck.py --from
        if os.environ.get("COPYLAB_SAMPLE_OUT"):
            Path(os.environ["COPYLAB_SAMPLE_OUT"]).write_text(r.stdout)
        _matches_the_handouts_sample("lab1", r.stdout)
    finally:
        lab_vm.release(dirty=True)


@pytest.mark.xdist_group("lab2")
def test_lab2_make_check_in_the_vm_passes_with_the_solution(nic_lab_vm, nic_admin_ssh):
    """Lab 2's make check as the student, in a VM with the two cards: every check but the two that
    need the hypervisor passes, those two show as the official grader's, the journey picture names
    nothing as unexpected, and the handout's sample is a run like this one."""
    nic_lab_vm.acquire()
    try:
        _write_solution(nic_admin_ssh, ("sender.c", "receiver.c", "wiretrace.c"), lab="lab2")
        r = _as_student(nic_admin_ssh, "cd ~/labs/lab2 && make >/dev/null 2>&1 && make check", check=False)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "70/100 points" in r.stdout and "[FAIL]" not in r.stdout, r.stdout
        assert "[GRADER ONLY] tx_card_read (0/15)" in r.stdout and "[GRADER ONLY] rx_card_write" in r.stdout
        assert "the journey: 96 bytes in 6 places" in r.stdout and "unexpected" not in r.stdout, r.stdout
        if os.environ.get("COPYLAB_SAMPLE_OUT_LAB2"):
            Path(os.environ["COPYLAB_SAMPLE_OUT_LAB2"]).write_text(r.stdout)
        _matches_the_handouts_sample("lab2", r.stdout)
    finally:
        nic_lab_vm.release(dirty=True)


def test_make_check_with_the_skeleton_fails_and_explains(lab_vm, admin_ssh):
    lab_vm.acquire()
    try:
        r = _as_student(admin_ssh, "cd ~/labs/lab1 && make >/dev/null 2>&1; make check", check=False)
        assert r.returncode != 0
        assert "[FAIL] programs_report" in r.stdout and "hint:" in r.stdout
    finally:
        lab_vm.release(dirty=True)


def test_handout_milestone_half_and_tools_work_as_written(lab_vm, admin_ssh):
    """Milestone 0.5 exactly as the handout gives it, as the student (whose sudo rules allow only
    the full-path insmod): the unchanged skeleton builds, loads with its "probes registered"
    line and prints its call counts at unload; the tools the handout's exercises use are there."""
    lab_vm.acquire()
    try:
        # milestone 0 done (the programs work), copytrace.c still the skeleton
        _write_solution(admin_ssh, ("sender.c", "receiver.c"))
        r = _as_student(admin_ssh, "set -e; cd ~/labs/lab1; make >/dev/null 2>&1; sudo -n dmesg -C; "
                        "sudo -n insmod /home/student/labs/lab1/copytrace.ko; sudo -n dmesg; "
                        "./receiver 9999 & sleep 1; ./sender HELLO_SEND_TRACE 9999; wait; "
                        "sudo -n rmmod copytrace; sudo -n dmesg", check=False)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert "copytrace: probes on _copy_from_iter and _copy_to_iter registered" in r.stdout
        counts = re.search(r"copytrace: probes removed: (\d+) calls to _copy_from_iter and "
                           r"(\d+) calls to _copy_to_iter seen in all", r.stdout)
        assert counts, r.stdout[-3000:]
        # at least the one datagram each way passed through the probes
        assert int(counts.group(1)) >= 1 and int(counts.group(2)) >= 1
        # a relative path is not in the sudo rules: -n makes sudo fail instead of asking
        r = _as_student(admin_ssh, "cd ~/labs/lab1 && sudo -n insmod copytrace.ko", check=False)
        assert r.returncode != 0 and "password" in r.stderr
        r = _as_student(admin_ssh, "printf HELLO_SEND_TRACE | xxd && strace -V && man -w ascii && "
                        "man -w 2 sendto && command -v addr2line setarch")
        assert "48454c4c4f5f" in r.stdout.replace(" ", "")
    finally:
        lab_vm.release(dirty=True)
