"""The student path for real: `vagrant validate`, then `vagrant up --provider=libvirt` of the locally
built box (libvirtd started by hand when no init system runs it), provisioning through the Vagrantfile's
ansible provisioner, checks over `vagrant ssh`, `vagrant destroy`.

The VM runs on QEMU's user-mode network with SSH forwarded on 127.0.0.1 (COPYLAB_LIBVIRT_NET=loopback),
so no test traffic leaves loopback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.libvirt


def sh(cmd, timeout=120, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def ensure_libvirtd(progress):
    """Start virtlogd and libvirtd when nothing runs them, and make sure a `default` pool exists."""
    if sh(["virsh", "-c", "qemu:///system", "version"], check=False, timeout=30).returncode != 0:
        progress("starting virtlogd and libvirtd")
        for daemon in ("virtlogd", "libvirtd"):
            if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
                sh([f"/usr/sbin/{daemon}", "-d"])
        deadline = time.monotonic() + 30
        while sh(["virsh", "-c", "qemu:///system", "version"], check=False, timeout=30).returncode != 0:
            assert time.monotonic() < deadline, "libvirtd did not answer within 30 s"
            time.sleep(0.5)
    pools = sh(["virsh", "-c", "qemu:///system", "pool-list", "--all", "--name"]).stdout.split()
    if "default" not in pools:
        Path("/var/lib/libvirt/images").mkdir(parents=True, exist_ok=True)
        sh(["virsh", "-c", "qemu:///system", "pool-define-as", "default", "dir", "--target",
            "/var/lib/libvirt/images"])
    if "default" not in sh(["virsh", "-c", "qemu:///system", "pool-list", "--name"]).stdout.split():
        sh(["virsh", "-c", "qemu:///system", "pool-start", "default"])


@pytest.fixture(scope="module")
def local_box(golden, progress):
    from tests.vm.conftest import run_builder

    r = run_builder(progress, "--stage", "box")
    assert r.returncode == 0, r.stdout[-3000:]
    folder = Path(r.stdout.strip().splitlines()[-1].split("image: ", 1)[-1])
    assert folder == golden, "the box must come from the golden image this session tests"
    assert (folder / "copylab.box").exists()
    return folder


@pytest.fixture
def vagrant_env(tmp_path, local_box):
    from grader.vm.qemu import free_port

    sys.path.insert(0, str(ROOT / "provision" / "image"))
    import build_image

    port = free_port()
    while port > 60000:  # the loopback UDP tunnel uses port + 1 and port + 2
        port = free_port()
    env = dict(build_image.ansible_env(),  # the provisioner's ansible: Mitogen, timeouts
               VAGRANT_CWD=str(ROOT), VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotvagrant"), VAGRANT_DEFAULT_PROVIDER="libvirt",
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1",
               COPYLAB_BOX="local", COPYLAB_LOCAL_BOX_DIR=str(local_box),
               COPYLAB_LIBVIRT_DRIVER="qemu", COPYLAB_LIBVIRT_NET="loopback",
               COPYLAB_SSH_PORT=str(port),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return env


def test_vagrant_validate(vagrant_env):
    r = sh(["vagrant", "validate"], env=vagrant_env, timeout=120)
    assert "validated successfully" in r.stdout


def test_vagrant_validate_refuses_missing_local_box(vagrant_env, tmp_path):
    env = dict(vagrant_env, COPYLAB_LOCAL_BOX_DIR=str(tmp_path / "nothing-here"))
    r = sh(["vagrant", "validate"], env=env, timeout=120, check=False)
    assert r.returncode != 0
    assert "make box" in (r.stdout + r.stderr)


def test_vagrant_up_local_box_provisions_a_lab_vm(vagrant_env, progress):
    ensure_libvirtd(progress)
    env = vagrant_env
    progress("vagrant up --provider=libvirt (local box, software emulation, ansible provisioner)")
    try:
        up = subprocess.run(["vagrant", "up", "--provider=libvirt"], env=env, capture_output=True,
                            text=True, timeout=1500)
        assert up.returncode == 0, f"vagrant up failed:\n{up.stdout[-6000:]}\n{up.stderr[-3000:]}"
        assert "PLAY RECAP" in up.stdout and "failed=0" in up.stdout
        r = sh(["vagrant", "ssh", "-c", "uname -r; sudo ls /home/student/labs/lab1; "
                "sudo test -e /home/student/labs/lab1/solution && echo LEAK || echo no-solutions"],
               env=env, timeout=120)
        out = r.stdout.split()
        assert out[0] == "6.1.0-50-amd64"
        for f in ("sender.c", "receiver.c", "copytrace.c", "Makefile", "Kbuild", "README.md"):
            assert f in out, f"{f} missing in the student's lab folder: {out}"
        assert "no-solutions" in out and "LEAK" not in out
        # the skeleton in the VM is the committed skeleton, byte for byte
        r = sh(["vagrant", "ssh", "-c", "sudo cat /home/student/labs/lab1/copytrace.c"], env=env)
        assert r.stdout.replace("\r\n", "\n") == (ROOT / "labs/lab1/skeleton/copytrace.c").read_text()
    finally:
        d = subprocess.run(["vagrant", "destroy", "-f"], env=env, capture_output=True, text=True, timeout=300)
        subprocess.run(["vagrant", "box", "remove", "--force", "--all",
                        f"copylab/local-{_key(env)}"], env=env, capture_output=True, timeout=120)
        # vagrant-libvirt leaves the box's volume in the storage pool
        vols = sh(["virsh", "-c", "qemu:///system", "vol-list", "default", "--name"], check=False).stdout
        for vol in vols.split():
            if vol.startswith(f"copylab-VAGRANTSLASH-local-{_key(env)}"):
                sh(["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", vol], check=False)
    assert d.returncode == 0, d.stderr
    status = sh(["vagrant", "status"], env=env)
    assert "not created" in status.stdout


def _key(env) -> str:
    import json

    return json.loads((Path(env["COPYLAB_LOCAL_BOX_DIR"]) / "manifest.json").read_text())["key"]
