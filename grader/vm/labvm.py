"""VM objects the grading engine acquires (the interface is documented in grader/engine/run.py).

QemuLabVM: a VM of the kit's golden image run by the QEMU runner, with no network but SSH on
127.0.0.1; acquire() always starts from the clean snapshot, so a crashed or dirty VM is never reused.
StaticHostVM: an inventory host reached over SSH; it cannot be restored, so after every run it is
cleaned and checked (clean_host), and after a dirty run or a failed check it refuses further jobs
until an operator has reset it.
"""
from __future__ import annotations

import json
import shlex
import time
from contextlib import contextmanager
from pathlib import Path

from grader.engine.run import HELPER, PROGRAM_USER, RUNS_DIR
from grader.errors import VMError
from grader.vm.qemu import ImageSpec, QemuVM, VMCrashed, scratch_dir

SNAPSHOT = "clean"
# the VM shapes a lab spec may ask for ([vm] nics, grader/engine/labspec.py VM_SHAPES) -> QemuLabVM options
SHAPES = {"": {}, "e1000e-pair": {"nic_pair": True}}


def shape_options(shape: str) -> dict:
    try:
        return dict(SHAPES[shape])
    except KeyError:
        raise VMError(f"no lab VM shape {shape!r} (known: {', '.join(repr(s) for s in SHAPES)})") from None


def default_cache() -> Path:
    import os

    return Path(os.environ.get("COPYLAB_CACHE", Path.home() / ".cache" / "copylab")) / "images"


DEFAULT_SUITE = "bookworm"


def image_suite(golden: Path) -> str:
    """The Debian release of a golden image (images built before the builder recorded it: bookworm)."""
    return json.loads((golden / "manifest.json").read_text()).get("suite", DEFAULT_SUITE)


def find_golden(arch: str = "amd64", cache: Path | None = None, suite: str | None = None) -> Path:
    """The newest golden image folder of a Debian release (default bookworm) in the cache (built by
    `make image`, `make image COPYLAB_SUITE=trixie`)."""
    cache = cache or default_cache()
    suite = suite or DEFAULT_SUITE
    found = sorted((p for p in cache.glob(f"golden-{arch}-*") if (p / "manifest.json").exists()
                    and image_suite(p) == suite),
                   key=lambda p: (p / "manifest.json").stat().st_mtime)
    if not found:
        raise VMError(f"no {suite} golden lab-VM image ({arch}) in {cache}: build it with "
                      f"`make image COPYLAB_SUITE={suite}`")
    return found[-1]


class QemuLabVM:
    """One pool VM: an overlay of the golden image with an internal snapshot of a booted, clean guest."""

    def __init__(self, golden: Path | None = None, workdir: Path | None = None, name: str = "lab",
                 boot_timeout: float = 300.0, accel=None, progress=None, persistent: bool = False,
                 qemu_user: str | None = None, nic_pair: bool = False):
        self.golden = Path(golden) if golden else find_golden()
        self.manifest = json.loads((self.golden / "manifest.json").read_text())
        self.workdir = Path(workdir) if workdir else scratch_dir("copylab-pool-")
        self.progress = progress or (lambda msg: None)
        image = ImageSpec(disk=self.golden / self.manifest["disk"],
                          kernel=Path(self.manifest["kernel_path"]),
                          initrd=Path(self.manifest["initrd_path"]),
                          cmdline=self.manifest["cmdline"], arch=self.manifest.get("qemu_arch", "x86_64"))
        self.vm = QemuVM(image=image, workdir=self.workdir, name=name, restrict_network=True,
                         boot_timeout=boot_timeout, accel=accel, qemu_user=qemu_user,
                         nic_pair=nic_pair, gdbstub=True)
        self.key = self.golden / self.manifest["grader_key"]
        self.prepared = False
        self.fresh = False  # True right after the clean snapshot was taken or restored
        self.last_reset_s: float | None = None
        # persistent: the overlay with its clean snapshot and pinned host key outlives this object, so
        # a restarted worker resumes the VM from the snapshot in seconds instead of booting it again
        self.persistent = persistent
        self.ready_file = self.workdir / f"{name}.ready.json"
        # facts read from the guest before any student code ran, valid for every run restored from
        # this object's clean snapshot (the kernel's addresses: KASLR is fixed until the next boot)
        self.snapshot_facts: dict = {}

    # -------------------------------------------------------- set-up
    def prepare(self) -> None:
        """First boot of this VM's overlay (its own host key), then the clean snapshot."""
        t = time.monotonic()
        self.snapshot_facts = {}
        if self.persistent and self._resume():
            self.progress(f"lab VM {self.vm.name} resumed from its clean snapshot in {time.monotonic() - t:.1f}s")
            return
        self.ready_file.unlink(missing_ok=True)
        self.progress("booting a lab VM from the golden image (first boot; ~1-2 min under TCG)")
        try:
            self.vm.create_overlay()
            self.vm.start()
            self._wait_ready()
            self.vm.savevm(SNAPSHOT)
        except Exception:
            self.vm.kill()
            raise
        self.prepared = True
        self.fresh = True
        if self.persistent:
            self.ready_file.write_text(json.dumps({"golden": str(self.golden), "hostkey": self.vm.hostkey,
                                                   "snapshot": SNAPSHOT}))
        c = self.confinement() or {}
        self.progress(f"lab VM ready in {time.monotonic() - t:.0f}s "
                      f"({self.vm.accel.accel}: {self.vm.accel.reason}; QEMU seccomp mode {c.get('seccomp')} "
                      f"as {c.get('user')}, uid {c.get('uid')})")

    def _resume(self) -> bool:
        """Start QEMU from the overlay's clean snapshot (persistent VMs); False when there is none or it
        does not come up, after which the caller boots a fresh overlay."""
        try:
            ready = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return False
        if ready.get("golden") != str(self.golden) or not self.vm.overlay.exists() or not ready.get("hostkey"):
            return False
        try:
            self.vm.hostkey = ready["hostkey"]
            self.vm.start(loadvm=SNAPSHOT, wait=True)
            self._wait_ready(timeout=60)
        except (VMError, OSError) as e:
            self.progress(f"lab VM {self.vm.name}: resuming the snapshot failed ({e}); booting afresh")
            self.vm.kill()
            self.vm.hostkey = None
            return False
        self.prepared = True
        self.fresh = True
        return True

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """sshd answers before logins work (systemd-user-sessions): wait until the grader can log in."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                with self.executor() as ex:
                    r = ex.run("true", timeout=30)
                    if r.exit_code == 0:
                        return
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last = e
            time.sleep(1)
        raise VMError(f"the lab VM answered SSH but the grader could not log in within {timeout:.0f}s: {last}")

    def reset(self) -> float:
        t0, before = time.monotonic(), self.vm._proc
        t = self.vm.loadvm(SNAPSHOT)
        if self.vm._proc is not before:
            # QEMU had died (crash, outside kill) and a new one resumed the snapshot: wait until the
            # grader can log in, not only until sshd sends its banner
            self._wait_ready(timeout=60)
            t = time.monotonic() - t0
        self.last_reset_s = t
        self.fresh = True
        return t

    # ------------------------------------------------ engine interface
    def acquire(self) -> None:
        if not self.prepared:
            self.prepare()
        elif not self.fresh:
            self.reset()
        self.fresh = False
        self.vm.mark_serial()
        self.vm.forget_outside_stop()

    @contextmanager
    def executor(self):
        from grader.ssh import SSHConnection

        with SSHConnection(host="127.0.0.1", port=self.vm.ssh_port, user=self.manifest.get("grader_user", "grader"),
                           key_path=str(self.key), known_hosts=str(self.vm.known_hosts)) as conn:
            yield conn

    def crash_excerpt(self) -> str | None:
        excerpt = self.vm.crash_excerpt()
        if excerpt:
            return excerpt
        if self.infrastructure_fault():
            return None   # not the guest's doing: no crash verdict for the submission
        if self.prepared and not self.vm.running():
            tail = self.vm.serial_text()[-2000:]
            return "QEMU ended unexpectedly (the guest powered off or rebooted)\n" + tail
        return None

    def alive(self) -> bool:
        return self.vm.running() and self.vm.crash_excerpt() is None

    def infrastructure_fault(self) -> str | None:
        """Why this VM failed for reasons that are not the submission's (QEMU stopped from outside)."""
        return self.vm.stopped_from_outside()

    def release(self, dirty: bool) -> None:
        # Every acquire starts from the clean snapshot anyway; reset a dirty VM now so that it is
        # never handed out in that state, and so that a dead QEMU is replaced before the next job.
        if dirty:
            try:
                self.reset()
            except (VMError, OSError) as e:
                self.prepared = False
                self.vm.kill()
                raise VMError(f"the VM could not be reset after a dirty run: {e}") from e

    def environment(self) -> dict:
        return {"accel": self.vm.accel.accel if self.vm.accel else None,
                "arch": self.manifest.get("qemu_arch"), "image": self.golden.name, "vm": self.vm.name,
                "qemu": self.confinement()}

    def confinement(self) -> dict | None:
        """How the QEMU last launched for this VM was confined, as its /proc status said: seccomp mode
        (2 = the -sandbox filter), uid and user, and why that account."""
        c = self.vm.confinement
        if c is None:
            return None
        return {"sandbox": c["seccomp"] == 2, "seccomp": c["seccomp"], "uid": c["uid"], "user": c["user"],
                "account": self.vm.account.why if self.vm.account else None}

    def host_builder(self):
        """(sandbox builder, why) for this image's build root, or (None, why the build stays here)."""
        from grader import buildbox

        return buildbox.for_golden(self.golden)

    def host_evidence(self, name: str, lab, profile):
        """(source, why) for a view of this VM from outside it (grader/vm/hostsources.py)."""
        from grader.vm import hostsources

        return hostsources.offer(name, self, lab, profile)

    def close(self) -> None:
        if self.persistent and self.prepared:
            self.vm.stop()  # keep the overlay: its clean snapshot is resumed next time
        else:
            self.ready_file.unlink(missing_ok=True)
            self.vm.destroy()

    def discard(self) -> None:
        """Stop the VM and delete its overlay (a dead or suspect VM is never resumed)."""
        self.ready_file.unlink(missing_ok=True)
        self.prepared = False
        self.vm.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# file systems the program account may have written to (mounted local ones; /proc and /sys are not)
WRITABLE_FSTYPES = "ext2,ext3,ext4,xfs,btrfs,tmpfs,mqueue"


def clean_host(ex, program_user: str = PROGRAM_USER, runs_dir: str = RUNS_DIR, helper: str = HELPER,
               sudo: str = "sudo -n") -> list[str]:
    """Undo what a grading run can leave on a host that is not restored from a snapshot, then check
    it: every process and file of the program account, its IPC objects, every run folder, lab
    modules and the grader's tracefs instances. Returns what is still there (empty: clean)."""
    u = shlex.quote(program_user)
    as_user = f"{sudo} -u {u} --"
    runs = shlex.quote(runs_dir)
    own_files = (f"for m in $(findmnt -rn -o TARGET -t {WRITABLE_FSTYPES}); do "
                 f"find \"$m\" -xdev -mindepth 1 -user {u} {{action}} 2>/dev/null; done")
    steps = [
        (f"for i in 1 2 3 4 5 6 7 8 9 10; do {as_user} kill -KILL -1 2>/dev/null; "
         f"pgrep -u {u} >/dev/null || exit 0; sleep 0.5; done", "kill the program account's processes"),
        (f"{as_user} sh -c " + shlex.quote(
            own_files.format(action="-type d -exec chmod u+rwx {} \\;") + "; "
            + own_files.format(action="-depth -delete") + "; ipcrm --all 2>/dev/null; true"),
         "remove the program account's files and IPC objects"),
        (f"find {runs} -mindepth 1 -delete", "remove the run folders"),
    ]
    problems = []
    for cmd, what in steps:
        r = ex.run(cmd, timeout=120)
        if r.timed_out:
            problems.append(f"{what}: timed out")
    checks = [
        (f"pgrep -u {u} -a", "processes of {user} still running: {out}"),
        (f"{as_user} sh -c " + shlex.quote(own_files.format(action="-print")) + " | head -n 5",
         "files of {user} still there: {out}"),
        (f"{as_user} ipcs -m -q -s | awk '$3 == \"{program_user}\"' | head -n 5",
         "IPC objects of {user} still there: {out}"),
        (f"find {runs} -mindepth 1 -maxdepth 1 | head -n 5", "run folders still there: {out}"),
    ]
    for cmd, msg in checks:
        r = ex.run(cmd, timeout=120)
        out = r.stdout.strip()
        if r.timed_out:
            problems.append(msg.format(user=program_user, out="(the check timed out)"))
        elif out:
            problems.append(msg.format(user=program_user, out=", ".join(out.splitlines())))
    r = ex.run(f"{sudo} {shlex.quote(helper)} reset", timeout=120)
    if not r.ok:
        problems.append("module state: " + ("(reset timed out)" if r.timed_out else
                                            "; ".join((r.stdout + r.stderr).strip().splitlines())))
    return problems


class StaticHostVM:
    """An inventory host (provisioned by provision/site.yml). No snapshot: every run is cleaned up
    and checked; a dirty run or a failed check retires it."""

    def __init__(self, host: str, port: int, key: Path, known_hosts: Path, user: str = "grader"):
        self.host, self.port, self.key, self.known_hosts, self.user = host, port, key, known_hosts, user
        self.retired: str | None = None

    def acquire(self) -> None:
        if self.retired:
            raise VMError(f"host {self.host}:{self.port} needs an operator reset: {self.retired}")
        # also before the first job of this process: a worker killed mid-run never released the host
        problems = self._clean()
        if problems:
            self.retired = "; ".join(problems)
            raise VMError(f"host {self.host}:{self.port} retired, not proven clean before the run: {self.retired}")

    def _clean(self) -> list[str]:
        try:
            with self.executor() as ex:
                return clean_host(ex)
        except Exception as e:  # noqa: BLE001 - a host that cannot be checked is not proven clean
            return [f"cannot clean it up: {type(e).__name__}: {e}"]

    @contextmanager
    def executor(self):
        from grader.ssh import SSHConnection

        with SSHConnection(host=self.host, port=self.port, user=self.user, key_path=str(self.key),
                           known_hosts=str(self.known_hosts)) as conn:
            yield conn

    def crash_excerpt(self) -> str | None:
        return None

    def alive(self) -> bool:
        return self.retired is None

    def release(self, dirty: bool) -> str:
        problems = self._clean()
        if dirty:
            problems.insert(0, "the last grading run left it dirty (module not unloaded, crash or timeout)")
        if problems:
            self.retired = "; ".join(problems)
            raise VMError(f"host {self.host}:{self.port} retired, not proven clean: {self.retired}")
        return "cleaned up and checked: no process or file of the program account, no run folder, " \
               "no lab module or trace instance left"

    def environment(self) -> dict:
        return {"accel": None, "arch": None, "image": f"{self.host}:{self.port}"}

    def close(self) -> None:
        pass


__all__ = ["QemuLabVM", "StaticHostVM", "find_golden", "VMCrashed"]
