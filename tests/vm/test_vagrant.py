"""The student path for real, from the exported student kit: `vagrant validate`, then `vagrant up
--provider=libvirt` of the locally built box (libvirtd started by hand when no init system runs it),
provisioning from inside the VM (ansible_local: the host has no ansible), then again with the host's
ansible (Vagrant's ansible provisioner), the kit's work folder shared as the
student's ~/labs (edits on either side reach the other, the solution written on the host builds in the
VM, what the VM writes belongs to the host user), `./lab doctor` on the host, `vagrant destroy` losing
none of the work.

The VM runs on QEMU's user-mode network with SSH forwarded on 127.0.0.1 (COPYLAB_LIBVIRT_NET=loopback),
so no test traffic leaves loopback."""
from __future__ import annotations

import json
import os
import shlex
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


@pytest.fixture(scope="module")
def kit(tmp_path_factory, progress) -> Path:
    """The student kit exported from this repository (what students get instead of the repo)."""
    from grader.kit import export_kit

    return export_kit(ROOT, tmp_path_factory.mktemp("kit") / "copylab-kit", progress=progress)


@pytest.fixture
def vagrant_env(tmp_path, local_box, kit, progress):
    from grader.vm.qemu import free_port

    from provision.image import build_image

    # the kit's shared folder (virtiofs) asks libvirt for its version even in `vagrant validate`
    ensure_libvirtd(progress)
    port = free_port()
    while port > 60000:  # the loopback UDP tunnel uses port + 1 and port + 2
        port = free_port()
    # a host without ansible (as on Windows): the venv that has it is not on PATH, so the kit's
    # Vagrantfile (COPYLAB_PROVISION=auto) provisions from inside the VM with ansible_local
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d and d != venv_bin)
    assert shutil.which("ansible-playbook", path=path) is None, "ansible-playbook outside the venv"
    env = dict(build_image.ansible_env(),  # for the host-ansible run: Mitogen, timeouts
               VAGRANT_CWD=str(kit), VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotvagrant"), VAGRANT_DEFAULT_PROVIDER="libvirt",
               VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1",
               COPYLAB_BOX="local", COPYLAB_LOCAL_BOX_DIR=str(local_box),
               COPYLAB_LIBVIRT_DRIVER="qemu", COPYLAB_LIBVIRT_NET="loopback",
               COPYLAB_SSH_PORT=str(port), PATH=path)
    env.pop("ANSIBLE_CONFIG", None)
    return env


def with_host_ansible(env: dict) -> dict:
    """The same environment on a host that has ansible (the venv's, with Mitogen)."""
    return dict(env, COPYLAB_PROVISION="ansible", ANSIBLE_CONFIG=str(ROOT / "provision" / "ansible.cfg"),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")


def test_vagrant_validate(vagrant_env):
    r = sh(["vagrant", "validate"], env=vagrant_env, timeout=120)
    assert "validated successfully" in r.stdout


def test_vagrant_validate_refuses_missing_local_box(vagrant_env, tmp_path):
    env = dict(vagrant_env, COPYLAB_LOCAL_BOX_DIR=str(tmp_path / "nothing-here"))
    r = sh(["vagrant", "validate"], env=env, timeout=120, check=False)
    assert r.returncode != 0
    assert "make box" in (r.stdout + r.stderr)


def test_vagrant_validate_refuses_to_share_the_project_or_solutions(vagrant_env, kit, tmp_path):
    r = sh(["vagrant", "validate"], env=dict(vagrant_env, COPYLAB_WORK_DIR="."), timeout=120, check=False)
    assert r.returncode != 0 and "would share this whole folder" in (r.stdout + r.stderr)
    work = tmp_path / "leaky-work"
    (work / "lab1" / "solution").mkdir(parents=True)
    r = sh(["vagrant", "validate"], env=dict(vagrant_env, COPYLAB_WORK_DIR=str(work)), timeout=120, check=False)
    assert r.returncode != 0 and "solutions are never shared" in (r.stdout + r.stderr)


STUDENT_UID = 2345  # the host user owning the kit's work folder (as a student's own account would)


def vssh(env, command: str, timeout: float = 120, check: bool = True):
    r = sh(["vagrant", "ssh", "-c", command], env=env, timeout=timeout, check=check)
    r.stdout = r.stdout.replace("\r\n", "\n")
    return r


# under software emulation: vagrant up with ansible_local (no Mitogen in the VM) 10-14 min (over 20 on a
# host loaded by other VMs), lab 2's network and make check 2-4 min, the second provisioning from the
# host 3-5 min; the suite's default per-test timeout (900 s) is too short
@pytest.mark.timeout(4200)
def test_vagrant_up_from_the_kit_shares_only_the_work_folder(vagrant_env, kit, progress):
    ensure_libvirtd(progress)
    env = vagrant_env
    work = kit / "work"
    work.mkdir(exist_ok=True)  # `vagrant validate` already made it (the Vagrantfile creates it)
    os.chown(work, STUDENT_UID, STUDENT_UID)
    progress("vagrant up --provider=libvirt from the student kit on a host without ansible (local box, "
             "software emulation, ansible_local in the VM, work folder shared through virtiofs)")
    try:
        t0 = time.monotonic()
        up = subprocess.run(["vagrant", "up", "--provider=libvirt"], env=env, capture_output=True,
                            text=True, timeout=2400)
        progress(f"vagrant up (ansible_local) took {time.monotonic() - t0:.0f}s")
        assert up.returncode == 0, f"vagrant up failed:\n{up.stdout[-6000:]}\n{up.stderr[-3000:]}"
        assert "Running provisioner: ansible_local" in up.stdout, up.stdout[-3000:]
        assert "PLAY RECAP" in up.stdout and "failed=0" in up.stdout
        # the box ships ansible-core: nothing was installed; the uploaded provisioning files are gone
        assert "installing ansible-core" not in up.stdout
        r = vssh(env, "test -e /tmp/copylab-provision && echo STAGE-LEFT || echo stage-removed")
        assert "stage-removed" in r.stdout
        out = vssh(env, "uname -r; sudo ls /home/student/labs/lab1; sudo test -e /home/student/labs/lab1/solution"
                   " && echo LEAK || echo no-solutions").stdout.split()
        assert out[0] == "6.1.0-50-amd64"
        for f in ("sender.c", "receiver.c", "copytrace.c", "Makefile", "Kbuild", "README.md"):
            assert f in out, f"{f} missing in the student's lab folder: {out}"
        assert "no-solutions" in out and "LEAK" not in out
        # lab 2's two cards, joined to each other: their MACs, driven by e1000e
        r = vssh(env, "for d in /sys/class/net/*; do echo $(cat $d/address) $(basename $(readlink $d/device/driver)); "
                 "done 2>/dev/null")
        for mac in LAB2_MACS:
            assert f"{mac} e1000e" in r.stdout, r.stdout
        lab2_network_carries_a_datagram(env, work, progress)

        # provisioning put the skeleton into the HOST's work folder, owned by the folder's owner
        skeleton = (ROOT / "labs/lab1/skeleton/copytrace.c").read_text()
        assert (work / "lab1" / "copytrace.c").read_text() == skeleton
        assert (work / "lab1" / "copytrace.c").stat().st_uid == STUDENT_UID
        r = vssh(env, "sudo -iu student stat -c '%U %a' /home/student/labs/lab1/copytrace.c")
        assert r.stdout.split()[0] == "student", r.stdout

        # the VM sees that one folder of the host and nothing else: one virtiofs mount, no /vagrant
        r = vssh(env, "findmnt -rn -t virtiofs -o TARGET; findmnt -rn -o SOURCE,FSTYPE --mountpoint "
                 "/home/student/labs; test -e /vagrant && echo VAGRANT-FOLDER || echo no-vagrant-folder")
        virtiofs, bindfs, vagrant_folder = r.stdout.strip().splitlines()
        assert virtiofs == "/srv/copylab/work" and vagrant_folder == "no-vagrant-folder", r.stdout
        assert bindfs.split()[0] == "/srv/copylab/work" and bindfs.split()[1].startswith("fuse"), r.stdout

        # the student writes the solution on the host; the VM builds it there (make check on a VM's own
        # folder is tests/vm/test_make_check.py: the same engine, so one build is enough here)
        for name in ("sender.c", "receiver.c", "copytrace.c"):
            (work / "lab1" / name).write_text((ROOT / "labs/lab1/solution" / name).read_text())
        (work / "lab1" / "sender.c").write_text((work / "lab1" / "sender.c").read_text() + "/* host edit */\n")
        progress("make in the VM on the host's files")
        r = vssh(env, "sudo -iu student bash -lc 'cd ~/labs/lab1 && tail -n1 sender.c && make'", timeout=900,
                 check=False)
        assert "/* host edit */" in r.stdout, r.stdout[-3000:]
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        # what the VM wrote is the host's, owned by the folder's owner
        for built in ("sender", "receiver", "copytrace.ko"):
            assert (work / "lab1" / built).is_file(), built
            assert (work / "lab1" / built).stat().st_uid == STUDENT_UID, built
        vssh(env, "sudo -iu student sh -c 'echo \"/* vm edit */\" >> ~/labs/lab1/receiver.c'")
        assert (work / "lab1" / "receiver.c").read_text().endswith("/* vm edit */\n")

        # a host WITH ansible provisions the same VM from outside (Vagrant's ansible provisioner):
        # the one definition, run from the other side, finds nothing to fix
        progress("vagrant provision with the host's ansible")
        t0 = time.monotonic()
        prov = subprocess.run(["vagrant", "provision"], env=with_host_ansible(env), capture_output=True,
                              text=True, timeout=1200)
        progress(f"vagrant provision (host ansible) took {time.monotonic() - t0:.0f}s")
        assert prov.returncode == 0, f"vagrant provision failed:\n{prov.stdout[-6000:]}\n{prov.stderr[-2000:]}"
        assert "Running provisioner: ansible..." in prov.stdout and "ansible_local" not in prov.stdout
        assert "failed=0" in prov.stdout, prov.stdout[-3000:]
        assert (work / "lab1" / "receiver.c").read_text().endswith("/* vm edit */\n")

        # the host-side doctor: the host, then the VM's own doctor through vagrant ssh
        progress("./lab doctor on the host")
        r = sh([sys.executable, str(kit / "lab"), "doctor", "--json"], env=env, timeout=600, check=False)
        doc = json.loads(r.stdout)
        bad = [f for f in doc["findings"] if f["status"] == "fail"]
        assert r.returncode == 0 and doc["ok"] and not bad, bad or r.stderr
        checks = {f["check"]: f for f in doc["findings"]}
        assert {"vagrant", "provider", "lab VM", "vm: kernel release", "vm: probe self-test",
                "vm: clock vs host"} <= set(checks), checks
        # lab 2's cards, their probe points and the network `make net` set up, all found working
        for name in ("vm: lab2 cards", "vm: lab2 probes", "vm: lab2 network"):
            assert checks.get(name, {}).get("status") == "ok", checks.get(name, checks)
        for mac in LAB2_MACS:
            assert f"({mac}, e1000e)" in checks["vm: lab2 cards"]["detail"], checks["vm: lab2 cards"]
    finally:
        d = subprocess.run(["vagrant", "destroy", "-f"], env=env, capture_output=True, text=True, timeout=300)
        subprocess.run(["vagrant", "box", "remove", "--force", "--all",
                        f"copylab/local-{_key(env)}"], env=env, capture_output=True, timeout=120)
        # vagrant-libvirt leaves the box's volume in the storage pool
        # (libvirt 9's vol-list has no --name: the first column below the two header lines)
        listing = sh(["virsh", "-c", "qemu:///system", "vol-list", "default"], check=False).stdout
        for vol in (line.split()[0] for line in listing.splitlines()[2:] if line.strip()):
            if vol.startswith(f"copylab-VAGRANTSLASH-local-{_key(env)}"):
                sh(["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", vol], check=False)
    assert d.returncode == 0, d.stderr
    left = sh(["virsh", "-c", "qemu:///system", "vol-list", "default"], check=False).stdout
    assert f"local-{_key(env)}" not in left, f"the box's volume is left in the pool:\n{left}"
    status = sh(["vagrant", "status"], env=env)
    assert "not created" in status.stdout
    # destroying the VM lost none of the student's work
    assert (work / "lab1" / "sender.c").read_text().endswith("/* host edit */\n")
    assert (work / "lab1" / "receiver.c").read_text().endswith("/* vm edit */\n")


LAB2_MACS = ("52:54:00:00:0a:01", "52:54:00:00:0b:01")  # grader/vm/qemu.py NIC_PAIR, the Vagrantfile's LAB_NICS
HELPER = "/usr/local/libexec/copylab/copylab-helper"


def _json_line(text: str) -> dict:
    """The last JSON object line of a command's output (the helper's net-status)."""
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def lab2_network_carries_a_datagram(env, work: Path, progress) -> None:
    """As the handout tells students: `make net` in the lab 2 folder, the receiver inside copylab-rx
    through the helper's net-run, the sender in the first namespace: the datagram leaves through one
    card and arrives through the other (the only way between the two namespaces), and `make check`
    names the checks only the official grader runs."""
    for name in ("sender.c", "receiver.c"):  # the lab's programs (the skeleton's leave send/recv as TODOs)
        (work / "lab2" / name).write_text((ROOT / "labs/lab2/solution" / name).read_text())
    as_student = "sudo -iu student bash -lc "
    r = vssh(env, as_student + "'cd ~/labs/lab2 && make net'", timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    before = _json_line(r.stdout)
    assert before["ready"], before
    sender, receiver = before["nics"]
    assert [n["driver"] for n in before["nics"]] == ["e1000e", "e1000e"], before
    assert (sender["namespace"], receiver["namespace"]) == ("", "copylab-rx"), before
    progress("lab 2 network up in the kit VM; sender -> receiver across the two cards")
    # no $PWD here: sudo -i leaves $ unescaped, so the login shell would expand it in the home folder
    script = (f"cd ~/labs/lab2 && make -s sender receiver && "
              f"(sudo {HELPER} net-run -t 60 - /home/student/labs/lab2/receiver 169.254.10.2 9999 "
              "> ~/receiver.log 2>&1 &) && "
              "for i in $(seq 150); do grep -q listening ~/receiver.log && break; sleep 0.2; done && "
              "./sender HELLO_SEND_TRACE 169.254.10.2 9999 && "
              "for i in $(seq 150); do grep -q received ~/receiver.log && break; sleep 0.2; done; "
              f"cat ~/receiver.log; sudo {HELPER} net-status")
    r = vssh(env, as_student + shlex.quote(script), timeout=300, check=False)
    assert 'receiver: received 16 bytes "HELLO_SEND_TRACE"' in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    after = _json_line(r.stdout)
    # both sides of the cable counted the frames: out of the first card, into the second
    assert after["nics"][0]["tx_packets"] > sender["tx_packets"], (before, after)
    assert after["nics"][1]["rx_packets"] > receiver["rx_packets"], (before, after)

    t0 = time.monotonic()
    r = vssh(env, as_student + "'cd ~/labs/lab2 && make check'", timeout=900, check=False)
    progress(f"make check of lab 2 (the programs, the skeleton's module) took {time.monotonic() - t0:.0f}s")
    out = r.stdout
    assert "[PASS] programs_report" in out, out[-4000:] + r.stderr[-2000:]
    assert "only the official grader runs tx_card_read, rx_card_write (30 points)" in out, out[-4000:]
    # the skeleton's TODOs leave other checks failing: copylab-check exits 1, make reports it (and exits 2)
    assert r.returncode == 2 and "check] Error 1" in out + r.stderr, out[-3000:] + r.stderr[-1000:]


def _key(env) -> str:
    import json

    return json.loads((Path(env["COPYLAB_LOCAL_BOX_DIR"]) / "manifest.json").read_text())["key"]
