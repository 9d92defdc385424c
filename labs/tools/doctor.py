#!/usr/bin/env python3
"""lab doctor: is this machine ready for the copylab labs? Compares it with the kit's manifest.

    lab doctor [--json]            in the lab VM: the VM itself
    ./lab doctor [--json]          on the host, in the kit folder: the host, then the VM through vagrant ssh

In the lab VM it checks the kernel release and build against the kit's pin, the kernel headers the
module builds against, the compiler, kprobes on both copy functions (a live self-test through the
copylab helper), the lockdown state, the sysctls the lab needs, that the kernel log can be read, free
disk, the clock and the lab folders. On the host it checks the CPU architecture, Vagrant and a
provider, KVM, that the VM runs, and the VM's clock against the host's.

Every finding says what is wrong and the command that fixes it. Exit status: 0 when the lab can
work (warnings allowed), 1 when something must be fixed first, 2 for a usage error.

Standard library only; runs on the VM's Python 3.11 and on a host's Python 3.8 or newer.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = Path(__file__).resolve().with_name("manifest.json")
HELPER = "/usr/local/libexec/copylab/copylab-helper"
CHECK_COMMAND = "copylab-check"
LAB_FILES = ("Makefile", "Kbuild", "lab.toml")
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


@dataclass
class Finding:
    check: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def warn(check: str, detail: str, fix: str = "") -> Finding:
    return Finding(check, "warn", detail, fix)


def fail(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, "fail", detail, fix)


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


def run(cmd: list[str], timeout: float = 60, **kw) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); 127 when the program is missing, 124 on timeout. Never raises."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        return r.returncode, r.stdout, r.stderr
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(cmd)}: no answer within {timeout:.0f} s"


def read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# ------------------------------------------------------------------------------------ in the VM
def debian_suite() -> str | None:
    """The Debian release codename (bookworm, trixie) from /etc/os-release."""
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", read("/etc/os-release") or "", re.M)
    return m.group(1) if m else None


def dpkg_version(package: str) -> str | None:
    rc, out, _ = run(["dpkg-query", "-W", "-f=${Status}|${Version}", package])
    status, _, version = out.partition("|")
    return version if rc == 0 and status.endswith(" installed") else None


def headers_release(build: Path) -> str | None:
    """The release a headers tree builds modules for: UTS_RELEASE, which goes into their vermagic."""
    text = read(build / "include" / "generated" / "utsrelease.h") or ""
    for line in text.splitlines():
        if line.startswith("#define UTS_RELEASE "):
            return line.split(None, 2)[2].strip().strip('"')
    return None


def dmesg_access() -> str:
    """'direct', 'sudo' (the lab's sudo rule), or 'no: <why>'."""
    rc, _, err = run(["dmesg"], timeout=30)
    if rc == 0:
        return "direct"
    rc2, _, err2 = run(["sudo", "-n", "/usr/bin/dmesg"], timeout=30)
    if rc2 == 0:
        return "sudo"
    return f"no: dmesg: {err.strip() or rc}; sudo dmesg: {err2.strip() or rc2}"


def helper_json(*args: str) -> dict:
    """One JSON answer of the copylab helper: run directly as root, else through the lab's sudo rule;
    {"error": why} when it does not answer."""
    cmd = [HELPER, *args]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    rc, out, err = run(cmd, timeout=120)
    if rc != 0:
        return {"error": (err.strip() or out.strip() or f"exit status {rc}").splitlines()[-1]}
    try:
        return json.loads(out)
    except ValueError:
        return {"error": f"unreadable answer from the helper: {out[:200]!r}"}


def root_facts(symbols: list[str]) -> dict:
    """What only root can see (kprobes state, blacklist, lockdown, a live probe self-test)."""
    return helper_json("doctor", *symbols)


def cards_usable(status: dict, driver: str) -> bool:
    """Both cards are there, driven by the lab's driver."""
    return bool(status.get("nics")) and all(n.get("present") and n.get("driver") == driver
                                            for n in status["nics"])


def network_probes(manifest: dict, networks: dict) -> dict:
    """lab -> the helper's doctor answers for the lab's own probe points (two symbols per self-test),
    looked at only when the lab's cards are there with their driver (a driver's symbols exist only
    with its cards; another driver may have functions of the same names)."""
    out = {}
    for lab, net in manifest.get("lab_networks", {}).items():
        syms = net["probe_symbols"]
        out[lab] = ([root_facts(syms[i:i + 2]) for i in range(0, len(syms), 2)]
                    if cards_usable(networks.get(lab, {}), net["driver"]) else [])
    return out


def vm_facts(manifest: dict) -> dict:
    import pwd  # the VM side only: the host side also runs on Windows

    rel = os.uname().release
    build = Path("/lib/modules") / rel / "build"
    try:
        home = Path(pwd.getpwnam(manifest["student_user"]).pw_dir)
    except KeyError:
        home = None
    labs_dir = home / "labs" if home else None
    now = time.time()
    future = []
    if labs_dir and labs_dir.is_dir():
        for lab in manifest["labs"]:
            for p in sorted((labs_dir / lab).glob("*")) if (labs_dir / lab).is_dir() else []:
                try:
                    if p.is_file() and p.stat().st_mtime > now + 2:
                        future.append(str(p))
                except OSError:
                    pass
    networks = {lab: helper_json("net-status") for lab in manifest.get("lab_networks", {})}
    disk_at = labs_dir if labs_dir and labs_dir.exists() else Path("/")
    st = os.statvfs(disk_at)
    return {
        "user": pwd.getpwuid(os.geteuid()).pw_name,
        "arch": platform.machine(),
        "suite": debian_suite(),
        "release": rel,
        "version": os.uname().version,
        "headers_dir": str(build) if build.is_dir() else None,
        "headers_release": headers_release(build),
        "headers_pkg": dpkg_version(f"linux-headers-{rel}"),
        "tools": {t: shutil.which(t) is not None for t in ("gcc", "make")},
        "dmesg_restrict": read("/proc/sys/kernel/dmesg_restrict"),
        "dmesg": dmesg_access(),
        "sysctls": {k: read("/proc/sys/" + k.replace(".", "/")) for k in manifest["sysctls"]},
        "free_mb": st.f_bavail * st.f_frsize // (1024 * 1024),
        "disk_path": str(disk_at),
        "now": now,
        "future_files": future,
        "labs_dir": str(labs_dir) if labs_dir else None,
        "labs_missing": {lab: [f for f in LAB_FILES if not (labs_dir and (labs_dir / lab / f).is_file())]
                         for lab in manifest["labs"]},
        "check_command": shutil.which(CHECK_COMMAND, path=os.environ.get("PATH", "") + ":/usr/local/bin"),
        "networks": networks,
        "network_probes": network_probes(manifest, networks),
        "root": root_facts(manifest["probe_symbols"]),
    }


def _kernel_fix(want: str, pkg: str) -> str:
    return (f"on the host: vagrant provision && vagrant reload   (in the VM: sudo apt-get install "
            f"linux-image-{want}={pkg} linux-headers-{want}={pkg} && sudo reboot)")


def evaluate_vm(f: dict, m: dict) -> list[Finding]:
    """The findings for one set of VM facts (pure: unit-tested on fact dictionaries)."""
    out: list[Finding] = []
    suite = f.get("suite") or m["suite"]
    pins = m["kernels"].get(suite)
    if pins is None:
        return [fail("debian release", f"this VM runs Debian {suite}; the kit pins kernels for "
                     f"{', '.join(sorted(m['kernels']))}", "use the lab VM the kit's Vagrantfile brings up")]
    if suite == m["suite"]:
        out.append(ok("debian release", suite))
    else:
        out.append(warn("debian release", f"{suite}, while this kit's course runs {m['suite']}: the labs "
                        f"run on both, but grading happens on {m['suite']}",
                        "use the lab VM the kit's Vagrantfile brings up (vagrant destroy && vagrant up)"))
    pin = pins.get(f["arch"])
    if not pin:
        return out + [fail("architecture", f"this kit pins no {suite} kernel for {f['arch']} (it has: "
                           f"{', '.join(sorted(pins))})", "use the lab VM the kit's Vagrantfile brings up")]
    want, pkg = pin["release"], pin["package_version"]
    out.append(ok("architecture", f["arch"]))
    rel = f["release"]
    if rel == want:
        out.append(ok("kernel release", rel))
    else:
        out.append(fail("kernel release", f"running {rel}, the lab is pinned to {want}", _kernel_fix(want, pkg)))
    if pkg in f["version"]:
        out.append(ok("kernel build", f"{pkg} ({f['version']})"))
    else:
        out.append(fail("kernel build", f"running build '{f['version']}', the kit expects Debian {pkg}",
                        _kernel_fix(want, pkg)))
    headers_fix = f"sudo apt-get install --reinstall linux-headers-{rel}" + (f"={pkg}" if rel == want else "")
    if not f["headers_dir"]:
        out.append(fail("kernel headers", f"/lib/modules/{rel}/build is missing: modules cannot be built",
                        headers_fix))
    elif f["headers_release"] != rel:
        theirs = f["headers_release"] or "an unknown release"
        out.append(fail("kernel headers", f"{f['headers_dir']} holds headers for {theirs}, the running kernel "
                        f"is {rel}: the module would not load", headers_fix))
    elif f["headers_pkg"] is None:
        out.append(fail("kernel headers", f"package linux-headers-{rel} is not installed", headers_fix))
    elif rel == want and f["headers_pkg"] != pkg:
        out.append(fail("kernel headers", f"linux-headers-{rel} is version {f['headers_pkg']}, the kit expects "
                        f"{pkg}", headers_fix))
    else:
        out.append(ok("kernel headers", f"{f['headers_dir']} ({f['headers_pkg']})"))
    missing_tools = [t for t, there in f["tools"].items() if not there]
    out.append(fail("compiler", f"missing: {', '.join(missing_tools)}", "sudo apt-get install build-essential")
               if missing_tools else ok("compiler", "gcc and make"))
    out.extend(_root_findings(f["root"], m["probe_symbols"], rel, want))
    for lab, net in m.get("lab_networks", {}).items():
        out.extend(_network_findings(lab, net, f.get("networks", {}).get(lab, {"error": "not looked at"}),
                                     f.get("network_probes", {}).get(lab, []), rel))
    for key, value in m["sysctls"].items():
        got = f["sysctls"].get(key)
        if got == value:
            out.append(ok(f"sysctl {key}", value))
        elif key == "kernel.modules_disabled":
            out.append(fail(f"sysctl {key}", f"{got}: module loading is switched off until the next boot",
                            "on the host: vagrant reload"))
        else:
            out.append(fail(f"sysctl {key}", f"{got}, the lab needs {value}", f"sudo sysctl -w {key}={value}"))
    if f["dmesg"] in ("direct", "sudo"):
        how = "dmesg" if f["dmesg"] == "direct" else "sudo dmesg (kernel.dmesg_restrict=1)"
        out.append(ok("kernel log", f"readable by {f['user']} with {how}"))
    else:
        out.append(fail("kernel log", f"{f['user']} cannot read the kernel log (kernel.dmesg_restrict="
                        f"{f['dmesg_restrict']}; {f['dmesg'][4:]})",
                        "on the host: vagrant provision   (restores the lab's sudo rule for dmesg; or in the "
                        "VM: sudo sysctl -w kernel.dmesg_restrict=0)"))
    if f["free_mb"] >= m["min_free_mb"]:
        out.append(ok("free disk", f"{f['free_mb']} MB free on {f['disk_path']}"))
    else:
        out.append(fail("free disk", f"{f['free_mb']} MB free on {f['disk_path']}, the lab needs "
                        f"{m['min_free_mb']} MB", "make clean in each lab folder; sudo apt-get clean"))
    earliest = time.mktime(time.strptime(m["earliest_clock"], "%Y-%m-%d"))
    if f["now"] < earliest:
        out.append(fail("clock", f"the clock says {time.strftime('%Y-%m-%d %H:%M', time.gmtime(f['now']))} "
                        "UTC: make and the grader's timestamps go wrong",
                        "on the host: vagrant reload   (or in the VM: sudo date -s 'YYYY-MM-DD HH:MM:SS')"))
    elif f["future_files"]:
        out.append(warn("clock", f"{len(f['future_files'])} lab file(s) are dated in the future, e.g. "
                        f"{f['future_files'][0]}: make may skip rebuilding them",
                        "touch the files, and set the clock (on the host: ./lab doctor compares both clocks)"))
    else:
        out.append(ok("clock", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(f["now"]))))
    for lab, missing in f["labs_missing"].items():
        where = f"{f['labs_dir']}/{lab}"
        out.append(fail(f"lab {lab}", f"{where} lacks {', '.join(missing)}", "on the host: vagrant provision")
                   if missing else ok(f"lab {lab}", where))
    out.append(ok("make check", f["check_command"]) if f["check_command"] else
               fail("make check", f"{CHECK_COMMAND} is not installed", "on the host: vagrant provision"))
    return out


def _root_findings(r: dict, symbols: list[str], rel: str, want: str) -> list[Finding]:
    if "error" in r:
        return [fail("root helper", f"the copylab helper did not run as root: {r['error']}",
                     "on the host: vagrant provision   (restores the helper and the lab's sudo rules)")]
    out = []
    if r.get("kprobes_enabled") == "1":
        out.append(ok("kprobes", "enabled"))
    else:
        out.append(fail("kprobes", f"kprobes are switched off in this kernel (debug/kprobes/enabled = "
                        f"{r.get('kprobes_enabled')}): probes register but never fire",
                        "echo 1 | sudo tee /sys/kernel/debug/kprobes/enabled"))
    pin_fix = f"use the pinned kernel {want}: on the host, vagrant provision && vagrant reload"
    for sym in symbols:
        if not r.get("kallsyms", {}).get(sym):
            out.append(fail(f"probe {sym}", f"{sym} is not a symbol of kernel {rel}", pin_fix))
        elif sym in r.get("blacklisted", []):
            out.append(fail(f"probe {sym}", f"{sym} is on this kernel's kprobe blacklist", pin_fix))
    st = r.get("selftest", {})
    if st.get("status") == "ok":
        out.append(ok("probe self-test", f"register_kprobe accepted {', '.join(symbols)}"))
    else:
        out.append(fail("probe self-test", f"a module registering kprobes on {', '.join(symbols)} failed: "
                        f"{st.get('detail', 'no result')}",
                        "on the host: vagrant provision   (rebuilds the self-test against the pinned kernel)"))
    lock = r.get("lockdown")
    if lock in (None, "none"):
        out.append(ok("lockdown", lock or "no lockdown support in this kernel"))
    else:
        out.append(fail("lockdown", f"kernel lockdown is '{lock}': unsigned modules (the lab's) are refused",
                        "lockdown is only lifted by a reboot without it: turn Secure Boot off in the VM's "
                        "firmware settings, then on the host: vagrant reload"))
    return out


def _network_probe_finding(lab: str, net: dict, answers: list[dict], rel: str) -> Finding:
    wrong = []
    for r in answers:
        if "error" in r:
            wrong.append(r["error"])
            continue
        wrong += [f"{s} is not a symbol of kernel {rel}" for s, there in r.get("kallsyms", {}).items() if not there]
        wrong += [f"{s} is on the kprobe blacklist" for s in r.get("blacklisted", [])]
        if r.get("selftest", {}).get("status") != "ok":
            wrong.append(f"self-test: {r.get('selftest', {}).get('detail', 'no result')}")
    if wrong:
        return warn(f"{lab} probes", "; ".join(wrong), "lsmod | grep " + net["driver"] + "   (the cards' driver "
                    "must be loaded); else on the host: vagrant provision && vagrant reload")
    return ok(f"{lab} probes", f"register_kprobe accepted {', '.join(net['probe_symbols'])}")


def _network_findings(lab: str, net: dict, st: dict, probes: list[dict], rel: str) -> list[Finding]:
    """A lab's network (lab 2: two cards joined to each other, the second in its own namespace). Only
    warnings: the other labs work without it (the root helper's own failure is reported once, above)."""
    if "error" in st:
        return [warn(f"{lab} network", f"the copylab helper could not report the lab network: {st['error']}",
                     "on the host: vagrant provision   (restores the helper and the lab's sudo rules)")]
    missing = [n["mac"] for n in st.get("nics", []) if not n.get("present")]
    if missing or not st.get("nics"):
        return [warn(f"{lab} cards", f"no {net['driver']} card with MAC {', '.join(missing) or 'any'}: {lab} "
                     f"needs two cards joined to each other",
                     "on the host: vagrant reload   (the kit's Vagrantfile gives the VM both cards)")]
    other = [f"{n['name']} ({n['mac']}) is driven by {n.get('driver') or 'no driver'}"
             for n in st["nics"] if n.get("driver") != net["driver"]]
    if other:
        return [warn(f"{lab} cards", f"{lab} needs Intel 82574L cards driven by {net['driver']}, but "
                     f"{' and '.join(other)}: the lab's probe points, its copybreak and the grader's view of "
                     f"the cards are {net['driver']}'s, so {lab} cannot be done in this VM (the other labs can). "
                     f"VirtualBox has no 82574L: its Intel cards are 8254x models, driven by e1000",
                     f"do {lab} in a libvirt VM (on Linux: vagrant up --provider=libvirt), which has the "
                     f"{net['driver']} cards; the official grader runs {lab} on them too")]
    names = ", ".join(f"{n['name']} ({n['mac']}, {n['driver']})" for n in st["nics"])
    out = [ok(f"{lab} cards", names), _network_probe_finding(lab, net, probes, rel)]
    if st.get("ready"):
        where = "; ".join(f"{n['addresses'][0]} on {n['name']}" + (f" in {n['namespace']}" if n["namespace"] else "")
                          for n in st["nics"])
        out.append(ok(f"{lab} network", f"{where}; copybreak {st.get('copybreak')}"))
        return out
    wrong = []
    if not st.get("namespace_exists"):
        wrong.append(f"no network namespace {net['namespace']}")
    for n in st["nics"]:
        want_ns = net["namespace"] if n.get("role") != "sender" else ""
        if n.get("namespace", "") != want_ns:
            wrong.append(f"{n['name']} is in namespace '{n.get('namespace') or 'the first'}', not "
                         f"'{want_ns or 'the first'}'")
        if not (n.get("up") and n.get("carrier")):
            wrong.append(f"{n['name']} is down")
        if n.get("addresses") != [n.get("want")]:
            wrong.append(f"{n['name']} has {', '.join(n.get('addresses') or []) or 'no address'}, not {n.get('want')}")
    out.append(warn(f"{lab} network", "not set up: " + "; ".join(wrong or ["not ready"]),
                    f"cd ~/labs/{lab} && make net   (make check runs it too)"))
    return out


# ------------------------------------------------------------------------------------ on the host
def vagrant(args: list[str], kit: Path, timeout: float = 300) -> tuple[int, str, str]:
    env = dict(os.environ)
    env.setdefault("VAGRANT_CWD", str(kit))
    return run(["vagrant", *args], timeout=timeout, env=env)


def host_facts(kit: Path) -> dict:
    facts: dict = {"arch": platform.machine(), "system": platform.system(), "kit": str(kit)}
    rc, out, _ = run(["vagrant", "--version"], timeout=60)
    facts["vagrant"] = out.strip() if rc == 0 else None
    if facts["vagrant"]:
        rc, out, _ = vagrant(["plugin", "list"], kit, timeout=120)
        facts["libvirt_plugin"] = rc == 0 and "vagrant-libvirt" in out
        facts["qemu_plugin"] = rc == 0 and "vagrant-qemu" in out
    else:
        facts["libvirt_plugin"] = facts["qemu_plugin"] = False
    facts["virtualbox"] = shutil.which("VBoxManage") is not None
    facts["kvm"] = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    facts["vm_state"] = None
    facts["vm"] = None
    if facts["vagrant"]:
        rc, out, err = vagrant(["status", "--machine-readable"], kit, timeout=120)
        states = [line.split(",")[3] for line in out.splitlines() if line.count(",") >= 3
                  and line.split(",")[2] == "state"]
        facts["vm_state"] = states[0] if states else f"unknown ({(err or out).strip()[-200:]})"
        if facts["vm_state"] == "running":
            t0 = time.time()
            rc, out, err = vagrant(["ssh", "-c", "sudo -iu student lab doctor --json"], kit, timeout=300)
            facts["host_time"] = (t0 + time.time()) / 2
            try:
                facts["vm"] = json.loads(out.replace("\r\n", "\n"))
            except ValueError:
                facts["vm"] = {"error": (err.strip() or out.strip() or f"exit status {rc}")[-300:]}
    return facts


def evaluate_host(f: dict, m: dict) -> list[Finding]:
    out: list[Finding] = []
    if f["arch"].lower() in m["host"]["supported_arch"]:
        out.append(ok("host", f"{f['system']} on {f['arch']}"))
    else:
        out.append(fail("host", f"this host is {f['arch']}: the kit's lab VMs are x86_64 and arm64 only",
                        "use an x86_64 or arm64 machine, or a lab machine your instructor provides"))
    if not f["vagrant"]:
        out.append(fail("vagrant", "vagrant is not installed", "install Vagrant (on Debian/Ubuntu: sudo apt-get "
                        "install vagrant vagrant-libvirt libvirt-daemon-system)"))
        return out
    out.append(ok("vagrant", f["vagrant"]))
    providers = [name for name, have in (("libvirt", f["libvirt_plugin"]), ("VirtualBox", f["virtualbox"]),
                                         ("qemu", f.get("qemu_plugin"))) if have]
    if providers:
        out.append(ok("provider", ", ".join(providers)))
    elif f["system"] == "Darwin":
        out.append(fail("provider", "no Vagrant provider for this Mac: neither the vagrant-qemu plugin nor "
                        "VirtualBox is installed", "brew install qemu && vagrant plugin install vagrant-qemu"))
    else:
        out.append(fail("provider", "neither the vagrant-libvirt plugin nor VirtualBox is installed",
                        "sudo apt-get install vagrant-libvirt libvirt-daemon-system   (or install VirtualBox)"))
    if f["system"] == "Linux":
        out.append(ok("kvm", "/dev/kvm is usable") if f["kvm"] else
                   warn("kvm", "/dev/kvm is missing or not usable: the VM runs under software emulation, "
                        "several times slower", "enable virtualisation in the firmware, add yourself to group "
                        "kvm; meanwhile: COPYLAB_LIBVIRT_DRIVER=qemu vagrant up"))
    if f["vm_state"] != "running":
        out.append(fail("lab VM", f"the lab VM is {f['vm_state']}", "vagrant up"))
        return out
    out.append(ok("lab VM", "running"))
    vm = f["vm"] or {}
    if "findings" not in vm:
        out.append(fail("lab VM doctor", f"lab doctor did not run in the VM: {vm.get('error')}",
                        "vagrant provision   (installs lab doctor in the VM)"))
        return out
    for x in vm["findings"]:
        out.append(Finding(f"vm: {x['check']}", x["status"], x["detail"], x["fix"]))
    skew = vm.get("now", f["host_time"]) - f["host_time"]
    if abs(skew) <= m["max_clock_skew_s"]:
        out.append(ok("vm: clock vs host", f"{skew:+.0f} s"))
    else:
        out.append(fail("vm: clock vs host", f"the VM's clock is {skew:+.0f} s off the host's: make sees files "
                        "edited on the host as dated in the future or the past",
                        f"vagrant ssh -c 'sudo date -s @{int(time.time())}'   (or: vagrant reload)"))
    return out


# ------------------------------------------------------------------------------------ report
def render(findings: list[Finding], where: str) -> str:
    width = max(len(x.check) for x in findings)
    lines = [f"lab doctor: {where}"]
    for x in findings:
        mark = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}[x.status]
        lines.append(f"  {mark:<4}  {x.check:<{width}}  {x.detail}")
        if x.fix and x.status != "ok":
            lines.append(f"        {'':<{width}}  fix: {x.fix}")
    problems = sum(x.status == "fail" for x in findings)
    lines.append("lab doctor: the lab can work" if not problems else
                 f"lab doctor: {problems} problem(s) to fix before the lab can work")
    return "\n".join(lines)


def main(argv: list[str] | None = None, kit: Path | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab doctor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the findings as JSON")
    ap.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--host", action="store_true", help="check the host and its lab VM (default in a kit folder)")
    mode.add_argument("--vm", action="store_true", help="check this machine as a lab VM (default elsewhere)")
    args = ap.parse_args(argv)
    manifest = load_manifest(args.manifest)
    on_host = args.host or (kit is not None and not args.vm)
    if on_host:
        kit = kit or Path.cwd()
        findings = evaluate_host(host_facts(kit), manifest)
        where = f"this host and the lab VM of {kit}"
        now = time.time()
    else:
        facts = vm_facts(manifest)
        findings = evaluate_vm(facts, manifest)
        where = f"this lab VM ({facts['release']}) against the kit's manifest"
        now = facts["now"]
    good = not any(x.status == "fail" for x in findings)
    if args.json:
        print(json.dumps({"ok": good, "where": "host" if on_host else "vm", "now": now,
                          "findings": [asdict(x) for x in findings]}, indent=1))
    else:
        print(render(findings, where))
    return EXIT_OK if good else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
