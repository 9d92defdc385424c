"""Debian 13 (kernel 6.12) lab VMs beside Debian 12 (6.1), shown rather than assumed: the image is built
from the same ansible definition and image builder (`--suite trixie`), every fact of its kernel profile
holds on the running kernel, and lab 1's solution gets full marks there through its ITER_UBUF path.

Everything here runs on one xdist worker (group "trixie") with ONE Debian 13 VM. `make test` builds its
image in the background while the Debian 12 tests run (cold cache: 17 minutes here under TCG).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import booted_vm, built_golden, solution_full_marks
from tests.vm.kernel_facts import profile_mismatches

pytestmark = [pytest.mark.xdist_group("trixie"), pytest.mark.vm]

SUITE = "trixie"
RELEASE = "6.12.117+deb13-amd64"
PACKAGE_VERSION = "6.12.117-1"


@pytest.fixture(scope="module")
def trixie_golden(progress) -> Path:
    progress("Debian 13 golden image: built from the same ansible definition (cold cache: about "
             "17 min under TCG on a busy machine), else taken from the cache")
    path = built_golden(progress, "--suite", SUITE, "--stage", "golden")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["suite"] == SUITE and manifest["kernel_release"] == RELEASE
    return path


@pytest.fixture(scope="module")
def trixie_vm(trixie_golden, progress, tmp_path_factory):
    with booted_vm(trixie_golden, progress, tmp_path_factory.mktemp("trixievm"), "trixie") as vm:
        yield vm


@pytest.fixture
def admin(trixie_vm, trixie_golden):
    """A shell command in the Debian 13 VM as the image's admin account (sudo), through OpenSSH."""
    m = json.loads((trixie_golden / "manifest.json").read_text())
    trixie_vm.acquire()

    def run(command: str, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
        cmd = ["ssh", "-i", m["admin_key_path"], "-p", str(trixie_vm.vm.ssh_port),
               "-o", f"UserKnownHostsFile={trixie_vm.vm.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "copylab@127.0.0.1", command]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    yield run
    trixie_vm.release(dirty=True)


def test_debian_13_vm_runs_its_pinned_held_kernel_and_doctor_knows_it(admin):
    r = admin("uname -r; . /etc/os-release; echo $VERSION_CODENAME; dpkg-query -W -f='${Version}\\n' "
              f"linux-image-{RELEASE} linux-headers-{RELEASE}; apt-mark showhold")
    assert r.returncode == 0, r.stderr
    release, suite, image_version, headers_version, *held = r.stdout.split()
    assert (release, suite) == (RELEASE, SUITE)
    assert image_version == headers_version == PACKAGE_VERSION
    assert f"linux-image-{RELEASE}" in held and f"linux-headers-{RELEASE}" in held
    r = admin("sudo -iu student lab doctor --json")
    doc = json.loads(r.stdout)
    bad = [f for f in doc["findings"] if f["status"] == "fail"]
    assert r.returncode == 0 and doc["ok"] and not bad, bad
    names = {f["check"]: f for f in doc["findings"]}
    assert names["kernel release"]["detail"] == RELEASE
    assert names["debian release"]["detail"].startswith(SUITE)
    assert names["probe self-test"]["status"] == "ok"


def test_the_6_12_profile_holds_on_the_running_kernel(admin):
    """Offsets (ITER_UBUF's ubuf beside __iov), symbols in kallsyms, the notrace and inlined functions,
    and the independent trace's tracefs definitions: each mismatch is named with the release."""
    assert profile_mismatches(admin, RELEASE) == []


def test_solution_gets_full_marks_on_6_12_through_iter_ubuf(trixie_vm, tmp_path):
    result = solution_full_marks(trixie_vm, tmp_path, RELEASE, "x86_64")
    # the records' user addresses are the programs' own buffers (copy1_record, copy4_record) and agree
    # with the independent trace: on 6.12 a single buffer is ITER_UBUF, so only the solution's
    # iter->ubuf branch can have produced them
    passed = {c["name"] for c in result["checks"] if c["passed"]}
    assert {"copy1_record", "copy4_record", "agrees_with_trace"} <= passed
