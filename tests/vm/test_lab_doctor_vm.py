"""`lab doctor` in a real lab VM, as the student: it passes on the provisioned VM and names the problem
(with its fix) on a VM broken on purpose: wrong kernel headers, kprobes switched off, a kernel log the
student cannot read, kernel lockdown. Each broken VM is reset from the clean snapshot afterwards."""
from __future__ import annotations

import json
import shlex

import pytest


def _doctor(admin_ssh, as_student: bool = True) -> tuple[int, dict, str]:
    cmd = "lab doctor --json"
    if as_student:
        cmd = f"sudo -iu student bash -lc {shlex.quote(cmd)}"
    r = admin_ssh(cmd, timeout=300, check=False)
    assert r.stdout.strip(), f"lab doctor printed nothing (exit {r.returncode}): {r.stderr}"
    return r.returncode, json.loads(r.stdout), r.stderr


def _failing(doc: dict) -> dict:
    return {f["check"]: f for f in doc["findings"] if f["status"] == "fail"}


def test_lab_doctor_passes_on_the_provisioned_vm(lab_vm, admin_ssh):
    lab_vm.acquire()
    try:
        rc, doc, err = _doctor(admin_ssh)
        assert rc == 0 and doc["ok"], _failing(doc) or err
        checks = {f["check"]: f for f in doc["findings"]}
        assert checks["kernel release"]["detail"] == "6.1.0-50-amd64"
        assert "_copy_from_iter" in checks["probe self-test"]["detail"]
        assert checks["kprobes"]["detail"] == "enabled" and checks["lockdown"]["detail"] == "none"
        assert "sudo dmesg" in checks["kernel log"]["detail"]
        # the human form ends with the verdict
        text = admin_ssh("sudo -iu student lab doctor", timeout=300).stdout
        assert text.strip().splitlines()[-1] == "lab doctor: the lab can work"
    finally:
        # the self-test module was loaded and unloaded: the VM is reset like after any run
        lab_vm.release(dirty=True)


BROKEN = {
    # headers that belong to another kernel release than the one running
    "wrong kernel headers": (
        "sudo sed -i 's/6.1.0-50-amd64/6.1.0-49-amd64/' /lib/modules/$(uname -r)/build/include/generated/utsrelease.h",
        "kernel headers", "6.1.0-49-amd64", "apt-get install --reinstall linux-headers-6.1.0-50-amd64"),
    "kprobes switched off": (
        "echo 0 | sudo tee /sys/kernel/debug/kprobes/enabled",
        "kprobes", "switched off", "echo 1 | sudo tee /sys/kernel/debug/kprobes/enabled"),
    # the student's sudo rules gone: dmesg (dmesg_restrict=1) and the helper are refused
    "kernel log not readable": (
        "sudo rm /etc/sudoers.d/copylab-student",
        "kernel log", "cannot read the kernel log", "vagrant provision"),
    # lockdown can be raised at run time (never lowered): unsigned modules are refused
    "kernel lockdown": (
        "echo integrity | sudo tee /sys/kernel/security/lockdown",
        "lockdown", "integrity", "Secure Boot"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_lab_doctor_names_the_problem_on_a_broken_vm(lab_vm, admin_ssh, case):
    breaker, check, words, fix = BROKEN[case]
    lab_vm.acquire()
    try:
        admin_ssh(breaker)
        rc, doc, err = _doctor(admin_ssh)
        bad = _failing(doc)
        assert rc == 1 and not doc["ok"], doc
        assert check in bad, f"{case}: {check} not reported: {bad}"
        assert words in bad[check]["detail"], bad[check]
        assert fix in bad[check]["fix"], bad[check]
        if case == "kernel lockdown":
            # the live self-test shows the consequence: the kernel refuses the unsigned module
            assert "probe self-test" in bad, bad
    finally:
        lab_vm.release(dirty=True)
