#!/usr/bin/env python3
"""Build the copylab golden lab-VM image, offline but for the apt archive.

  base   : debootstrap a minimal Debian (12 "bookworm" or 13 "trixie": --suite / $COPYLAB_SUITE) with
           the pinned kernel, sshd and python3 into a qcow2
           (no loop mounts: mkfs.ext4 -d), plus the kernel and initrd for direct kernel boot.
  golden : boot an overlay of the base under QEMU, run provision/site.yml against it (the ONE
           ansible definition), reset per-VM identity (host keys, machine-id), power off.
  box    : optionally export the golden image as a libvirt Vagrant box.

Results live in $COPYLAB_CACHE (default ~/.cache/copylab)/images, each stage in a folder named by a
hash of its inputs, written atomically; a stage whose folder exists is reused, anything else rebuilt.
The apt mirror comes from $COPYLAB_APT_MIRROR or the host's apt configuration, never from this file.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from grader.vm.qemu import ImageSpec, QemuVM

REPO = Path(__file__).resolve().parents[2]

HERE = Path(__file__).resolve().parent
# The Debian releases a lab VM can be: per architecture the pinned kernel release (`uname -r`), and
# the compiler package the kernel headers build modules with (the build root must carry it). The
# role copylab_kernel holds the same pins (defaults/main.yml) with their package versions.
SUITES = {
    "bookworm": {"kernel": {"amd64": "6.1.0-50-amd64", "arm64": "6.1.0-50-arm64"}, "gcc": "gcc-12"},
    "trixie": {"kernel": {"amd64": "6.12.117+deb13-amd64"}, "gcc": "gcc-14"},
}
DEFAULT_SUITE = "bookworm"
CMDLINE = {
    # oops=panic + panic=-1 + QEMU -no-reboot: every kernel oops ends QEMU at once (crash detection)
    "amd64": "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 oops=panic panic=-1 quiet",
    "arm64": "root=/dev/vda rw console=ttyAMA0 net.ifnames=0 oops=panic panic=-1 quiet",
}
QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


class BuildError(RuntimeError):
    pass


class PlaybookFailed(BuildError):
    """ansible-playbook ended non-zero; the message carries its failure lines."""


def log(msg: str) -> None:
    print(f"[image {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("COPYLAB_CACHE", Path.home() / ".cache" / "copylab")) / "images"


def sh(cmd: list[str], what: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, timeout=timeout, text=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(f"{what}: {cmd[0]} is not installed (run `make deps`)") from e
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip()[-2000:] if isinstance(e.stderr or e.stdout, str) else ""
        raise BuildError(f"{what} failed (exit {e.returncode}): {detail}") from e
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{what} took longer than {timeout:.0f}s") from e


# ------------------------------------------------------------------------- inputs
def host_apt_mirrors() -> tuple[str, str | None]:
    """(main mirror, security mirror or None) from $COPYLAB_APT_MIRROR or the host's apt sources."""
    env = os.environ.get("COPYLAB_APT_MIRROR")
    sec_env = os.environ.get("COPYLAB_APT_SECURITY_MIRROR")
    if env:
        return env, sec_env
    uris: list[str] = []
    for f in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")) + [Path("/etc/apt/sources.list")]:
        if not f.exists():
            continue
        text = f.read_text(errors="replace")
        uris += re.findall(r"^URIs:\s*(\S+)", text, re.M)
        uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
    main = next((u for u in uris if "security" not in u), None)
    sec = next((u for u in uris if "security" in u), None)
    if not main:
        raise BuildError("no apt mirror found in /etc/apt; set COPYLAB_APT_MIRROR to a Debian mirror URL")
    return main, sec_env or sec


def host_arch() -> str:
    """The host's Debian architecture name (amd64, arm64)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def ensure_binfmt(arch: str) -> None:
    """Foreign-architecture debootstrap runs the guest's binaries through qemu-user-static's binfmt_misc
    entry: mount binfmt_misc when the host has not, enable the entry, or say what is missing."""
    entry = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{QEMU_ARCH[arch]}"

    def enabled() -> bool:
        return entry.exists() and "enabled" in entry.read_text(errors="replace")

    if not Path("/proc/sys/fs/binfmt_misc/status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
                       capture_output=True)
    if not enabled():
        subprocess.run(["update-binfmts", "--enable", f"qemu-{QEMU_ARCH[arch]}"], capture_output=True)
    if not enabled():
        raise BuildError(f"building an {arch} image on {host_arch()} needs qemu-user-static registered in "
                         f"binfmt_misc ({entry} is missing or disabled): install qemu-user-static and "
                         f"binfmt-support (`make deps`), then `update-binfmts --enable qemu-{QEMU_ARCH[arch]}`")


def read_packages() -> list[str]:
    lines = (HERE / "packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def tree_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                     and "__pycache__" not in p.parts)
        for p in files:
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def base_key(suite: str, arch: str, release: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "release": release, "suite": suite, "packages": read_packages(),
                         "cmdline": CMDLINE[arch]}).encode())
    # the recipe of this stage only (not the whole script): editing the golden stage keeps the base
    h.update("".join(inspect.getsource(f) for f in (build_base, configure_rootfs)).encode())
    h.update(tree_digest([HERE / "rootfs"]).encode())
    return h.hexdigest()[:16]


def golden_inputs() -> list[Path]:
    """Everything provisioning copies or runs: the playbook, the lab skeletons, the VM-side engine."""
    labs = [p for p in (REPO / "labs").glob("*") if p.is_dir()]
    out = [REPO / "provision" / "site.yml", REPO / "provision" / "plays", REPO / "provision" / "roles",
           REPO / "grader" / "engine", REPO / "grader" / "profiles", REPO / "grader" / "vmside"]
    # the package files copylab_lab installs beside the engine (copylab_lab_engine_files)
    out += [REPO / "grader" / name for name in ("__init__.py", "errors.py", "executor.py")]
    for lab in labs:
        for sub in lab.iterdir():
            if sub.name != "solution":
                out.append(sub)
    return [p for p in out if p.exists()]


def golden_key(base: str) -> str:
    recipe = "".join(inspect.getsource(f) for f in (build_golden, run_playbook, playbook, ssh_admin))
    h = hashlib.sha256((base + recipe + tree_digest(golden_inputs())).encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------- stages
def unmount_below(path: Path) -> None:
    """Unmount whatever an interrupted debootstrap left mounted inside path (proc, sys, dev binds),
    deepest first, so that removing the folder can never reach into the host's /proc, /sys or /dev."""
    root = str(path.resolve())
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f]
    for mp in sorted((p for p in points if p == root or p.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def remove_build_dir(path: Path) -> None:
    if path.exists():
        unmount_below(path)
        shutil.rmtree(path, ignore_errors=True)


class Stage:
    """A cache folder built atomically under a lock: build into NAME.tmp, rename to NAME."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")

    def ready(self) -> bool:
        return (self.path / "manifest.json").exists()

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the cache holds the grader's keys and the images QEMU only gets as descriptors: no other
        # account (QEMU's, a build's) needs a path into it, wherever COPYLAB_CACHE points
        if self.path.parent.stat().st_uid == os.geteuid():
            os.chmod(self.path.parent, 0o700)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build of {self.path.name} is running (make test starts the arm64 and Debian 13 ones early); "
                f"waiting for it")
            t0 = time.monotonic()
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            log(f"waited {time.monotonic() - t0:.0f}s for {self.path.name}")
        if not self.ready():
            remove_build_dir(self.tmp)
            self.tmp.mkdir()
        return self

    def commit(self, manifest: dict) -> None:
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(self.path, ignore_errors=True)
        self.tmp.rename(self.path)

    def __exit__(self, *exc):
        remove_build_dir(self.tmp)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def build_base(suite: str, arch: str, release: str, disk_gb: int = 8) -> Path:
    key = base_key(suite, arch, release)
    stage = Stage(cache_root() / f"base-{arch}-{release}-{key}")
    with stage:
        if stage.ready():
            log(f"base image cached: {stage.path}")
            return stage.path
        t0 = time.monotonic()
        out = stage.tmp
        rootfs = out / "rootfs"
        mirror, security = host_apt_mirrors()
        pkgs = read_packages() + [f"linux-image-{release}", f"linux-headers-{release}"]
        log(f"debootstrap {suite} ({arch}, kernel {release}, {len(pkgs)} packages) from the host's apt "
            f"mirror; this takes 2-4 minutes natively, 6-10 under emulation")
        foreign = arch != host_arch()
        if foreign:
            ensure_binfmt(arch)
        # two stages: the initramfs configuration goes in between, so the kernel's postinst builds the
        # small initrd once (MODULES=list) instead of the default one (minutes under emulation)
        cmd = ["debootstrap", "--foreign", "--variant=minbase", f"--arch={arch}",
               "--include=" + ",".join(pkgs), "--components=main", suite, str(rootfs), mirror]
        with open(out / "debootstrap.log", "w") as dlog:
            try:
                sh(cmd, "debootstrap (first stage)", timeout=2400, stdout=dlog, stderr=subprocess.STDOUT)
                # (conf.d and modules.d only: /etc/initramfs-tools/modules is a conffile, and dpkg
                # stops at a conffile it finds already there)
                for rel in ("etc/initramfs-tools", "usr/share/initramfs-tools"):
                    shutil.copytree(HERE / "rootfs" / rel, rootfs / rel, dirs_exist_ok=True)
                if foreign:
                    log(f"second stage runs {arch} binaries under qemu-user: about 6-10 minutes")
                sh(["chroot", str(rootfs), "/debootstrap/debootstrap", "--second-stage"],
                   "debootstrap (second stage)", timeout=3600, stdout=dlog, stderr=subprocess.STDOUT)
            except BuildError as e:
                tail = (out / "debootstrap.log").read_text(errors="replace")[-1500:]
                if f"linux-image-{release}" in tail and ("Couldn't find" in tail or "not found" in tail):
                    raise BuildError(f"kernel release {release} is not in {suite} on the configured mirror "
                                     f"(linux-image-{release} not found): set COPYLAB_KERNEL_RELEASE "
                                     f"to one it has, and pin it in SUITES and the copylab_kernel role"
                                     ) from e
                # the second stage writes its details (dpkg's errors) inside the root file system
                inner = rootfs / "debootstrap" / "debootstrap.log"
                if inner.exists():
                    tail += "\n--- <rootfs>/debootstrap/debootstrap.log (tail) ---\n" + \
                        inner.read_text(errors="replace")[-2500:]
                raise BuildError(f"{e}\n--- debootstrap.log (tail) ---\n{tail}") from e
        t_boot = time.monotonic()
        log(f"debootstrap done in {t_boot - t0:.0f}s; configuring the root file system")
        configure_rootfs(rootfs, suite, mirror, security, out)
        boot = rootfs / "boot"
        kernel = out / f"vmlinuz-{release}"
        initrd = out / f"initrd.img-{release}"
        if not (boot / f"vmlinuz-{release}").exists():
            raise BuildError(f"the image has no /boot/vmlinuz-{release}: the kernel package did not install")
        shutil.copy2(boot / f"vmlinuz-{release}", kernel)
        shutil.copy2(boot / f"initrd.img-{release}", initrd)
        os.chmod(kernel, 0o644)
        os.chmod(initrd, 0o644)
        log(f"initrd {initrd.stat().st_size / 1e6:.1f} MB (MODULES=list)")
        raw = out / "disk.raw"
        log(f"mkfs.ext4 -d (no loop mount) into a {disk_gb} GB disk, then qcow2")
        sh(["truncate", "-s", f"{disk_gb}G", str(raw)], "truncate")
        sh(["mkfs.ext4", "-q", "-F", "-L", "copylab-root", "-d", str(rootfs), str(raw)], "mkfs.ext4",
           capture_output=True)
        sh(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "base.qcow2")], "qemu-img convert",
           capture_output=True)
        raw.unlink()
        remove_build_dir(rootfs)
        manifest = {
            "stage": "base", "key": key, "arch": arch, "qemu_arch": QEMU_ARCH[arch],
            "kernel_release": release, "suite": suite, "disk": "base.qcow2",
            "kernel": kernel.name, "initrd": initrd.name, "cmdline": CMDLINE[arch],
            "admin_user": "copylab", "admin_key": "admin_ed25519",
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": {"debootstrap": round(t_boot - t0), "total": round(time.monotonic() - t0)},
        }
        stage.commit(manifest)
        log(f"base image ready in {time.monotonic() - t0:.0f}s: {stage.path}")
        return stage.path


def configure_rootfs(rootfs: Path, suite: str, mirror: str, security: str | None, out: Path) -> None:
    """Identity-free configuration: network by DHCP, sshd, the admin account, first-boot host keys."""
    def write(rel: str, text: str, mode: int = 0o644) -> None:
        p = rootfs / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)

    # files shipped in provision/image/rootfs are copied as they are
    src = HERE / "rootfs"
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        dest = rootfs / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)

    sources = f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n"
    if security:
        sources += f"deb {security} {suite}-security main\n"
    write("/etc/apt/sources.list", sources)
    write("/etc/hostname", "copylab\n")
    write("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 copylab\n::1 localhost ip6-localhost\n")
    write("/etc/fstab", "/dev/vda / ext4 errors=remount-ro 0 1\n")
    (rootfs / "etc/machine-id").write_text("")
    for key in rootfs.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.symlink_to("/run/systemd/resolve/stub-resolv.conf")

    # the admin account the image builder and Vagrant log in with; its key stays in the cache folder
    key = out / "admin_ed25519"
    sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "copylab-admin", "-f", str(key)],
       "ssh-keygen", capture_output=True)
    chroot = ["chroot", str(rootfs)]
    sh(chroot + ["useradd", "-m", "-s", "/bin/bash", "-G", "sudo", "copylab"], "useradd copylab",
       capture_output=True)
    write("/etc/sudoers.d/copylab-admin", "copylab ALL=(ALL) NOPASSWD: ALL\n", 0o440)
    ssh_dir = rootfs / "home/copylab/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    uid_gid = sh(chroot + ["id", "-u", "copylab"], "id", capture_output=True).stdout.strip()
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, int(uid_gid), int(uid_gid))
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    for unit in ("systemd-networkd.service", "systemd-resolved.service", "copylab-hostkeys.service"):
        sh(chroot + ["systemctl", "enable", unit], f"enable {unit}", capture_output=True)
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
                 "e2scrub_reap.service", "fstrim.timer"):
        subprocess.run(chroot + ["systemctl", "disable", unit], capture_output=True)
    sh(chroot + ["apt-get", "clean"], "apt-get clean", capture_output=True)


def build_golden(arch: str, release: str, base: Path) -> Path:
    bm = json.loads((base / "manifest.json").read_text())
    key = golden_key(bm["key"])
    stage = Stage(cache_root() / f"golden-{arch}-{release}-{key}")
    with stage:
        if stage.ready():
            log(f"golden image cached: {stage.path}")
            return stage.path
        t0 = time.monotonic()
        out = stage.tmp
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base / "base.qcow2"),
            str(out / "golden.qcow2")], "qemu-img create", capture_output=True)
        gkey = out / "grader_ed25519"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "copylab-grader", "-f", str(gkey)],
           "ssh-keygen", capture_output=True)
        image = ImageSpec(disk=out / "golden.qcow2", kernel=base / bm["kernel"], initrd=base / bm["initrd"],
                          cmdline=bm["cmdline"], arch=QEMU_ARCH[arch])
        vm = QemuVM(image=image, workdir=out / "vm", name="golden", restrict_network=False)
        vm.workdir.mkdir()
        # provision the golden disk itself, not an overlay of it
        vm.overlay.symlink_to(out / "golden.qcow2")
        try:
            log("booting the base image to provision it")
            vm.start()
            log(f"VM up ({vm.accel.accel}: {vm.accel.reason}); SSH on 127.0.0.1:{vm.ssh_port}")
            t_prov = time.monotonic()
            run_playbook(vm, base / bm["admin_key"], gkey.with_suffix(".pub"), release,
                         out / "provision.log")
            t_done = time.monotonic()
            log(f"provisioned in {t_done - t_prov:.0f}s; second run to prove it changes nothing")
            second = run_playbook(vm, base / bm["admin_key"], gkey.with_suffix(".pub"), release,
                                  out / "provision-2.log")
            t_second = time.monotonic()
            recap = parse_recap(second)
            if recap.get("changed") != 0 or recap.get("failed") != 0:
                raise BuildError(f"the second provisioning run was not idempotent: {recap} "
                                 f"(see {out / 'provision-2.log'})")
            log(f"second run in {t_second - t_done:.0f}s: {recap}; resetting per-VM identity, powering off")
            ssh_admin(vm, base / bm["admin_key"],
                      "sudo sh -c 'rm -f /etc/ssh/ssh_host_* && : > /etc/machine-id && apt-get clean && "
                      "rm -rf /tmp/* && sync && (sleep 1; poweroff) >/dev/null 2>&1 &'")
            deadline = time.monotonic() + 120
            while vm.running() and time.monotonic() < deadline:
                time.sleep(0.5)
            if vm.running():
                raise BuildError("the golden VM did not power off within 120 s")
        finally:
            vm.kill()
        shutil.copy2(vm.serial_log, out / "first-boot.serial.log")
        shutil.rmtree(out / "vm")
        manifest = {
            "stage": "golden", "key": key, "base": str(base), "base_key": bm["key"], "arch": arch,
            "suite": bm["suite"],
            "qemu_arch": QEMU_ARCH[arch], "kernel_release": release, "disk": "golden.qcow2",
            "kernel_path": str(base / bm["kernel"]), "initrd_path": str(base / bm["initrd"]),
            "cmdline": bm["cmdline"], "admin_user": "copylab", "admin_key_path": str(base / bm["admin_key"]),
            "grader_user": "grader", "grader_key": "grader_ed25519", "accel_used": vm.accel.accel,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": {"provision": round(t_done - t_prov), "provision_again": round(t_second - t_done),
                        "total": round(time.monotonic() - t0)},
            "second_run_recap": recap,
        }
        stage.commit(manifest)
        log(f"golden image ready in {time.monotonic() - t0:.0f}s: {stage.path}")
        return stage.path


BUILDROOT_DUMP = ["/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
                  "/var/lib/dpkg/status"]
# what the module and program builds never read: the kernel's own modules, documentation, locales
BUILDROOT_PRUNE = ["usr/lib/modules/*/kernel", "usr/share/doc", "usr/share/man", "usr/share/locale",
                   "usr/share/info", "usr/lib/firmware"]
# (and the suite's compiler, SUITES[suite]["gcc"])
BUILDROOT_PACKAGES = ["gcc", "make", "binutils", "libc6-dev"]


def buildroot_key(golden: str) -> str:
    recipe = "".join(inspect.getsource(f) for f in (build_buildroot, dpkg_versions))
    lists = json.dumps([BUILDROOT_DUMP, BUILDROOT_PRUNE, BUILDROOT_PACKAGES])
    return hashlib.sha256((golden + recipe + lists).encode()).hexdigest()[:16]


def build_buildroot(arch: str, release: str, golden: Path) -> Path:
    """The golden image's own toolchain and kernel headers as a read-only tree for the host-side
    sandboxed build (grader/buildbox.py): extracted from the image's disk with debugfs (no mount)."""
    gm = json.loads((golden / "manifest.json").read_text())
    key = buildroot_key(gm["key"])
    stage = Stage(cache_root() / f"buildroot-{arch}-{release}-{key}")
    with stage:
        if stage.ready():
            log(f"build root cached: {stage.path}")
            return stage.path
        t0 = time.monotonic()
        out = stage.tmp
        raw = out / "disk.raw"
        tree = out / "tree"
        log("build root: the golden image's toolchain and kernel headers (debugfs rdump, no mount)")
        sh(["qemu-img", "convert", "-O", "raw", str(golden / gm["disk"]), str(raw)], "qemu-img convert",
           capture_output=True)
        for path in BUILDROOT_DUMP:
            dest = tree / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            sh(["debugfs", "-R", f"rdump {path} {dest.parent}", str(raw)], f"debugfs rdump {path}",
               capture_output=True)
            if not dest.exists():
                raise BuildError(f"the golden image has no {path}")
        raw.unlink()
        for pattern in BUILDROOT_PRUNE:
            for p in tree.glob(pattern):
                shutil.rmtree(p)
        for link in ("bin", "sbin", "lib", "lib64"):
            if (tree / "usr" / link).exists():
                (tree / link).symlink_to(f"usr/{link}")
        for mountpoint in ("proc", "dev", "tmp", "build"):
            (tree / mountpoint).mkdir()
        compiler = SUITES[gm.get("suite", DEFAULT_SUITE)]["gcc"]
        versions = dpkg_versions(tree / "var/lib/dpkg/status",
                                 BUILDROOT_PACKAGES + [compiler, f"linux-headers-{release}"])
        missing = [p for p, v in versions.items() if v is None]
        if missing or not (tree / f"usr/lib/modules/{release}/build").is_symlink():
            raise BuildError(f"the golden image lacks {missing or ['the kernel build tree']}: "
                             f"the toolchain role did not install them")
        stage.commit({"stage": "buildroot", "key": key, "golden": str(golden), "golden_key": gm["key"],
                      "arch": arch, "kernel_release": release, "tree": "tree", "packages": versions,
                      "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "seconds": round(time.monotonic() - t0)})
        log(f"build root ready in {time.monotonic() - t0:.0f}s: {stage.path}")
        return stage.path


def dpkg_versions(status: Path, packages: list[str]) -> dict[str, str | None]:
    """Installed versions of `packages` from a dpkg status file (None: not installed)."""
    found: dict[str, str | None] = dict.fromkeys(packages)
    for para in status.read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", para, re.M))
        if fields.get("Package") in found and fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields.get("Version")
    return found


def ansible_env() -> dict:
    """Environment for ansible-playbook: the project's ansible.cfg and, when installed, Mitogen's
    strategy, which keeps one Python process in the VM instead of starting one per task (about
    twice as fast under software emulation). COPYLAB_ANSIBLE_MITOGEN=0 turns it off."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "provision" / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1")
    env.setdefault("ANSIBLE_TIMEOUT", "120")  # first contact with a guest under TCG is slow
    if os.environ.get("COPYLAB_ANSIBLE_MITOGEN", "1") != "0":
        try:
            import ansible_mitogen
        except ImportError:
            return env
        env.setdefault("ANSIBLE_STRATEGY_PLUGINS",
                       str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"))
        env.setdefault("ANSIBLE_STRATEGY", "mitogen_linear")
    return env


def parse_recap(output: str) -> dict:
    """The numbers of ansible's PLAY RECAP line, e.g. {'ok': 63, 'changed': 0, 'failed': 0, ...}."""
    m = re.search(r"^\S+\s*:\s*(ok=\d+.*)$", output.split("PLAY RECAP", 1)[-1], re.M)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))} if m else {}


def ssh_admin(vm: QemuVM, key: Path, command: str, timeout: float = 120) -> None:
    sh(["ssh", "-i", str(key), "-p", str(vm.ssh_port), "-o", f"UserKnownHostsFile={vm.known_hosts}",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
        "copylab@127.0.0.1", command], "ssh to the golden VM", timeout=timeout, capture_output=True)


def run_playbook(vm: QemuVM, admin_key: Path, grader_pub: Path, release: str, logfile: Path,
                 extra_vars: dict | None = None, check_idempotent: bool = False) -> str:
    """Run provision/site.yml against a booted VM; returns the output (raises BuildError on failure)."""
    return playbook(host="127.0.0.1", port=vm.ssh_port, user="copylab", key=admin_key,
                    known_hosts=vm.known_hosts, grader_pub=grader_pub, release=release, logfile=logfile,
                    extra_vars=extra_vars)


def playbook(host: str, port: int, user: str, key: Path, known_hosts: Path, grader_pub: Path | None,
             release: str, logfile: Path, extra_vars: dict | None = None, timeout: float = 1800,
             play: Path | None = None) -> str:
    inventory = logfile.with_suffix(".inventory.ini")
    inventory.write_text(
        f"lab ansible_host={host} ansible_port={port} ansible_user={user} "
        f"ansible_ssh_private_key_file={key} "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes'\n")
    variables = {"copylab_kernel_release": release,
                 "copylab_grader_access_known_hosts_file": str(known_hosts)}
    if grader_pub is not None:
        variables["copylab_grader_access_pubkey"] = grader_pub.read_text().strip()
    variables.update(extra_vars or {})
    env = ansible_env()
    ansible = shutil.which("ansible-playbook") or str(Path(sys.executable).parent / "ansible-playbook")
    cmd = [ansible, "-i", str(inventory), str(play or REPO / "provision" / "site.yml"),
           "-e", json.dumps(variables)]
    log(f"ansible-playbook site.yml -> {host}:{port} (log: {logfile})")
    with open(logfile, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=REPO / "provision")
        lines = []
        t_start = time.monotonic()
        try:
            for line in proc.stdout:
                f.write(line)
                lines.append(line)
                if line.startswith(("TASK [", "PLAY [", "PLAY RECAP")):
                    print(f"    {time.monotonic() - t_start:6.0f}s  " + line.strip().rstrip("*").strip(),
                          flush=True)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise BuildError(f"ansible-playbook took longer than {timeout:.0f}s; see {logfile}")
    output = "".join(lines)
    if proc.returncode != 0:
        failed = [ln.strip() for ln in lines
                  if ln.startswith(("fatal:", "failed:", "[ERROR]", "ERROR!")) or '"msg":' in ln]
        raise PlaybookFailed(f"provisioning failed (ansible exit {proc.returncode}): "
                         f"{' | '.join(failed[-3:]) or 'see log'}; full log: {logfile}")
    return output


def export_box(golden: Path) -> Path:
    """A libvirt Vagrant box of the golden image (flattened qcow2 + metadata + Vagrantfile)."""
    gm = json.loads((golden / "manifest.json").read_text())
    box = golden / "copylab.box"
    if box.exists():
        log(f"box cached: {box}")
        return box
    t0 = time.monotonic()
    work = golden / "box.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log("exporting the golden image as a libvirt Vagrant box (flattening the qcow2)")
    sh(["qemu-img", "convert", "-O", "qcow2", str(golden / gm["disk"]), str(work / "box.img")],
       "qemu-img convert", capture_output=True)
    (work / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2",
                                                    "virtual_size": 8}) + "\n")
    (work / "Vagrantfile").write_text(
        "# copylab locally built box: direct kernel boot, see the project's Vagrantfile\n"
        "Vagrant.configure('2') do |config|\n  config.vm.provider :libvirt do |lv|\n"
        "    lv.driver = 'kvm'\n  end\nend\n")
    sh(["tar", "-C", str(work), "-cf", str(box) + ".tmp", "metadata.json", "Vagrantfile", "box.img"],
       "tar the box")
    os.replace(str(box) + ".tmp", box)
    shutil.rmtree(work)
    log(f"box ready in {time.monotonic() - t0:.0f}s: {box}")
    return box


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default=os.environ.get("COPYLAB_ARCH", "amd64"), choices=sorted(CMDLINE))
    ap.add_argument("--suite", default=os.environ.get("COPYLAB_SUITE", DEFAULT_SUITE), choices=sorted(SUITES),
                    help="Debian release of the lab VM (default %(default)s; env COPYLAB_SUITE)")
    ap.add_argument("--kernel-release", default=os.environ.get("COPYLAB_KERNEL_RELEASE"),
                    help="kernel release to pin instead of the suite's (env COPYLAB_KERNEL_RELEASE)")
    ap.add_argument("--stage", choices=["base", "golden", "buildroot", "box"], default="golden",
                    help="golden and box also make the build root when the image's arch is the host's")
    ap.add_argument("--print-path", action="store_true", help="print the resulting folder only")
    args = ap.parse_args(argv)
    release = args.kernel_release or SUITES[args.suite]["kernel"].get(args.arch)
    if release is None:
        print(f"build_image: no {args.arch} kernel is pinned for {args.suite} (SUITES in {__file__}); "
              f"set COPYLAB_KERNEL_RELEASE", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("build_image: debootstrap needs root; run as root (sudo make image)", file=sys.stderr)
        return 2
    try:
        path = build_base(args.suite, args.arch, release)
        if args.stage in ("golden", "buildroot", "box"):
            path = build_golden(args.arch, release, path)
            if args.arch == host_arch():
                root = build_buildroot(args.arch, release, path)
                path = root if args.stage == "buildroot" else path
        if args.stage == "box":
            export_box(path)
    except BuildError as e:
        print(f"build_image: {e}", file=sys.stderr)
        return 1
    print(path if args.print_path else f"image: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
