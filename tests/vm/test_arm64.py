"""The Apple Silicon path, shown rather than assumed: the arm64 lab image is built from the same
ansible definition (foreign-architecture debootstrap under qemu-user-static, then site.yml against the
booted guest), booted under qemu-system-aarch64, and the lab's solution is graded there by the same
engine with the arm64 kernel profile.

Everything here runs on one xdist worker (group "arm64") with ONE arm64 VM: under emulation a boot
costs about half a minute and the image build, on a cold cache, 15-20 minutes (cached after that,
keyed by its inputs like the x86_64 image).
"""
from __future__ import annotations

import json
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
from tests.vm.conftest import booted_vm, built_golden, solution_full_marks

pytestmark = [pytest.mark.xdist_group("arm64"), pytest.mark.vm]

RELEASE = "6.1.0-50-arm64"


@pytest.fixture(scope="module")
def arm64_golden(progress) -> Path:
    progress("arm64 golden image: built from the same ansible definition (cold cache: 15-20 min, "
             "foreign debootstrap + provisioning under emulation), else taken from the cache")
    path = built_golden(progress, "--arch", "arm64", "--stage", "golden")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["arch"] == "arm64" and manifest["qemu_arch"] == "aarch64"
    assert manifest["kernel_release"] == RELEASE
    return path


@pytest.fixture(scope="module")
def arm64_vm(arm64_golden, progress, tmp_path_factory):
    with booted_vm(arm64_golden, progress, tmp_path_factory.mktemp("arm64vm"), "arm64") as vm:
        yield vm


def admin(vm, golden: Path, command: str, timeout: float = 300,
          input: str | None = None) -> subprocess.CompletedProcess:
    m = json.loads((golden / "manifest.json").read_text())
    cmd = ["ssh", "-i", m["admin_key_path"], "-p", str(vm.vm.ssh_port),
           "-o", f"UserKnownHostsFile={vm.vm.known_hosts}", "-o", "StrictHostKeyChecking=yes",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "copylab@127.0.0.1", command]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)


def test_arm64_vm_runs_qemu_system_aarch64_with_its_pinned_kernel(arm64_vm, arm64_golden):
    arm64_vm.acquire()
    try:
        qemu = Path(f"/proc/{arm64_vm.vm._proc.pid}/exe").resolve()
        assert qemu.name == "qemu-system-aarch64", qemu
        r = admin(arm64_vm, arm64_golden, "uname -r; uname -m; dpkg-query -W -f='${Version}\\n' "
                  f"linux-image-{RELEASE}; apt-mark showhold")
        assert r.returncode == 0, r.stderr
        release, machine, version, *held = r.stdout.split()
        assert (release, machine) == (RELEASE, "aarch64")
        assert version == "6.1.176-1"
        # provisioning pinned the kernel: the image and its headers are held
        assert f"linux-image-{RELEASE}" in held and f"linux-headers-{RELEASE}" in held
        # lab doctor, with the kit's manifest, finds nothing wrong on the arm64 VM
        r = admin(arm64_vm, arm64_golden, "sudo -iu student lab doctor --json")
        doc = json.loads(r.stdout)
        bad = [f for f in doc["findings"] if f["status"] == "fail"]
        assert r.returncode == 0 and doc["ok"] and not bad, bad
        names = {f["check"]: f for f in doc["findings"]}
        assert names["architecture"]["detail"] == "aarch64"
        assert names["probe self-test"]["status"] == "ok"
    finally:
        arm64_vm.release(dirty=True)


OFFSETS_C = textwrap.dedent("""\
    // SPDX-License-Identifier: GPL-2.0
    #include <linux/module.h>
    #include <linux/skbuff.h>
    #include <linux/socket.h>
    #include <linux/uio.h>
    static int __init offs_init(void)
    {
    \tpr_info("copylab-offsets: iov_iter_iov_offset=%zu iov_iter_iov=%zu msghdr_msg_iter=%zu sk_buff_data=%zu sk_buff_len=%zu\\n",
    \t\toffsetof(struct iov_iter, iov_offset), offsetof(struct iov_iter, iov),
    \t\toffsetof(struct msghdr, msg_iter), offsetof(struct sk_buff, data),
    \t\toffsetof(struct sk_buff, len));
    \treturn -EAGAIN;
    }
    module_init(offs_init);
    MODULE_LICENSE("GPL");
    """)


def test_arm64_profile_matches_the_running_kernel(arm64_vm, arm64_golden):
    """The independent trace reads struct fields at the profile's offsets: a module compiled against the
    VM's own headers prints them, and every symbol the profile probes exists in the kernel."""
    profile = tomllib.loads((ROOT / "grader" / "profiles" / f"{RELEASE}.toml").read_text())
    arm64_vm.acquire()
    try:
        script = ("set -e; d=$(mktemp -d); cd $d; cat > offs.c; echo 'obj-m := offs.o' > Kbuild; "
                  f"make -s -C /lib/modules/{RELEASE}/build M=$d modules >/dev/null; "
                  "sudo insmod offs.ko 2>/dev/null || true; sudo dmesg | grep copylab-offsets: | tail -n1")
        r = admin(arm64_vm, arm64_golden, script, timeout=600, input=OFFSETS_C)
        assert r.returncode == 0 and "copylab-offsets:" in r.stdout, r.stdout + r.stderr
        seen = dict(kv.split("=") for kv in r.stdout.split("copylab-offsets:")[1].split())
        assert {k: int(v) for k, v in seen.items()} == profile["offsets"]
        # (send_caller_csum only names the checksumming path in hints: it is inlined, as on x86_64)
        syms = " ".join(v for k, v in profile["symbols"].items() if k != "send_caller_csum")
        r = admin(arm64_vm, arm64_golden, f"for s in {syms}; do sudo grep -qw \"$s\" /proc/kallsyms "
                  "&& echo \"$s yes\" || echo \"$s no\"; done")
        found = dict(line.split() for line in r.stdout.splitlines())
        assert set(found.values()) == {"yes"}, found
    finally:
        arm64_vm.release(dirty=True)


def test_solution_gets_full_marks_on_arm64(arm64_vm, tmp_path):
    result = solution_full_marks(arm64_vm, tmp_path, RELEASE, "aarch64")
    # the narrative holds on arm64 too: copy #4's kernel source is copy #1's kernel destination, and the
    # module's records agree with the independent tracefs trace on the callers
    agree = next(c for c in result["checks"] if c["name"] == "agrees_with_trace")
    assert agree["passed"], agree["evidence"]
    kmsg = (tmp_path / "out" / "kmsg.txt").read_text()
    copy1 = [ln for ln in kmsg.splitlines() if "[COPY1]" in ln]
    copy4 = [ln for ln in kmsg.splitlines() if "[COPY4]" in ln]
    assert len(copy1) == 1 and len(copy4) == 1, kmsg
    dest = copy1[0].split("dest=")[1].split()[0]
    src = copy4[0].split("src=")[1].split()[0]
    assert dest == src and dest.startswith("ffff"), (copy1, copy4)
