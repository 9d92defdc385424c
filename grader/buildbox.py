"""The build phase on the grader host: the lab's Makefile in the golden image's own toolchain, sandboxed.

The image builder extracts a *build root* from each golden image whose architecture is the host's
(provision/image/build_image.py, stage `buildroot`): the image's /usr (compiler, binutils, make, kernel
headers at the pinned versions) and the few /etc files the toolchain reads, nothing else. A build runs
in it under bubblewrap:

- bubblewrap (Debian `bubblewrap`) rather than systemd-nspawn: it needs no root, no daemon and no
  machine registration, starts in milliseconds, and does exactly namespaces + bind mounts; nspawn
  is a container manager that wants root and a whole OS tree.
- the build root read-only as `/`, a new /proc, a minimal /dev, an empty /tmp, the build folder the
  only writable path; no other host path exists inside (an `#include` of one is a compile error);
- every namespace unshared (no network: only a down loopback), uid/gid 1000 inside, mapped to an
  unprivileged host account (`COPYLAB_BUILD_USER`, default `nobody`, when the grader runs as root);
- limits: CPU seconds, address space and file size per process, processes of the build account,
  the log and the build folder's size and file count (watched while it runs), wall time (the phase
  deadline); the pid namespace ends every process of the build with it.

Stdlib only; the engine reaches it through the VM object's `host_builder()`.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ARCH_OF_MACHINE = {"x86_64": "amd64", "aarch64": "arm64"}
INSIDE = "/build"


def host_arch() -> str:
    """The host's Debian architecture name (amd64, arm64)."""
    m = os.uname().machine
    return ARCH_OF_MACHINE.get(m, m)


@dataclass
class Limits:
    """Per build. `processes` is watched in the build's pid namespace; RLIMIT_NPROC at twice that
    (it counts every process of the build account on the host) stops a fork bomb between two looks."""
    cpu_seconds: int = 120
    address_space: int = 2 << 30
    file_size: int = 64 << 20
    processes: int = 128
    log_bytes: int = 1 << 20
    folder_bytes: int = 256 << 20
    folder_files: int = 5000
    output_bytes: int = 32 << 20
    tmp_bytes: int = 128 << 20


@dataclass
class BuildOutcome:
    log: str
    exit_code: int | None
    timed_out: bool = False
    problem: str | None = None          # a sandbox limit that stopped the build, in words
    outputs: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timeout: float = 0.0
    pid_namespace: str | None = None    # the sandbox's ("pid:[inode]"): no process may be left in it
    place: str = ""                     # the build's private folder on the host, removed afterwards

    def reason(self) -> str | None:
        """Why the build failed, in words for the student (None: it did not)."""
        if self.timed_out:
            return f"the build did not finish within {self.timeout:g}s"
        if self.problem:
            return f"the build sandbox stopped the build: {self.problem}"
        if self.exit_code != 0:
            signal_name = ""
            if self.exit_code is not None and self.exit_code > 128:
                try:
                    signal_name = f" ({signal.Signals(self.exit_code - 128).name})"
                except ValueError:
                    pass
            cause = error_line(self.log)
            return f"the build command exited {self.exit_code}{signal_name}" + (f": {cause}" if cause else "")
        if self.missing:
            return "missing " + ", ".join(self.missing)
        return None


ERROR_LINE = re.compile(r"error|cannot|fatal|unable|denied|read-only|out of memory|not found|refused|"
                        r"unreachable", re.I)


def error_line(log: str) -> str | None:
    """The last line of a build log that says what went wrong (make's own summary lines skipped)."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if ERROR_LINE.search(line) and not line.startswith(("make:", "make[")):
            return line[:300]
    return None


class SandboxError(RuntimeError):
    pass


def build_root_for(golden: Path) -> Path | None:
    """The build root the image builder made from this golden image (its manifest names the golden
    key), or None."""
    m = json.loads((golden / "manifest.json").read_text())
    for root in sorted(golden.parent.glob(f"buildroot-{m['arch']}-{m['kernel_release']}-*")):
        manifest = root / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("golden_key") == m["key"]:
            return root
    return None


class HostBuilder:
    def __init__(self, root: Path, limits: Limits | None = None, user: str | None = None):
        self.root = Path(root)
        self.manifest = json.loads((self.root / "manifest.json").read_text())
        self.tree = self.root / self.manifest["tree"]
        self.release = self.manifest["kernel_release"]
        self.arch = self.manifest["arch"]
        self.limits = limits or Limits()
        if os.geteuid() == 0:
            name = user or os.environ.get("COPYLAB_BUILD_USER", "nobody")
            try:
                pw = pwd.getpwnam(name)
            except KeyError as e:
                raise SandboxError(f"build account {name!r} does not exist (COPYLAB_BUILD_USER)") from e
            if pw.pw_uid == 0:
                raise SandboxError(f"build account {name!r} is root")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()

    def describe(self) -> str:
        return f"sandbox (bubblewrap, build root {self.root.name})"

    # ------------------------------------------------------------ the sandbox
    def command(self, folder: Path, env: dict[str, str], argv: list[str],
                info_fd: int | None = None) -> list[str]:
        lim = self.limits
        root = self.tree
        prefix: list[str] = []
        if os.geteuid() == 0:
            # bubblewrap runs as the build account, which may have no search right on the folders
            # above the build root (an image cache under /root): bind it, in a mount namespace of
            # this build only, to a point it can reach, then drop to the account
            root = folder.parent / "root"
            prefix = ["unshare", "--mount", "--propagation", "private", "--",
                      "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh",
                      str(self.tree), str(root),
                      "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]
        cmd = prefix + [
            "prlimit", f"--cpu={lim.cpu_seconds}", f"--as={lim.address_space}",
            f"--fsize={lim.file_size}", f"--nproc={2 * lim.processes}", "--core=0", "--",
            "bwrap", "--ro-bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
            "--size", str(lim.tmp_bytes), "--tmpfs", "/tmp", "--bind", str(folder), INSIDE, "--chdir", INSIDE,
            "--unshare-all", "--uid", "1000", "--gid", "1000", "--hostname", "buildbox",
            "--die-with-parent", "--new-session", "--clearenv"]
        if info_fd is not None:
            cmd += ["--info-fd", str(info_fd)]
        for k, v in {"PATH": "/usr/bin:/bin", "HOME": INSIDE, "LANG": "C.UTF-8", **env}.items():
            cmd += ["--setenv", k, v]
        return cmd + argv

    def _spawn(self, folder: Path, env: dict[str, str], argv: list[str]) -> tuple[subprocess.Popen, str | None]:
        """The started sandbox and its pid namespace ("pid:[inode]", None if it never got one)."""
        r, w = os.pipe()
        try:
            proc = subprocess.Popen(self.command(folder, env, argv, info_fd=w), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(w,))
        finally:
            os.close(w)
        # bubblewrap writes {"child-pid": N} (in pieces) once the namespaces exist, then closes it
        text, child, end = b"", None, time.monotonic() + 30
        with os.fdopen(r, "rb", buffering=0) as info:
            while child is None and time.monotonic() < end:
                ready, _, _ = select.select([info], [], [], max(0.0, end - time.monotonic()))
                chunk = info.read(4096) if ready else b""
                if not chunk:
                    break
                text += chunk
                try:
                    child = json.loads(text)["child-pid"]
                except (ValueError, KeyError):
                    continue
        try:
            return proc, os.readlink(f"/proc/{child}/ns/pid") if child else None
        except OSError:  # the command already ended
            return proc, None

    def probe(self) -> str | None:
        """None when a sandbox starts here, else why not (no bubblewrap, no user namespaces, ...)."""
        for tool in ("bwrap", "prlimit", "unshare", "setpriv"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (Debian package {'bubblewrap' if tool == 'bwrap' else 'util-linux'})"
        with self.folder() as folder:
            try:
                p, _ = self._spawn(folder, {}, ["/usr/bin/true"])
                out, _ = p.communicate(timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"bubblewrap did not start: {e}"
        if p.returncode != 0:
            return f"bubblewrap cannot create its namespaces here: {out.decode(errors='replace').strip()[:300]}"
        return None

    def folder(self) -> "_Folder":
        return _Folder(self.uid, self.gid)

    def build(self, sources: dict[str, Path], command: list[str], outputs: list[str], timeout: float,
              dest: Path) -> BuildOutcome:
        """Copy `sources` (name -> file) into a fresh folder, run `command` there in the sandbox, copy
        the named `outputs` (regular files only) to `dest`; the folder is gone afterwards."""
        lim = self.limits
        t0 = time.monotonic()
        with self.folder() as folder:
            for name, src in sources.items():
                target = folder / name
                shutil.copyfile(src, target)
                if os.geteuid() == 0:
                    os.chown(target, self.uid, self.gid)
            env = {"KDIR": f"/lib/modules/{self.release}/build"}
            proc, ns = self._spawn(folder, env, command)
            try:
                log, problem, timed_out = self._watch(proc, ns, folder, t0 + timeout)
            finally:
                end_namespace(ns)
            out = BuildOutcome(log=log.decode("utf-8", errors="replace"), exit_code=proc.returncode,
                               timed_out=timed_out, problem=problem, timeout=timeout, pid_namespace=ns,
                               place=str(folder.parent))
            if problem is None and not timed_out and proc.returncode == 0:
                dest.mkdir(parents=True, exist_ok=True)
                for name in outputs:
                    p = folder / name
                    if p.is_symlink() or not p.is_file():
                        out.missing.append(name)
                        continue
                    if p.stat().st_size > lim.output_bytes:
                        out.problem = f"{name} is {p.stat().st_size} bytes, more than {lim.output_bytes}"
                        break
                    shutil.copyfile(p, dest / name)
                    os.chmod(dest / name, 0o755 if os.stat(p).st_mode & 0o100 else 0o644)
                    out.outputs[name] = dest / name
        out.seconds = time.monotonic() - t0
        return out

    def _watch(self, proc: subprocess.Popen, ns: str | None, folder: Path,
               deadline: float) -> tuple[bytes, str | None, bool]:
        """Read the log until the build ends; stop it at the first limit it crosses."""
        lim = self.limits
        buf = bytearray()
        problem, timed_out = None, False
        fd = proc.stdout.fileno()
        next_scan = 0.0
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                ready, _, _ = select.select([fd], [], [], min(0.5, deadline - now))
                if ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > lim.log_bytes:
                        problem = f"build output over {lim.log_bytes} bytes"
                        break
                if time.monotonic() >= next_scan:
                    problem = folder_over_limits(folder, lim)
                    if ns and not problem and len(namespace_pids(ns)) > lim.processes:
                        problem = f"the build ran more than {lim.processes} processes at once"
                    if problem:
                        break
                    next_scan = time.monotonic() + 0.5
        finally:
            if proc.poll() is None:
                kill_group(proc)
            proc.wait()
            proc.stdout.close()
        if problem is None and not timed_out:
            problem = folder_over_limits(folder, lim)
        return bytes(buf[:lim.log_bytes]), problem, timed_out


def folder_over_limits(folder: Path, lim: Limits) -> str | None:
    total = files = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + dirnames:
            files += 1
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
        if files > lim.folder_files:
            return f"the build created more than {lim.folder_files} files"
        if total > lim.folder_bytes:
            return f"the build folder grew over {lim.folder_bytes} bytes"
    return None


def namespace_pids(ns: str) -> list[int]:
    """Host pids of the live (not zombie) processes in pid namespace `ns`."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == ns:
                    with open(f"/proc/{d}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            pids.append(int(d))
            except (OSError, IndexError):
                pass
    return pids


def end_namespace(ns: str | None, timeout: float = 10.0) -> None:
    """Wait until no process of the sandbox's pid namespace is left (the kernel kills them when its
    first process ends, asynchronously); SIGKILL stragglers."""
    if ns is None:
        return
    end = time.monotonic() + timeout
    while True:
        left = namespace_pids(ns)
        if not left:
            return
        if time.monotonic() > end:
            raise SandboxError(f"{len(left)} build processes outlived their sandbox ({ns})")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to prlimit/bwrap's session: bwrap's pid namespace takes every build process with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Folder:
    """A private build folder: a 0711 parent only the grader owns, the folder owned by the build account."""

    def __init__(self, uid: int, gid: int):
        self.uid, self.gid = uid, gid

    def __enter__(self) -> Path:
        self.parent = Path(tempfile.mkdtemp(prefix="copylab-build-"))
        os.chmod(self.parent, 0o711)
        (self.parent / "root").mkdir()
        path = self.parent / "b"
        path.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)
        return path

    def __exit__(self, *exc):
        shutil.rmtree(self.parent, ignore_errors=True)


_PROBED: dict[Path, str | None] = {}


def for_golden(golden: Path) -> tuple[HostBuilder | None, str]:
    """(builder, why) for a golden image; builder is None when the build stays in the VM."""
    choice = os.environ.get("COPYLAB_BUILD", "auto")
    if choice == "vm":
        return None, "the operator's choice (COPYLAB_BUILD=vm)"
    root = build_root_for(golden)
    if root is None:
        m = json.loads((golden / "manifest.json").read_text())
        if m["arch"] != host_arch():
            return None, f"the VM is {m['arch']}, the host {host_arch()}: no cross toolchain"
        return None, f"no build root for {golden.name} (`make image` makes it)"
    try:
        builder = HostBuilder(root)
    except SandboxError as e:
        return None, str(e)
    if builder.arch != host_arch():
        return None, f"the build root is {builder.arch}, the host {host_arch()}"
    if root not in _PROBED:
        _PROBED[root] = builder.probe()
    if _PROBED[root]:
        return None, _PROBED[root]
    return builder, builder.describe()
