"""QEMU runner for lab VMs.

One overlay per VM on top of a golden image, KVM when it really works (else TCG), SSH waited for with a
timeout, a clean internal snapshot saved and restored in seconds, crashed guests detected from the serial
log and recovered, and QEMU killed on every error path: no leaked processes or ports.

The guest prints its SSH host key on the console at first boot (``COPYLAB-HOSTKEY <type> <key>``); the
runner pins it from there, so no key is ever learned over the network.

Confinement: every QEMU runs under its own seccomp filter (``-sandbox``, ``SANDBOX``) and, when the grader
is root, as an unprivileged account of its own (``COPYLAB_QEMU_USER``, default ``copylab-qemu``). QEMU
opens no file of the grader by path: the overlay, the image chain, the serial log and the monitor socket
are opened here and handed over as descriptors (``QemuFiles``), so the account needs no access to the
instance folder or the image cache, and gets none.
"""
from __future__ import annotations

import json
import queue
import os
import pwd
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from grader.errors import VMError

HOSTKEY_RE = re.compile(r"COPYLAB-HOSTKEY (ssh-ed25519 [A-Za-z0-9+/=]+)")
# Oopses and panics only. RCU stall and soft-lockup reports are watchdog warnings: under software
# emulation on a loaded host (and after loadvm, when guest time jumps) a starved vCPU prints them with
# no fault at all, so they are no crash verdict; a guest that really hangs fails its phase's timeout.
CRASH_RE = re.compile(
    r"(BUG: (?!soft lockup)[^\r\n]*|Oops[^\r\n]*|Kernel panic[^\r\n]*|general protection fault[^\r\n]*)"
)
QEMU_BINARIES = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}
# QEMU's seccomp filter (QEMU 7.2 on Debian 12 has all four groups): no obsolete system calls, no
# set*uid/gid, no fork/exec, no scheduler or priority changes. Nothing the runner uses needs them:
# savevm/loadvm, -loadvm, file chardevs, the monitor socket and user-mode networking are all in-process.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
DEFAULT_QEMU_USER = "copylab-qemu"


class VMStartError(VMError):
    """QEMU could not start the guest, or the guest never answered."""


class VMCrashed(VMError):
    """The guest kernel crashed (oops, panic) or QEMU ended unexpectedly."""

    def __init__(self, message: str, excerpt: str = ""):
        super().__init__(message)
        self.excerpt = excerpt


@dataclass
class ImageSpec:
    """What a VM boots: a disk image and, for direct kernel boot, the kernel, initrd and command line."""

    disk: Path
    kernel: Path
    initrd: Path
    cmdline: str
    arch: str = "x86_64"


def free_port(host: str = "127.0.0.1", preferred: int = 0) -> int:
    """A TCP port that is free right now on host: ``preferred`` when it is, else any (the caller may still
    lose a race: QEMU's start() retries). The one port finder of the product, the tools and the tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, preferred))
        except OSError:
            s.bind((host, 0))
        return s.getsockname()[1]


def ssh_banner(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an SSH server answers with its banner on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@dataclass(frozen=True)
class QemuAccount:
    """The account QEMU runs as: ``switched`` when it is not the grader's own."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    switched: bool
    why: str

    def popen_kwargs(self) -> dict:
        if not self.switched:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def may_open(self, path: str, want: int) -> bool:
        """Whether this account's uid/groups pass the mode bits of ``path`` for ``want`` (a mask of 4 r,
        2 w, 1 x); for the grader's own account, os.access."""
        if not self.switched:
            return os.access(path, (os.R_OK if want & 4 else 0) | (os.W_OK if want & 2 else 0)
                             | (os.X_OK if want & 1 else 0))
        st = os.stat(path)
        if st.st_uid == self.uid:
            bits = st.st_mode >> 6
        elif st.st_gid == self.gid or st.st_gid in self.groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & want == want

    def reachable(self, paths: list[Path]) -> list[Path]:
        """Those of ``paths`` this account can read (a file) or enter or list (a folder), tried for real
        by a shell running as the account; for the grader's own account, every existing one."""
        paths = [p for p in paths if p.exists()]
        if not self.switched or not paths:
            return paths
        script = ('for p; do if [ -d "$p" ]; then { [ -r "$p" ] || [ -x "$p" ]; } else [ -r "$p" ]; fi '
                  '&& echo "$p"; done; exit 0')
        r = subprocess.run(["/bin/sh", "-c", script, "sh", *map(str, paths)], capture_output=True, text=True,
                           timeout=30, check=True, cwd="/", **self.popen_kwargs())
        return [Path(line) for line in r.stdout.splitlines()]


def qemu_account(name: str | None = None) -> QemuAccount:
    """Who QEMU runs as. ``name`` None: ``COPYLAB_QEMU_USER``, else ``copylab-qemu``; an empty name: the
    grader's own user. Only a root grader can switch; as root, a missing account is refused (a root
    QEMU is never the silent fallback)."""
    if name is None:
        name = os.environ.get("COPYLAB_QEMU_USER", DEFAULT_QEMU_USER)
    me = pwd.getpwuid(os.geteuid())

    def own(why: str) -> QemuAccount:
        return QemuAccount(me.pw_name, me.pw_uid, os.getegid(), tuple(os.getgroups()), False, why)

    if not name or name == me.pw_name:
        return own("no separate QEMU account configured (COPYLAB_QEMU_USER / POOL_QEMU_USER is empty or "
                   "names the grader's own user)")
    if os.geteuid() != 0:
        return own(f"the grader runs as {me.pw_name}, not root, so it cannot start QEMU as {name}")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise VMStartError(
            f"QEMU's account {name!r} does not exist: create it with `make deps` (or `useradd --system "
            f"--user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name}`), "
            f"or set COPYLAB_QEMU_USER / GRADER_POOL_QEMU_USER to an empty value to run QEMU as root") from None
    if pw.pw_uid == 0:
        raise VMStartError(f"QEMU's account {name!r} has uid 0: it must be an unprivileged account")
    return QemuAccount(name, pw.pw_uid, pw.pw_gid, tuple(os.getgrouplist(name, pw.pw_gid)), True,
                       f"the grader is root and starts QEMU as {name}")


class QemuFiles:
    """The files of one QEMU process, opened here and handed to it as descriptors.

    ``-add-fd`` sets (``/dev/fdset/N``) serve QEMU's block and chardev layers, which pick the
    descriptor of the access mode they ask for (an image is opened read-only first, then read-write);
    ``-kernel``/``-initrd`` are read with plain open(), so they get ``/proc/self/fd/N`` (the file must be
    readable by QEMU's account; the directories above it need not be). The monitor socket is bound here.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.args: list[str] = []
        self._sockets: list[socket.socket] = []
        self._sets = 0

    def fdset(self, path: Path, *flags: int) -> str:
        self._sets += 1
        n = self._sets
        for fl in flags:
            fd = os.open(path, fl | os.O_CLOEXEC, 0o600)
            self.fds.append(fd)
            self.args += ["-add-fd", f"fd={fd},set={n}"]
        return f"/dev/fdset/{n}"

    def inherited(self, path: Path) -> str:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def listening_socket(self, path: Path) -> int:
        path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.listen(8)
        self._sockets.append(s)
        self.fds.append(s.fileno())
        return s.fileno()

    def tcp_listening_socket(self, host: str = "127.0.0.1") -> tuple[int, int]:
        """A TCP socket listening on host at a port the kernel picks (no race with other processes):
        (descriptor, port)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))
        s.listen(1)
        self._sockets.append(s)
        self.fds.append(s.fileno())
        return s.fileno(), s.getsockname()[1]

    def close(self) -> None:
        """The parent's copies: QEMU keeps its own."""
        socket_fds = {s.fileno() for s in self._sockets}
        for s in self._sockets:
            s.close()
        for fd in self.fds:
            if fd not in socket_fds:
                os.close(fd)
        self.fds, self._sockets = [], []

    def __enter__(self) -> "QemuFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_confinement(pid: int) -> dict:
    """What the kernel says about a running QEMU: its seccomp mode (2: filter) and real uid."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    uid = int(status["Uid"].split()[0])
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    return {"seccomp": int(status.get("Seccomp", "0").strip()), "uid": uid, "user": user}


def spawn_qemu(cmd: list[str], files: QemuFiles, account: QemuAccount, **kw) -> subprocess.Popen:
    """Start ``cmd`` with ``files``' descriptors, as ``account``; the parent's copies of the
    descriptors are closed."""
    try:
        return _Spawner.popen([*cmd, *files.args], pass_fds=files.fds,
                              start_new_session=True, **account.popen_kwargs(), **kw)
    finally:
        files.close()


@dataclass
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def _kvm_usable_device(account: QemuAccount) -> bool:
    return os.path.exists("/dev/kvm") and account.may_open("/dev/kvm", 6)


def probe_accel(image: ImageSpec, workdir: Path, timeout: float = 12.0,
                account: QemuAccount | None = None) -> AccelChoice:
    """Decide between KVM and TCG within seconds.

    /dev/kvm can exist and still be unable to run a stock kernel (nested PVM devices abort on unknown
    MSRs or stall in early boot). So boot the image's kernel with no disk under KVM: a working KVM
    reaches the root-mount panic in a second or two; anything else within ``timeout`` means TCG.
    ``COPYLAB_ACCEL=kvm|tcg`` forces the choice. The probe runs confined like the VM, as ``account``
    (whose groups decide whether /dev/kvm opens at all).
    """
    forced = os.environ.get("COPYLAB_ACCEL", "auto").lower()
    if forced in ("kvm", "tcg"):
        return AccelChoice(forced, f"forced by COPYLAB_ACCEL={forced}")
    account = account or qemu_account()
    if not _kvm_usable_device(account):
        return AccelChoice("tcg", f"/dev/kvm is missing or not accessible to {account.name}")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "kvm-probe.log"
    log.unlink(missing_ok=True)
    console = "ttyAMA0" if image.arch == "aarch64" else "ttyS0"
    files = QemuFiles()
    cmd = [QEMU_BINARIES[image.arch], "-name", str(workdir / "kvm-probe"), "-accel", "kvm", "-cpu", "host",
           "-m", "256", "-nodefaults",
           "-display", "none", "-no-reboot", "-sandbox", SANDBOX,
           "-chardev", f"file,id=serial0,path={files.fdset(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)}",
           "-serial", "chardev:serial0", "-kernel", files.inherited(image.kernel),
           "-append", f"console={console} panic=-1 root=/dev/nonexistent"]
    if image.arch == "aarch64":
        cmd[1:1] = ["-machine", "virt"]
    started = time.monotonic()
    proc = spawn_qemu(cmd, files, account, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - started < timeout:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Kernel panic" in text or "VFS:" in text:
                return AccelChoice("kvm", f"KVM booted a kernel to its root mount in "
                                          f"{time.monotonic() - started:.1f}s")
            if proc.poll() is not None:
                err = (proc.stderr.read() or b"").decode(errors="replace").strip().splitlines()
                return AccelChoice("tcg", "KVM cannot run the guest kernel: " + (err[-1] if err else
                                   f"qemu exited with {proc.returncode}"))
            time.sleep(0.2)
        return AccelChoice("tcg", f"KVM made no boot progress within {timeout:.0f}s (unusable nested KVM)")
    finally:
        _kill_group(proc)
        if proc.stderr:
            proc.stderr.close()


def _die_with_parent_fn():
    """A preexec_fn for the QEMU child: get SIGKILL when the process (thread) that started it dies, so
    a killed grader or worker never leaves a QEMU behind. libc is loaded here, in the parent: the child
    may already run as QEMU's account, which cannot read this Python's modules."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return die_with_parent


class _Spawner:
    """Start QEMU from one long-lived thread of this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: a QEMU
    forked from a grading thread (a huey worker thread, a test's thread) would be killed when that
    thread finished. Forking every QEMU from this daemon thread ties them to the process instead.
    """

    _lock = threading.Lock()
    _jobs: "queue.Queue | None" = None

    @classmethod
    def popen(cls, cmd: list[str], **kw) -> subprocess.Popen:
        with cls._lock:
            if cls._jobs is None:
                cls._jobs = queue.Queue()
                threading.Thread(target=cls._loop, args=(cls._jobs,), daemon=True, name="qemu-spawner").start()
        answer: queue.Queue = queue.Queue(1)
        cls._jobs.put((cmd, kw, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _loop(jobs: "queue.Queue") -> None:
        die_with_parent = _die_with_parent_fn()
        while True:
            cmd, kw, answer = jobs.get()
            try:
                answer.put((True, subprocess.Popen(cmd, preexec_fn=die_with_parent, **kw)))
            except Exception as e:  # noqa: BLE001 - handed to the caller's thread
                answer.put((False, e))


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def kernel_cmdline(cmdline: str, arch: str, accel: str) -> str:
    """The image's command line, plus what an emulated x86 CPU needs: on a loaded host a TCG guest can
    miss the 8254 timer check at boot and panic ("IO-APIC + timer doesn't work"), seen on the
    first boot of a lab VM while other VMs and an image build shared the 2 cores."""
    if arch == "x86_64" and accel != "kvm" and "no_timer_check" not in cmdline.split():
        return f"{cmdline} no_timer_check"
    return cmdline


NIC_PAIR = (("lab0", "52:54:00:00:0a:01"), ("lab1", "52:54:00:00:0b:01"))


@dataclass
class QemuVM:
    """One lab VM: an overlay on the image, a QEMU process, an HMP monitor socket, a serial log."""

    image: ImageSpec
    workdir: Path
    name: str = "lab"
    memory_mb: int = 2048
    cpus: int = 2
    accel: AccelChoice | None = None
    restrict_network: bool = True
    # lab 2's network cards: two e1000e NICs on a QEMU hub of their own (a crossover cable inside
    # QEMU, no host socket), beside the management NIC
    nic_pair: bool = False
    # QEMU's gdbstub on a 127.0.0.1 socket the runner binds (gdb_port once launched): the host-side
    # witness (grader/vm/gdbwitness.py) attaches there; the guest's network cannot reach the host's
    # loopback (restrict=on), and the stub is not guest state, so snapshots restore with or without it
    gdbstub: bool = False
    gdb_port: int | None = None
    boot_timeout: float = 300.0
    ssh_port: int | None = None
    hostkey: str | None = None  # "ssh-ed25519 AAAA...", pinned from the console
    qemu_user: str | None = None  # QEMU's account (qemu_account()): None = COPYLAB_QEMU_USER, "" = the grader's
    account: QemuAccount | None = None
    confinement: dict | None = None  # read from /proc of the QEMU last launched (read_confinement)
    _chain: list[tuple[Path, str]] | None = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _serial_mark: int = 0
    _stopping: bool = field(default=False, repr=False)   # this object is stopping QEMU itself
    _outside: str | None = field(default=None, repr=False)  # why an earlier QEMU of this VM ended from outside

    # ------------------------------------------------------------------ paths
    @property
    def overlay(self) -> Path:
        return self.workdir / f"{self.name}.qcow2"

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"{self.name}.serial.log"

    @property
    def monitor_path(self) -> Path:
        """Next to the overlay, unless that path is too long for a UNIX socket (108 bytes on Linux):
        then in the temp folder, under a name derived from the overlay's path."""
        p = self.workdir / f"{self.name}.monitor"
        if len(str(p).encode()) < 100:
            return p
        import hashlib

        digest = hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"copylab-{digest}.monitor"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / f"{self.name}.known_hosts"

    def qemu_account(self) -> QemuAccount:
        if self.account is None:
            self.account = qemu_account(self.qemu_user)
        return self.account

    # -------------------------------------------------------------- lifecycle
    def create_overlay(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not Path(self.image.disk).exists():
            raise VMStartError(f"image {self.image.disk} does not exist: build it with `make image`")
        self.overlay.unlink(missing_ok=True)
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
              str(Path(self.image.disk).resolve()), str(self.overlay)], "create the VM overlay")

    def start(self, loadvm: str | None = None, wait: bool = True) -> None:
        """Start QEMU on the overlay (created when missing); with loadvm, resume an internal snapshot."""
        if self.running():
            raise VMStartError(f"VM {self.name} is already running")
        if not self.overlay.exists():
            self.create_overlay()
        if self.accel is None:
            self.accel = probe_accel(self.image, self.workdir, account=self.qemu_account())
        last_error = ""
        for _attempt in range(5):
            port = self.ssh_port or free_port()
            self._launch(port, loadvm)
            err = self._wait_launched()
            if err is None:
                self.ssh_port = port
                if self.hostkey:
                    self.write_known_hosts()  # the pinned key, at this (maybe new) port
                break
            last_error = err
            if "hostfwd" in err or "Could not set up host forwarding" in err or "Address already" in err:
                self.ssh_port = None  # lost a port race: pick another
                continue
            raise VMStartError(f"QEMU failed to start {self.name}: {err}")
        else:
            raise VMStartError(f"QEMU could not forward an SSH port for {self.name}: {last_error}")
        if wait:
            self.wait_ssh(self.boot_timeout if loadvm is None else 60.0)

    def backing_chain(self) -> list[tuple[Path, str]]:
        """The images under the overlay, top first, with their formats (read once per VM: every
        overlay of this VM is made on the same image)."""
        if self._chain is None:
            out = _run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(self.overlay)],
                       "read the overlay's backing chain").stdout
            self._chain = [(Path(layer["filename"]), layer["format"]) for layer in json.loads(out)[1:]]
        return self._chain

    def _drive(self, files: QemuFiles) -> str:
        """The overlay and every image under it as descriptors: QEMU must not follow the backing file
        names written in the images (paths its account cannot, and should not, open)."""
        drive = (f"file={files.fdset(self.overlay, os.O_RDWR, os.O_RDONLY)},if=virtio,format=qcow2,"
                 f"cache=unsafe,discard=unmap")
        prefix = "backing."
        for path, fmt in self.backing_chain():
            drive += f",{prefix}driver={fmt},{prefix}file.filename={files.fdset(path, os.O_RDONLY)}"
            prefix += "backing."
        return drive

    def _qemu_command(self, port: int, loadvm: str | None, files: QemuFiles) -> list[str]:
        arch = self.image.arch
        if "," in str(self.overlay):
            raise VMStartError(f"QEMU option values cannot hold a comma: {self.workdir}")
        accel = self.accel.accel if self.accel else "tcg"
        netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22"
        if self.restrict_network:
            netdev += ",restrict=on"
        # -name: the overlay's path on the command line tells which QEMU is which (pgrep, operators)
        cmd = [QEMU_BINARIES[arch], "-name", str(self.overlay)]
        if arch == "x86_64":
            # q35 and a CPU model without 5-level paging: kernel addresses look like a student's (ffff88..)
            cpu = "host" if accel == "kvm" else "max,la57=off"
            cmd += ["-machine", "q35", "-cpu", cpu]
        else:
            cmd += ["-machine", "virt", "-cpu", "host" if accel == "kvm" else "cortex-a57"]
        cmd += [
            "-accel", "kvm" if accel == "kvm" else "tcg,thread=multi",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-nodefaults", "-display", "none", "-no-reboot", "-sandbox", SANDBOX,
            "-drive", self._drive(files),
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0",
            *(self.nic_pair_args() if self.nic_pair else []),
            # append, never truncate: the offset marks (_serial_mark, mark_serial) stay valid across
            # restarts of this VM, and an earlier boot's crash text is kept as evidence
            "-chardev", "file,id=serial0,append=on,path="
            + files.fdset(self.serial_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
            "-serial", "chardev:serial0",
            "-chardev", f"socket,id=monitor0,server=on,wait=off,fd={files.listening_socket(self.monitor_path)}",
            "-mon", "chardev=monitor0,mode=readline",
            *(self._gdbstub_args(files) if self.gdbstub else []),
            "-kernel", files.inherited(self.image.kernel), "-initrd", files.inherited(self.image.initrd),
            "-append", kernel_cmdline(self.image.cmdline, arch, accel),
            "-device", "virtio-rng-pci",
        ]
        if loadvm:
            cmd += ["-loadvm", loadvm]
        return cmd

    def _gdbstub_args(self, files: QemuFiles) -> list[str]:
        """The gdbstub on a listening socket bound here: QEMU opens no port of its own."""
        fd, self.gdb_port = files.tcp_listening_socket("127.0.0.1")
        return ["-chardev", f"socket,id=gdb0,server=on,wait=off,fd={fd}", "-gdb", "chardev:gdb0"]

    @staticmethod
    def nic_pair_args() -> list[str]:
        """Two e1000e cards (guest eth1, eth2) joined by QEMU hub 1; the MACs are fixed so that a
        snapshot taken with them restores with them."""
        args = []
        for netdev, mac in NIC_PAIR:
            args += ["-netdev", f"hubport,id={netdev},hubid=1",
                     "-device", f"e1000e,netdev={netdev},mac={mac}"]
        return args

    def _launch(self, port: int, loadvm: str | None) -> None:
        self.monitor_path.unlink(missing_ok=True)
        # keep the serial log across restarts (crash evidence); mark where this boot starts
        self._serial_mark = self.serial_log.stat().st_size if self.serial_log.exists() else 0
        self._outside = self._outside or self._outside_now()   # a restart must not erase why the last one ended
        self._stderr_path = self.stderr_path
        self._stopping = False
        self.confinement = None
        files = QemuFiles()
        try:
            cmd = self._qemu_command(port, loadvm, files)
        except BaseException:
            files.close()
            raise
        with open(self._stderr_path, "wb") as err:
            self._proc = spawn_qemu(cmd, files, self.qemu_account(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        self._started_at = time.monotonic()

    def _wait_launched(self, timeout: float = 20.0) -> str | None:
        """None once QEMU is up (monitor socket answers), else its error text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return self._stderr_text() or f"qemu exited with status {self._proc.returncode}"
            if self.monitor_path.exists():
                try:
                    self.monitor("info status", timeout=5)
                    self.confinement = read_confinement(self._proc.pid)
                    return None
                except OSError:
                    pass
            time.sleep(0.1)
        self.kill()
        return f"QEMU did not open its monitor within {timeout:.0f}s"

    @property
    def stderr_path(self) -> Path:
        """QEMU's stderr of the current launch (truncated at each launch): warnings, and the `log`
        trace backend's lines (grader/vm/nictrace.py)."""
        return self.workdir / f"{self.name}.qemu.err"

    def _stderr_text(self) -> str:
        try:
            return Path(self._stderr_path).read_text(errors="replace").strip()
        except (OSError, AttributeError):
            return ""

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stopped_from_outside(self) -> str | None:
        """Why QEMU ended (now, or before a restart since ``forget_outside_stop``) when neither this
        object nor the guest ended it, else None.

        A guest that panics or powers off makes QEMU exit by itself (status 0, ``-no-reboot``); a
        signal from someone else (an operator, the OOM killer, a fault drill) kills it (negative
        status) or makes it print "terminating on signal". That is the grading host's failure,
        never the submission's.
        """
        return self._outside_now() or self._outside

    def forget_outside_stop(self) -> None:
        """A new job starts: earlier outside stops are no longer its business."""
        self._outside = None

    def _outside_now(self) -> str | None:
        if self._proc is None or self._stopping or self._proc.poll() is None:
            return None
        rc = self._proc.returncode
        if rc < 0:
            return f"QEMU was killed by signal {-rc} from outside the grader"
        m = re.search(r"terminating on signal (\d+)[^\n]*", self._stderr_text())
        if m:
            return f"QEMU was stopped from outside the grader ({m.group(0)})"
        return None

    def wait_ssh(self, timeout: float) -> None:
        """Wait until sshd answers and the host key is pinned; raise VMCrashed/VMStartError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            crash = self.crash_excerpt()
            if crash:
                self.kill()
                raise VMCrashed(f"guest {self.name} crashed while booting", crash)
            if not self.running():
                raise VMStartError(f"QEMU for {self.name} exited while booting: "
                                   f"{self._stderr_text() or 'no error output'}; serial log {self.serial_log}")
            if self.hostkey is None:
                self._pin_hostkey()
            if self.hostkey and ssh_banner("127.0.0.1", self.ssh_port):
                return
            time.sleep(0.5)
        self.kill()
        raise VMStartError(f"VM {self.name} did not answer SSH on 127.0.0.1:{self.ssh_port} within "
                           f"{timeout:.0f}s (accel {self.accel.accel if self.accel else '?'}); "
                           f"serial log: {self.serial_log}")

    def _pin_hostkey(self) -> None:
        m = HOSTKEY_RE.search(self.serial_text())
        if m:
            self.hostkey = m.group(1)
            self.write_known_hosts()

    def write_known_hosts(self) -> Path:
        if self.hostkey is None:
            raise VMError(f"no host key pinned for {self.name}")
        self.known_hosts.write_text(f"[127.0.0.1]:{self.ssh_port} {self.hostkey}\n")
        return self.known_hosts

    # ---------------------------------------------------------- serial log
    def serial_text(self, since_mark: bool = True) -> str:
        try:
            with open(self.serial_log, "rb") as f:
                if since_mark:
                    f.seek(self._serial_mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def mark_serial(self) -> None:
        """Crash detection looks only at what the console printed after this point."""
        self._serial_mark = self.serial_log.stat().st_size if self.serial_log.exists() else 0

    def crash_excerpt(self, context: int = 40) -> str | None:
        """The oops/panic text the console printed since the mark, or None."""
        text = self.serial_text()
        m = CRASH_RE.search(text)
        if not m:
            return None
        lines = text[m.start():].splitlines()
        return "\n".join(lines[:context])

    # ------------------------------------------------------------- monitor
    def monitor(self, command: str, timeout: float = 30.0) -> str:
        """Run one HMP command and return its output."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.monitor_path))
            buf = _read_until(s, b"(qemu) ", timeout)
            s.sendall(command.encode() + b"\n")
            buf = _read_until(s, b"(qemu) ", timeout)
        text = buf.decode(errors="replace").replace("\r", "")
        # drop the echoed command line (with its terminal escapes) and the final prompt
        lines = text.split("\n")
        return "\n".join(lines[1:-1]).strip()

    def savevm(self, name: str = "clean") -> float:
        t = time.monotonic()
        out = self.monitor(f"savevm {name}", timeout=120)
        if "Error" in out or "error" in out:
            raise VMError(f"savevm {name} failed on {self.name}: {out}")
        self.mark_serial()
        return time.monotonic() - t

    def loadvm(self, name: str = "clean", ssh_timeout: float = 60.0) -> float:
        """Restore the snapshot; after a crash (QEMU gone) start a new QEMU from it. Returns seconds."""
        t = time.monotonic()
        if self.running():
            try:
                out = self.monitor(f"loadvm {name}", timeout=60)
                if "rror" in out:
                    raise VMError(out)
                self.mark_serial()
                self.monitor("cont", timeout=10)
            except (OSError, VMError):
                # a QEMU killed from outside can still be tearing down (its monitor socket already
                # closed): let it end by itself first, so that kill() does not take the stop as ours
                # and the reason (stopped_from_outside) survives the restart below
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
                self._outside = self._outside or self._outside_now()
                self.kill()
        if not self.running():
            self.start(loadvm=name, wait=False)
        self.wait_ssh(ssh_timeout)
        return time.monotonic() - t

    # ------------------------------------------------------------- teardown
    def kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._stopping = True   # only what this object ends is its own doing
            _kill_group(self._proc)

    def stop(self, timeout: float = 10.0) -> None:
        """Quit QEMU (no guest shutdown: the overlay is disposable or snapshotted)."""
        if self.running():
            self._stopping = True
            try:
                self.monitor("quit", timeout=5)
                self._proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def destroy(self) -> None:
        self.stop()
        for p in (self.overlay, self.monitor_path):
            p.unlink(missing_ok=True)

    def __enter__(self) -> "QemuVM":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


def _read_until(s: socket.socket, token: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(token):
        if time.monotonic() > deadline:
            raise TimeoutError(f"monitor did not answer within {timeout:.0f}s")
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("monitor closed the connection")
        buf += chunk
    return buf


def _run(cmd: list[str], what: str, timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise VMStartError(f"cannot {what}: {cmd[0]} is not installed (run `make deps`)") from e
    except subprocess.CalledProcessError as e:
        raise VMStartError(f"cannot {what}: {e.stderr.strip() or e}") from e
    except subprocess.TimeoutExpired as e:
        raise VMStartError(f"cannot {what}: `{' '.join(cmd)}` took over {timeout}s") from e


def scratch_dir(prefix: str = "copylab-vm-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
