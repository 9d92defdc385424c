"""The QEMU runner on the shared lab VM: crash detection from the console, snapshot restore, and the
confinement of the QEMU process (seccomp sandbox, its own account) through all of it."""
from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from grader.vm.qemu import DEFAULT_QEMU_USER, QemuVM, VMStartError


def assert_confined(lab_vm) -> dict:
    """The running QEMU as the kernel sees it: seccomp mode 2 (QEMU's -sandbox filter) and, for a root
    grader, the unprivileged VM account in every uid/gid field and no other group."""
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{lab_vm.vm._proc.pid}/status").read_text().splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2", status["Seccomp"]
    assert status["NoNewPrivs"].strip() == "1"
    uids = {int(u) for u in status["Uid"].split()}
    if os.geteuid() == 0:
        pw = pwd.getpwnam(os.environ.get("COPYLAB_QEMU_USER", DEFAULT_QEMU_USER))
        assert uids == {pw.pw_uid} and pw.pw_uid != 0
        assert {int(g) for g in status["Gid"].split()} == {pw.pw_gid}
        assert {int(g) for g in status["Groups"].split()} <= set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        assert int(status["CapEff"], 16) == 0
    env = lab_vm.environment()["qemu"]
    assert env["sandbox"] is True and env["seccomp"] == 2 and {env["uid"]} == uids
    return env


def test_kernel_panic_is_detected_and_the_snapshot_brings_ssh_back(lab_vm, admin_ssh, progress):
    lab_vm.acquire()
    admin_ssh("echo before > /tmp/marker")
    # crash the guest kernel for real (sysrq 'c': a NULL dereference inside the kernel)
    r = admin_ssh("sudo sh -c 'echo c > /proc/sysrq-trigger'", check=False, timeout=60)
    assert r.returncode != 0  # the connection died with the kernel
    deadline = time.monotonic() + 60
    while lab_vm.vm.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not lab_vm.vm.running(), "oops=panic panic=-1 with -no-reboot should end QEMU"
    excerpt = lab_vm.crash_excerpt()
    assert excerpt and "Kernel panic" in excerpt and "sysrq" in excerpt.lower()
    assert not lab_vm.alive()
    seconds = lab_vm.reset()
    progress(f"restore after a kernel panic: SSH back in {seconds:.1f}s")
    assert lab_vm.alive() and lab_vm.crash_excerpt() is None
    assert_confined(lab_vm)   # the QEMU started with -loadvm after the panic is confined like the first
    # the restored VM is the clean one: the marker written before the crash is gone
    assert admin_ssh("test -e /tmp/marker && echo dirty || echo clean").stdout.strip() == "clean"
    with lab_vm.executor() as ex:
        assert ex.run("uname -r", timeout=30).stdout.strip() == "6.1.0-50-amd64"


def test_restore_of_a_running_vm_discards_its_changes(lab_vm, admin_ssh, progress):
    lab_vm.acquire()
    admin_ssh("sudo touch /etc/copylab-dirty")
    seconds = lab_vm.reset()
    progress(f"restore of a running VM: SSH back in {seconds:.1f}s")
    assert admin_ssh("test -e /etc/copylab-dirty && echo dirty || echo clean").stdout.strip() == "clean"
    assert_confined(lab_vm)


def test_qemu_runs_sandboxed_as_its_own_account_that_reaches_none_of_the_graders_files(lab_vm, golden, progress):
    lab_vm.acquire()
    env = assert_confined(lab_vm)
    progress(f"QEMU {lab_vm.vm._proc.pid}: seccomp {env['seccomp']}, uid {env['uid']} ({env['user']})")
    if os.geteuid() != 0:
        return
    # what QEMU works on it reached through descriptors only: by path, its account opens none of it
    for path in (lab_vm.vm.overlay, lab_vm.vm.serial_log, lab_vm.key, golden / "manifest.json"):
        r = subprocess.run(["cat", str(path)], user=env["uid"], group=pwd.getpwuid(env["uid"]).pw_gid,
                           extra_groups=[], capture_output=True, timeout=30)
        assert r.returncode != 0 and b"Permission denied" in r.stderr, path


def test_grader_host_key_is_pinned_from_the_console(lab_vm):
    text = lab_vm.vm.known_hosts.read_text()
    assert text.startswith(f"[127.0.0.1]:{lab_vm.vm.ssh_port} ssh-ed25519 ")
    assert lab_vm.vm.hostkey in text


def test_a_vm_that_never_answers_is_killed_with_a_clear_message(golden, tmp_path):
    """A guest that cannot boot (no root file system) ends with one message and no QEMU left."""
    from grader.vm.labvm import QemuLabVM

    lab = QemuLabVM(golden=golden, workdir=tmp_path, name="broken", boot_timeout=20)
    lab.vm.image.cmdline = lab.vm.image.cmdline.replace("root=/dev/vda", "root=/dev/nonexistent") \
        .replace("panic=-1", "panic=0")
    with pytest.raises(VMStartError) as e:
        lab.prepare()
    assert "did not answer SSH" in str(e.value) or "exited while booting" in str(e.value)
    assert not lab.vm.running()
    lab.close()


def test_a_port_in_use_is_replaced_not_fatal(golden, tmp_path, golden_manifest):
    """QEMU losing the forwarded port to another listener picks another port."""
    import socket

    from grader.vm.qemu import ImageSpec

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        image = ImageSpec(disk=golden / golden_manifest["disk"], kernel=golden_manifest["kernel_path"],
                          initrd=golden_manifest["initrd_path"], cmdline=golden_manifest["cmdline"])
        vm = QemuVM(image=image, workdir=tmp_path, name="port", ssh_port=port)
        try:
            vm.start(wait=False)
            assert vm.running() and vm.ssh_port != port
        finally:
            vm.destroy()
        assert not vm.running()
