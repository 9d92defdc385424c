"""QEMU's confinement: the seccomp sandbox on every command line, the account it runs as, and the files
it gets as descriptors instead of paths. The last test starts the real QEMU binary (no guest) under
both and reads what the kernel says about it."""
from __future__ import annotations

import fcntl
import os
import pwd
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from grader.vm.qemu import (DEFAULT_QEMU_USER, SANDBOX, ImageSpec, QemuAccount, QemuFiles, QemuVM,
                            VMStartError, qemu_account, read_confinement, spawn_qemu)


def chain(tmp_path: Path) -> tuple[Path, Path]:
    """base.qcow2 <- golden.qcow2 (the image cache's two layers), real qcow2 files."""
    base, golden = tmp_path / "base.qcow2", tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(golden)],
                   check=True)
    return base, golden


@pytest.fixture
def vm(tmp_path):
    base, golden = chain(tmp_path)
    for name in ("vmlinuz", "initrd"):
        (tmp_path / name).write_bytes(b"\0" * 64)
    image = ImageSpec(disk=golden, kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", cmdline="quiet")
    v = QemuVM(image=image, workdir=tmp_path / "vm", name="lab")
    v.create_overlay()
    return v


def access_mode(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE


def fdset_fds(files: QemuFiles, path: str) -> list[int]:
    """The descriptors ``files`` put into the fdset named by ``path`` (/dev/fdset/N)."""
    n = path.rsplit("/", 1)[1]
    args = [files.args[i + 1] for i, a in enumerate(files.args) if a == "-add-fd"]
    return [int(a.split(",")[0][3:]) for a in args if a.endswith(f",set={n}")]


def option(cmd: list[str], flag: str, startswith: str = "") -> str:
    return next(cmd[i + 1] for i, a in enumerate(cmd) if a == flag and cmd[i + 1].startswith(startswith))


def test_every_lab_vm_runs_under_the_seccomp_sandbox(vm):
    with QemuFiles() as files:
        cmd = vm._qemu_command(2222, "clean", files)
    assert option(cmd, "-sandbox") == SANDBOX
    for group in ("obsolete=deny", "elevateprivileges=deny", "spawn=deny", "resourcecontrol=deny"):
        assert group in SANDBOX.split(",")
    assert SANDBOX.startswith("on,")
    assert cmd[cmd.index("-loadvm") + 1] == "clean"   # resuming the snapshot is unaffected


def test_qemu_gets_descriptors_not_paths_of_the_grader(vm, tmp_path):
    """Nothing on the command line names a file in the workdir or the image cache, except -name (a
    label that QEMU never opens)."""
    with QemuFiles() as files:
        cmd = vm._qemu_command(2222, None, files)
        named = [a for i, a in enumerate(cmd) if str(tmp_path) in a and cmd[i - 1] != "-name"]
        assert named == []
        assert option(cmd, "-name") == str(vm.overlay)

        drive = dict(kv.split("=", 1) for kv in option(cmd, "-drive").split(","))
        overlay = fdset_fds(files, drive["file"])
        assert sorted(access_mode(fd) for fd in overlay) == sorted([os.O_RDWR, os.O_RDONLY])
        assert all(os.fstat(fd).st_ino == vm.overlay.stat().st_ino for fd in overlay)
        # the backing chain is given layer by layer, read-only: QEMU never follows the names in the images
        golden, base = fdset_fds(files, drive["backing.file.filename"]), \
            fdset_fds(files, drive["backing.backing.file.filename"])
        assert drive["backing.driver"] == drive["backing.backing.driver"] == "qcow2"
        assert [access_mode(fd) for fd in golden + base] == [os.O_RDONLY, os.O_RDONLY]
        assert os.fstat(golden[0]).st_ino == vm.image.disk.stat().st_ino
        assert os.fstat(base[0]).st_ino == (tmp_path / "base.qcow2").stat().st_ino

        serial = option(cmd, "-chardev", "file,")
        assert "append=on" in serial.split(",")
        (fd,) = fdset_fds(files, serial.rsplit("path=", 1)[1])
        assert access_mode(fd) == os.O_WRONLY and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
        assert os.fstat(fd).st_ino == vm.serial_log.stat().st_ino

        monitor = option(cmd, "-chardev", "socket,")
        fd = int(monitor.rsplit("fd=", 1)[1])
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)
        with socket.socket(fileno=os.dup(fd)) as s:
            assert s.getsockname() == str(vm.monitor_path)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1

        kernel = option(cmd, "-kernel")
        assert kernel.startswith("/proc/self/fd/")
        assert os.fstat(int(kernel.rsplit("/", 1)[1])).st_ino == vm.image.kernel.stat().st_ino
        assert set(files.fds) >= set(overlay + golden + base)
    assert files.fds == []


def test_an_empty_account_name_keeps_the_graders_own_user():
    acc = qemu_account("")
    assert not acc.switched and acc.uid == os.geteuid() and acc.popen_kwargs() == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root grader switches accounts")
def test_a_root_grader_refuses_a_missing_account_clearly():
    with pytest.raises(VMStartError) as e:
        qemu_account("copylab-no-such-account")
    assert "does not exist" in str(e.value) and "make deps" in str(e.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root grader switches accounts")
def test_a_root_grader_switches_to_the_configured_account(monkeypatch):
    pw = pwd.getpwnam(DEFAULT_QEMU_USER)   # created by `make deps`
    monkeypatch.delenv("COPYLAB_QEMU_USER", raising=False)
    acc = qemu_account()
    assert acc.switched and (acc.uid, acc.gid) == (pw.pw_uid, pw.pw_gid) and acc.uid != 0
    assert acc.popen_kwargs() == {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": list(acc.groups)}
    monkeypatch.setenv("COPYLAB_QEMU_USER", "")
    assert not qemu_account().switched


def test_a_grader_that_is_not_root_cannot_switch_and_says_so(monkeypatch):
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(os, "geteuid", lambda: nobody.pw_uid)
    acc = qemu_account(DEFAULT_QEMU_USER)
    assert not acc.switched and acc.name == "nobody" and "not root" in acc.why


def test_the_accounts_own_permissions_decide_access(tmp_path):
    """/dev/kvm and the like: mode bits against the account's uid and groups, not the grader's."""
    f = tmp_path / "dev"
    f.write_text("")
    st = f.stat()
    other = QemuAccount("vmacct", st.st_uid + 4242, st.st_gid + 4242, (st.st_gid + 4242,), True, "test")
    member = QemuAccount("vmacct", st.st_uid + 4242, st.st_gid + 4242, (st.st_gid + 4242, st.st_gid), True, "test")
    os.chmod(f, 0o600)
    assert not other.may_open(str(f), 6) and not member.may_open(str(f), 4)
    os.chmod(f, 0o660)
    assert member.may_open(str(f), 6) and not other.may_open(str(f), 4)
    os.chmod(f, 0o644)
    assert other.may_open(str(f), 4) and not other.may_open(str(f), 6)


def test_real_qemu_runs_sandboxed_as_the_account_with_only_its_descriptors(tmp_path):
    """The real binary, no guest (-machine none): its /proc status shows the seccomp filter (mode 2)
    and the account's uid; its monitor answers on the socket bound by the grader in a folder the
    account cannot enter."""
    acc = qemu_account()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    files = QemuFiles()
    cmd = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
           "-sandbox", SANDBOX,
           "-chardev", f"socket,id=m,server=on,wait=off,fd={files.listening_socket(private / 'mon')}",
           "-mon", "chardev=m,mode=readline",
           "-chardev", "file,id=s,append=on,path=" + files.fdset(private / "serial.log",
                                                                 os.O_WRONLY | os.O_CREAT | os.O_APPEND),
           "-serial", "chardev:s"]
    proc = spawn_qemu(cmd, files, acc, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        answer = b""
        while time.monotonic() < deadline and b"(qemu)" not in answer:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(5)
                    s.connect(str(private / "mon"))
                    answer = s.recv(4096)
            except OSError:
                time.sleep(0.1)
        assert b"(qemu)" in answer
        c = read_confinement(proc.pid)
        assert c["seccomp"] == 2
        assert c["uid"] == acc.uid and c["user"] == acc.name
        if os.geteuid() == 0:
            assert c["uid"] != 0
            assert (private / "serial.log").stat().st_uid == 0   # opened by the grader, not by QEMU
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root grader switches accounts")
def test_the_worker_refuses_an_account_that_could_read_the_database_store_or_secret():
    """Tried for real, as the account: an instance in a folder it can enter, with the modes a umask of
    022 gives, is refused, naming each path; the same instance made private is accepted."""
    import shutil
    import tempfile

    from grader.service.pool import check_qemu_account

    top = Path(tempfile.mkdtemp(prefix="copylab-qemu-acct-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        inst = top / "instance"
        (inst / "store").mkdir(parents=True, mode=0o755)
        os.chmod(inst, 0o755)
        for name in ("config.py", "grader.sqlite3"):
            (inst / name).write_text("SECRET_KEY = 'x'\n")
            os.chmod(inst / name, 0o644)
        config = {"POOL_QEMU_USER": DEFAULT_QEMU_USER, "STORE_DIR": str(inst / "store"),
                  "SQLALCHEMY_DATABASE_URI": f"sqlite:///{inst / 'grader.sqlite3'}"}
        with pytest.raises(VMStartError) as e:
            check_qemu_account(config, inst)
        for name in ("config.py", "grader.sqlite3", "store"):
            assert str(inst / name) in str(e.value)
        assert "chmod 700" in str(e.value)

        # enterable, with nothing inside readable by others today: refused all the same, since files
        # created there later (the database at init-db) would be within reach
        os.chmod(inst, 0o711)
        for name in ("config.py", "grader.sqlite3"):
            os.chmod(inst / name, 0o600)
        os.chmod(inst / "store", 0o700)
        with pytest.raises(VMStartError) as e:
            check_qemu_account(config, inst)
        assert f"could read {inst}:" in str(e.value)
        os.chmod(inst, 0o700)
        assert check_qemu_account(config, inst).name == DEFAULT_QEMU_USER
        # an empty POOL_QEMU_USER: QEMU as the worker itself, nothing to check against
        assert not check_qemu_account(dict(config, POOL_QEMU_USER=""), inst).switched
    finally:
        shutil.rmtree(top)


def test_the_nic_pair_joins_two_e1000e_cards_on_a_hub_inside_qemu(vm):
    with QemuFiles() as files:
        plain = vm._qemu_command(2222, None, files)
        vm.nic_pair = True
        paired = vm._qemu_command(2222, None, files)
    assert "e1000e" not in " ".join(plain)
    devices = [paired[i + 1] for i, a in enumerate(paired) if a == "-device" and "e1000e" in paired[i + 1]]
    netdevs = [paired[i + 1] for i, a in enumerate(paired) if a == "-netdev" and "hubport" in paired[i + 1]]
    assert devices == ["e1000e,netdev=lab0,mac=52:54:00:00:0a:01", "e1000e,netdev=lab1,mac=52:54:00:00:0b:01"]
    # both ends on hub 1 and nothing else on it: no host socket, no user-mode network
    assert netdevs == ["hubport,id=lab0,hubid=1", "hubport,id=lab1,hubid=1"]
    assert option(paired, "-netdev", "user,").endswith("restrict=on")
