"""The QEMU runner on the shared lab VM: crash detection from the console and snapshot restore."""
from __future__ import annotations

import time

import pytest

from grader.vm.qemu import QemuVM, VMStartError


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
