"""What a student's programs can reach on a grading VM, and what a run leaves on an inventory host.

Real runs on the shared lab VM: once restored from its snapshot (QemuLabVM), and once used as an
inventory host (StaticHostVM: the same QEMU guest over SSH, never restored between jobs).
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from support import lab1_submissions as fx  # noqa: E402

from faults import submissions as fault_subs  # noqa: E402
from grader.engine.labspec import load_lab  # noqa: E402
from grader.engine.run import PROGRAM_USER, RUNS_DIR, grade  # noqa: E402
from grader.errors import VMError  # noqa: E402
from grader.vm.labvm import StaticHostVM  # noqa: E402

SUDO_PROBES = [name for name, cmd in fx.ESCALATIONS.items() if cmd.startswith("sudo ")]


@pytest.fixture(scope="module")
def lab():
    return load_lab("lab1")


@pytest.fixture
def inventory_host(lab_vm):
    """The shared VM, restored once from its clean snapshot, then graded on as an inventory host."""
    lab_vm.acquire()
    return StaticHostVM(host="127.0.0.1", port=lab_vm.vm.ssh_port, key=lab_vm.key,
                        known_hosts=lab_vm.vm.known_hosts, user=lab_vm.manifest.get("grader_user", "grader"))


def graded(lab, vm, tmp_path, kind, files=None):
    sub = tmp_path / kind
    if files is None:
        fx.make_submission(kind, sub)
    else:
        sub.mkdir(parents=True)
        for name, text in files.items():
            (sub / name).write_text(text)
    outcome = grade(lab, vm, sub, tmp_path / f"{kind}-out")
    return outcome.result, outcome.run


def phases(result) -> dict:
    return {p["name"]: p for p in result["phases"]}


def assert_graded_in_full(result):
    failed = {c["name"]: c["evidence"] for c in result["checks"] if not c["passed"]}
    assert result["score"] == result["max_score"] == 100, f"{failed}\n{result['phases']}"


def program_account_state(admin_ssh) -> str:
    """Processes and files of the program account, run folders, lab module and trace instances."""
    r = admin_ssh(f"sudo sh -c 'pgrep -u {PROGRAM_USER} -a; "
                  f"find / /tmp /dev/shm /run -xdev -user {PROGRAM_USER} 2>/dev/null; "
                  f"find {RUNS_DIR} -mindepth 1 -maxdepth 1; "
                  f"test -d /sys/module/copytrace && echo module copytrace loaded; "
                  f"ls /sys/kernel/tracing/instances | grep copylab-; true'")
    return r.stdout.strip()


def test_student_programs_cannot_escalate_and_still_grade(lab, lab_vm, tmp_path):
    result, run = graded(lab, lab_vm, tmp_path, "escalate")
    assert_graded_in_full(result)
    for who, output in (("sender", run.sender_out), ("receiver", run.receiver_out)):
        seen = fx.probes(output)
        assert seen.get("user") == PROGRAM_USER, f"{who}: {output}"
        assert set(fx.ESCALATIONS) <= set(seen), f"{who} did not report every probe: {output}"
        succeeded = {name: code for name, code in seen.items() if name != "user" and code == "0"}
        assert not succeeded, f"{who}'s escalations that worked: {succeeded}"
        # sudo exists and refused (1), rather than being absent (127)
        assert all(seen[name] == "1" for name in SUDO_PROBES), f"{who}: {seen}"


def test_unrecorded_exit_status_on_a_full_disk_fails_the_run(lab, lab_vm, tmp_path):
    fault = next(f for f in fault_subs.FAULTS if f.name == "fill_disk")
    result, run = graded(lab, lab_vm, tmp_path, "fill_disk", files=fault_subs.texts(fault))
    run_phase = phases(result)["run"]
    assert run_phase["status"] == "failed", run_phase
    assert "receiver.rc, the receiver's exit status, is" in run_phase["detail"], run_phase
    assert result["score"] < result["max_score"]
    # the reserve only root may use is all that is left
    assert result["disk_free_after_run_bytes"] is not None
    assert result["disk_free_after_run_bytes"] < 64 << 20, result["disk_free_after_run_bytes"]


def test_inventory_host_is_cleaned_between_jobs(lab, inventory_host, admin_ssh, tmp_path):
    first, first_run = graded(lab, inventory_host, tmp_path, "leave_process")
    assert_graded_in_full(first)
    assert int(fx.probes(first_run.sender_out).get("left", "0")) >= 1, first_run.sender_out
    release = phases(first)["release"]
    assert release["status"] == "ok" and "cleaned up and checked" in release["detail"], release
    assert program_account_state(admin_ssh) == ""
    assert inventory_host.retired is None

    second, second_run = graded(lab, inventory_host, tmp_path, "read_earlier")
    assert_graded_in_full(second)
    seen = fx.probes(second_run.sender_out)
    assert seen.get("earlier-files") == "0" and seen.get("earlier-processes") == "0", second_run.sender_out
    assert program_account_state(admin_ssh) == ""


def test_inventory_host_module_and_trace_left_by_a_dead_run_are_removed(lab, inventory_host, admin_ssh,
                                                                        tmp_path):
    # what a worker killed after `load` leaves behind: a run folder, the module, the trace instance
    rdir = f"{RUNS_DIR}/dead-run"
    sub = fx.make_submission("solution", tmp_path / "solution")
    with inventory_host.executor() as ex:
        assert ex.run(f"mkdir {rdir}", timeout=30).ok
        for name in lab.files:
            ex.put(sub / name, f"{rdir}/{name}")
        for name in lab.build_files:
            ex.put(lab.dir / name, f"{rdir}/{name}")
        helper = "sudo -n /usr/local/libexec/copylab/copylab-helper"
        for cmd in (f"cd {rdir} && make", f"{helper} load {rdir}/copytrace.ko", f"{helper} trace-start dead-run"):
            r = ex.run(cmd, timeout=240)
            assert r.ok, f"{cmd}: {r.stdout}{r.stderr}"
    assert "module copytrace loaded" in program_account_state(admin_ssh)
    assert inventory_host.release(dirty=False).startswith("cleaned up and checked")
    assert program_account_state(admin_ssh) == ""
    inventory_host.acquire()


def test_inventory_host_not_proven_clean_is_retired(lab, inventory_host, admin_ssh):
    # a file of the program account where that account cannot remove it (stands for anything the
    # cleanup cannot undo): the host is retired and refuses the next job
    admin_ssh(f"sudo sh -c 'mkdir -p /var/lib/copylab-stuck && touch /var/lib/copylab-stuck/kept && "
              f"chown {PROGRAM_USER} /var/lib/copylab-stuck/kept'")
    with pytest.raises(VMError, match="files of copylab-run still there: /var/lib/copylab-stuck/kept"):
        inventory_host.release(dirty=False)
    assert "/var/lib/copylab-stuck/kept" in inventory_host.retired
    with pytest.raises(VMError, match="needs an operator reset"):
        inventory_host.acquire()
