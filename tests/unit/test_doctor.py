"""lab doctor: its rules on fact dictionaries (what each broken setup reports and the fix it names),
the manifest's agreement with the kernel profiles and the provisioning roles, the `lab` entry point.

The doctor on a real provisioned VM, and on VMs broken on purpose, is in tests/vm/test_lab_doctor_vm.py.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "labs" / "tools"


def _load_doctor():
    spec = importlib.util.spec_from_file_location("copylab_doctor", TOOLS / "doctor.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["copylab_doctor"] = mod
    spec.loader.exec_module(mod)
    return mod


doctor = _load_doctor()
MANIFEST = doctor.load_manifest()
SUITE = MANIFEST["suite"]
REL = MANIFEST["kernels"][SUITE]["x86_64"]["release"]
PKG = MANIFEST["kernels"][SUITE]["x86_64"]["package_version"]


LAB2 = MANIFEST["lab_networks"]["lab2"]


def lab2_status(ready: bool = True) -> dict:
    """The helper's net-status of a VM with lab 2's two cards, after `make net` when ready."""
    nics = [{"role": role, "mac": mac, "want": want, "present": True, "name": name, "driver": "e1000e",
             "namespace": ns if ready else "", "up": ready, "carrier": ready,
             "addresses": [want] if ready else [], "rx_packets": 3, "tx_packets": 3}
            for role, (mac, want), name, ns in zip(("sender", "receiver"), LAB2["cards"].items(),
                                                   ("eth1", "eth2"), ("", LAB2["namespace"]))]
    return {"namespace": LAB2["namespace"], "namespace_exists": ready, "copybreak": 256, "nics": nics,
            "ready": ready}


def good_vm_facts() -> dict:
    """The facts of a correctly provisioned lab VM, as vm_facts() gathers them."""
    symbols = MANIFEST["probe_symbols"]
    return {
        "user": "student", "arch": "x86_64", "suite": SUITE, "release": REL,
        "version": f"#1 SMP PREEMPT_DYNAMIC Debian {PKG} (2025-10-01)",
        "headers_dir": f"/lib/modules/{REL}/build", "headers_release": REL,
        "headers_pkg": PKG, "tools": {"gcc": True, "make": True},
        "dmesg_restrict": "1", "dmesg": "sudo", "sysctls": {"kernel.modules_disabled": "0"},
        "free_mb": 4000, "disk_path": "/home/student/labs", "now": time.time(), "future_files": [],
        "labs_dir": "/home/student/labs", "labs_missing": {"lab1": [], "lab2": []},
        "check_command": "/usr/local/bin/copylab-check",
        "networks": {"lab2": lab2_status()},
        "network_probes": {"lab2": [
            {"kprobes_enabled": "1", "blacklisted": [], "lockdown": "none", "kallsyms": {s: True for s in pair},
             "selftest": {"status": "ok", "detail": "ok"}}
            for pair in (LAB2["probe_symbols"][:2], LAB2["probe_symbols"][2:])]},
        "root": {"kprobes_enabled": "1", "blacklisted": [], "lockdown": "none",
                 "kallsyms": {s: True for s in symbols},
                 "selftest": {"status": "ok", "detail": "register_kprobe(_copy_from_iter) ok"}},
    }


def by_check(findings) -> dict:
    return {f.check: f for f in findings}


def failing(findings) -> dict:
    return {f.check: f for f in findings if f.status == "fail"}


def test_a_provisioned_vm_has_no_problem():
    findings = doctor.evaluate_vm(good_vm_facts(), MANIFEST)
    assert not failing(findings), failing(findings)
    names = set(by_check(findings))
    for expected in ("kernel release", "kernel build", "kernel headers", "compiler", "kprobes",
                     "probe self-test", "lockdown", "sysctl kernel.modules_disabled", "kernel log",
                     "free disk", "clock", "lab lab1", "lab lab2", "make check", "lab2 cards",
                     "lab2 network", "lab2 probes"):
        assert expected in names, names


def test_a_vm_of_the_other_debian_release_is_known_and_named():
    """A Debian 13 VM under a Debian 12 kit: its own pin (6.12) is checked, and the release is named."""
    f = good_vm_facts()
    pin = MANIFEST["kernels"]["trixie"]["x86_64"]
    f.update(suite="trixie", release=pin["release"], headers_release=pin["release"],
             headers_dir=f"/lib/modules/{pin['release']}/build", headers_pkg=pin["package_version"],
             version=f"#1 SMP PREEMPT_DYNAMIC Debian {pin['package_version']} (2026-10-01)")
    findings = by_check(doctor.evaluate_vm(f, MANIFEST))
    assert not failing(findings.values()), failing(findings.values())
    assert findings["kernel release"].detail == pin["release"]
    assert findings["debian release"].status == "warn" and "bookworm" in findings["debian release"].detail
    assert by_check(doctor.evaluate_vm(f, {**MANIFEST, "suite": "trixie"}))["debian release"].status == "ok"
    f.update(suite="forky")
    bad = failing(doctor.evaluate_vm(f, MANIFEST))
    assert "forky" in bad["debian release"].detail and "trixie" in bad["debian release"].detail


@pytest.mark.parametrize("change, check, words, fix", [
    (lambda f: f.update(release="6.1.0-56-amd64", headers_release="6.1.0-56-amd64"), "kernel release",
     ["6.1.0-56-amd64", REL], "vagrant provision"),
    (lambda f: f.update(version="#1 SMP Debian 6.1.999-1"), "kernel build", [PKG], "apt-get install"),
    (lambda f: f.update(headers_dir=None), "kernel headers", ["missing"], f"linux-headers-{REL}={PKG}"),
    (lambda f: f.update(headers_release="6.1.0-49-amd64"), "kernel headers", ["6.1.0-49-amd64", REL],
     f"apt-get install --reinstall linux-headers-{REL}"),
    (lambda f: f.update(headers_pkg="6.1.170-1"), "kernel headers", ["6.1.170-1", PKG], "--reinstall"),
    (lambda f: f.update(tools={"gcc": False, "make": True}), "compiler", ["gcc"], "build-essential"),
    (lambda f: f["root"].update(kprobes_enabled="0"), "kprobes", ["switched off"],
     "/sys/kernel/debug/kprobes/enabled"),
    (lambda f: f["root"].update(blacklisted=["_copy_to_iter"]), "probe _copy_to_iter", ["blacklist"],
     "pinned kernel"),
    (lambda f: f["root"]["kallsyms"].update(_copy_from_iter=False), "probe _copy_from_iter",
     ["not a symbol"], "pinned kernel"),
    (lambda f: f["root"].update(selftest={"status": "failed", "detail": "register_kprobe(_copy_to_iter) "
                                          "failed: -22"}), "probe self-test", ["-22"], "vagrant provision"),
    (lambda f: f["root"].update(lockdown="integrity"), "lockdown", ["integrity"], "Secure Boot"),
    (lambda f: f.update(sysctls={"kernel.modules_disabled": "1"}), "sysctl kernel.modules_disabled",
     ["switched off"], "vagrant reload"),
    (lambda f: f.update(dmesg="no: dmesg: Operation not permitted; sudo dmesg: a password is required"),
     "kernel log", ["cannot read", "dmesg_restrict=1"], "dmesg_restrict=0"),
    (lambda f: f.update(free_mb=100), "free disk", ["100 MB"], "make clean"),
    (lambda f: f.update(now=time.mktime(time.strptime("2001-01-01", "%Y-%m-%d"))), "clock", ["2001-01-01"],
     "date -s"),
    (lambda f: f.update(labs_missing={"lab1": ["Makefile"]}), "lab lab1", ["Makefile"], "vagrant provision"),
    (lambda f: f.update(check_command=None), "make check", ["copylab-check"], "vagrant provision"),
    (lambda f: f.update(root={"error": "sudo: a password is required"}), "root helper", ["password"],
     "vagrant provision"),
])
def test_each_broken_setup_is_named_with_its_fix(change, check, words, fix):
    facts = copy.deepcopy(good_vm_facts())
    change(facts)
    bad = failing(doctor.evaluate_vm(facts, MANIFEST))
    assert check in bad, f"{check} not failing: {list(bad)}"
    for w in words:
        assert w in bad[check].detail, bad[check]
    assert fix in bad[check].fix, bad[check]


def test_lab2_without_the_cards_warns_with_the_vagrant_fix_and_skips_their_probes():
    """Lab 1 works without lab 2's cards: a warning, not a failure."""
    f = good_vm_facts()
    f["networks"]["lab2"]["nics"][1]["present"] = False
    assert doctor.network_probes(MANIFEST, f["networks"]) == {"lab2": []}  # the helper is not asked
    findings = doctor.evaluate_vm(f, MANIFEST)
    cards = by_check(findings)["lab2 cards"]
    assert cards.status == "warn" and not failing(findings)
    assert "52:54:00:00:0b:01" in cards.detail and "e1000e" in cards.detail and "vagrant reload" in cards.fix
    f["networks"]["lab2"] = {"error": "sudo: a password is required"}
    net = by_check(doctor.evaluate_vm(f, MANIFEST))["lab2 network"]
    assert net.status == "warn" and "password" in net.detail


def test_lab2_on_virtualboxs_e1000_cards_is_refused_with_the_reason_and_skips_their_probes():
    """VirtualBox's 82545EM cards carry the lab's MACs but are driven by e1000: a probe on its
    e1000_xmit_frame would register, so only the driver tells that lab 2 cannot run there."""
    f = good_vm_facts()
    for n in f["networks"]["lab2"]["nics"]:
        n["driver"] = "e1000"
    assert doctor.network_probes(MANIFEST, f["networks"]) == {"lab2": []}  # the helper is not asked
    findings = by_check(doctor.evaluate_vm(f, MANIFEST))
    cards = findings["lab2 cards"]
    assert cards.status == "warn" and not failing(findings.values())  # lab 1 works on these VMs
    assert "eth1 (52:54:00:00:0a:01) is driven by e1000 and eth2 (52:54:00:00:0b:01) is driven by e1000" \
        in cards.detail
    assert "lab2 cannot be done in this VM" in cards.detail and "VirtualBox has no 82574L" in cards.detail
    assert "vagrant up --provider=libvirt" in cards.fix
    assert "lab2 probes" not in findings and "lab2 network" not in findings
    ok_cards = by_check(doctor.evaluate_vm(good_vm_facts(), MANIFEST))["lab2 cards"]
    assert ok_cards.status == "ok" and "eth1 (52:54:00:00:0a:01, e1000e)" in ok_cards.detail


def test_lab2_network_not_set_up_is_a_warning_naming_make_net():
    f = good_vm_facts()
    f["networks"]["lab2"] = lab2_status(ready=False)
    findings = by_check(doctor.evaluate_vm(f, MANIFEST))
    net = findings["lab2 network"]
    assert net.status == "warn" and "make net" in net.fix
    assert "no network namespace copylab-rx" in net.detail and "eth2 is down" in net.detail
    assert "eth2 is in namespace 'the first', not 'copylab-rx'" in net.detail
    assert findings["lab2 cards"].status == "ok" and not failing(findings.values())
    ready = by_check(doctor.evaluate_vm(good_vm_facts(), MANIFEST))
    assert ready["lab2 network"].status == "ok"
    assert "169.254.10.2/24 on eth2 in copylab-rx" in ready["lab2 network"].detail
    assert ready["lab2 probes"].status == "ok" and "e1000_xmit_frame" in ready["lab2 probes"].detail


def test_lab2_probe_missing_warns_naming_the_driver():
    f = good_vm_facts()
    f["network_probes"]["lab2"][0]["kallsyms"]["e1000_xmit_frame"] = False
    f["network_probes"]["lab2"][0]["selftest"] = {"status": "failed", "detail": "register_kprobe(e1000_xmit_frame) "
                                                 "failed: -2"}
    probes = by_check(doctor.evaluate_vm(f, MANIFEST))["lab2 probes"]
    assert probes.status == "warn" and "e1000_xmit_frame is not a symbol" in probes.detail and "-2" in probes.detail
    assert "lsmod | grep e1000e" in probes.fix


def test_future_dated_lab_files_warn_but_do_not_stop_the_lab():
    facts = good_vm_facts()
    facts["future_files"] = ["/home/student/labs/lab1/sender.c"]
    clock = by_check(doctor.evaluate_vm(facts, MANIFEST))["clock"]
    assert clock.status == "warn" and "sender.c" in clock.detail and clock.fix


def test_an_unpinned_architecture_stops_at_once():
    facts = good_vm_facts()
    facts["arch"] = "riscv64"
    release, arch = doctor.evaluate_vm(facts, MANIFEST)
    assert release.check == "debian release" and release.status == "ok"
    assert arch.status == "fail" and "riscv64" in arch.detail


def good_host_facts(vm_findings=None) -> dict:
    now = time.time()
    return {"arch": "x86_64", "system": "Linux", "kit": "/home/s/kit", "vagrant": "Vagrant 2.3.4",
            "libvirt_plugin": True, "virtualbox": False, "kvm": True, "vm_state": "running", "host_time": now,
            "vm": {"ok": True, "now": now + 1,
                   "findings": vm_findings if vm_findings is not None else
                   [{"check": "kernel release", "status": "ok", "detail": REL, "fix": ""}]}}


def test_host_findings_include_the_vms_and_the_clock_skew():
    findings = doctor.evaluate_host(good_host_facts(), MANIFEST)
    assert not failing(findings)
    names = by_check(findings)
    assert names["vm: kernel release"].detail == REL
    assert names["vm: clock vs host"].status == "ok"


@pytest.mark.parametrize("change, check, fix", [
    (lambda f: f.update(arch="riscv64", system="Linux"), "host", "x86_64 or arm64 machine"),
    (lambda f: f.update(vagrant=None), "vagrant", "install"),
    (lambda f: f.update(libvirt_plugin=False, virtualbox=False), "provider", "vagrant-libvirt"),
    (lambda f: f.update(vm_state="not_created"), "lab VM", "vagrant up"),
    (lambda f: f.update(vm={"error": "lab: command not found"}), "lab VM doctor", "vagrant provision"),
    (lambda f: f["vm"].update(now=f["host_time"] - 3600), "vm: clock vs host", "date -s"),
    (lambda f: f["vm"]["findings"].append({"check": "kprobes", "status": "fail", "detail": "off",
                                           "fix": "echo 1"}), "vm: kprobes", "echo 1"),
])
def test_host_problems_are_named_with_their_fix(change, check, fix):
    facts = good_host_facts()
    change(facts)
    bad = failing(doctor.evaluate_host(facts, MANIFEST))
    assert check in bad, list(bad)
    assert fix in bad[check].fix


def test_no_kvm_is_a_warning_on_linux():
    facts = good_host_facts()
    facts["kvm"] = False
    kvm = by_check(doctor.evaluate_host(facts, MANIFEST))["kvm"]
    assert kvm.status == "warn" and "COPYLAB_LIBVIRT_DRIVER=qemu" in kvm.fix


def test_render_marks_each_finding_and_gives_the_fix_of_failures():
    facts = good_vm_facts()
    facts["root"]["kprobes_enabled"] = "0"
    text = doctor.render(doctor.evaluate_vm(facts, MANIFEST), "test")
    assert "  FAIL  kprobes" in text and "fix: echo 1 | sudo tee /sys/kernel/debug/kprobes/enabled" in text
    assert "  ok    kernel release" in text
    assert text.splitlines()[-1] == "lab doctor: 1 problem(s) to fix before the lab can work"


# ---------------------------------------------------------------- the manifest agrees with the kit
def _yaml(path: Path) -> dict:
    import yaml  # ansible-core's dependency

    return yaml.safe_load(path.read_text())


def test_manifest_kernels_match_the_profiles_the_lab_spec_and_the_image_builder():
    import tomllib

    from provision.image.build_image import SUITES

    spec = tomllib.loads((REPO / "labs" / "lab1" / "lab.toml").read_text())
    assert spec["run"]["kernel"] == MANIFEST["kernels"][SUITE]["x86_64"]["release"]
    releases = set()
    for suite, pins in MANIFEST["kernels"].items():
        for arch, pin in pins.items():
            profile = REPO / "grader" / "profiles" / f"{pin['release']}.toml"
            assert profile.is_file(), f"no kernel profile for the manifest's {suite} {arch} pin {pin['release']}"
            data = tomllib.loads(profile.read_text())
            assert data["arch"] == arch and data["release"] == pin["release"]
            assert f"({pin['package_version']})" in profile.read_text().splitlines()[0]
            assert [data["symbols"]["copy_from"], data["symbols"]["copy_to"]] == MANIFEST["probe_symbols"]
            flavour = {"x86_64": "amd64", "aarch64": "arm64"}[arch]
            assert SUITES[suite]["kernel"][flavour] == pin["release"]
            releases.add(pin["release"])
    assert {spec["run"]["kernel"], *spec["run"]["kernels"]} == releases


def test_manifest_matches_the_provisioning_roles():
    kernel = _yaml(REPO / "provision/roles/copylab_kernel/defaults/main.yml")
    lab = _yaml(REPO / "provision/roles/copylab_lab/defaults/main.yml")
    assert kernel["copylab_kernel_probe_symbols"] == MANIFEST["probe_symbols"]
    pins = {suite: {arch: {"release": pin["release"], "package_version": pin["version"]}
                    for arch, pin in archs.items()} for suite, archs in kernel["copylab_kernel_pins"].items()}
    assert pins == MANIFEST["kernels"]
    assert lab["copylab_lab_labs"] == MANIFEST["labs"]
    assert lab["copylab_lab_student_user"] == MANIFEST["student_user"]
    assert {"doctor.py", "lab", "manifest.json"} <= set(lab["copylab_lab_tools"])


def test_the_helper_names_the_self_test_module_provisioning_builds():
    kernel = _yaml(REPO / "provision/roles/copylab_kernel/defaults/main.yml")
    helper = (REPO / "grader/vmside/copylab-helper").read_text()
    assert f'SELFTEST_KO = "{kernel["copylab_kernel_selftest_dir"]}/probe_selftest.ko"' in helper


# ---------------------------------------------------------------- the `lab` entry point
def test_lab_without_a_command_prints_usage():
    r = subprocess.run([sys.executable, str(TOOLS / "lab")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "doctor" in r.stderr


def test_lab_doctor_on_a_machine_that_is_no_lab_vm_names_the_problems(tmp_path):
    """This test machine is no lab VM (no student account, no helper): doctor runs for real, reports
    failures with fixes, and exits 1 with a JSON document."""
    r = subprocess.run([sys.executable, str(TOOLS / "lab"), "doctor", "--json", "--vm"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["where"] == "vm"
    bad = {f["check"]: f for f in doc["findings"] if f["status"] == "fail"}
    assert "lab lab1" in bad and all(f["fix"] for f in bad.values())


def test_headers_release_is_read_from_utsrelease(tmp_path):
    """Debian's include/config/kernel.release holds the upstream version (6.1.176); the release a module
    is built for is UTS_RELEASE."""
    (tmp_path / "include" / "generated").mkdir(parents=True)
    (tmp_path / "include" / "generated" / "utsrelease.h").write_text(f'#define UTS_RELEASE "{REL}"\n')
    assert doctor.headers_release(tmp_path) == REL
    assert doctor.headers_release(tmp_path / "nothing") is None
    host_headers = Path(f"/usr/src/linux-headers-{REL}")  # installed by make deps (unit tier builds)
    assert doctor.headers_release(host_headers) == REL
