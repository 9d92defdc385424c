"""Debian 13 (kernel 6.12) lab VMs beside Debian 12 (6.1), shown rather than assumed: the image is built
from the same ansible definition and image builder (`--suite trixie`), every fact of its kernel profile
holds on the running kernel, and lab 1's solution gets full marks there through its ITER_UBUF path.

Everything here runs on one xdist worker (group "trixie") with ONE Debian 13 VM. `make test` builds its
image in the background while the Debian 12 tests run (cold cache: 17 minutes here under TCG).

Lab 1's held submissions (support/lab1_submissions.py) run on 6.12 where their outcome depends on
the kernel, on 6.1 only (tests/vm/test_grading.py, test_isolation.py, test_witness_vm.py) where it does not:
- on both: the solution; `iovec_only` (a module written for 6.1, without the ITER_UBUF branch: full marks on
  6.1, no user addresses on 6.12); `raw_iov` (reads the iterator's iovec pointer without checking its
  type: full marks on 6.1, where that pointer is an iovec; on 6.12 the same field holds ITER_UBUF's user
  address, and the handler's read of it is a kernel crash the grader must recognise in 6.12's oops text);
  `missing_copy1` (UDP_CORK: the checksumming path and its probe point are facts of each kernel's profile).
- on 6.1 only: the variants and mistakes decided in user space or in the engine's reading of the records
  (recvfrom, regs_di on the same x86_64 calling convention, payload_filter through the same iter_user_addr,
  the skeleton, swapped/%p/handout numbers, forgery, replay, answers), the runner's limits (hangs, huge
  output, a lingering sender, QEMU killed from outside), a NULL dereference (the crash path is shown on 6.12
  by raw_iov), and isolation (sudo, leftovers, earlier jobs' files: the account and helper set-up come from
  the same ansible definition on both releases).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.vm.conftest import booted_vm, built_golden, solution_full_marks
from tests.vm.test_grading import checks, evidence_text, run_kind
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


@pytest.fixture(scope="module")
def lab1():
    from grader.engine.labspec import load_lab

    return load_lab("lab1")


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


def test_a_module_that_reads_the_iovec_field_of_an_iter_ubuf_crashes_the_vm_not_the_grade(lab1, trixie_vm, tmp_path):
    """raw_iov dereferences ITER_UBUF's user address as an iovec pointer: the kernel oopses (SMAP), the
    run's verdict says so, and the next run (the solution, below) starts from the clean snapshot."""
    result = run_kind(lab1, trixie_vm, tmp_path, "raw_iov")
    assert result["verdict"] and result["verdict"].startswith("kernel crashed during "), result["verdict"]
    assert result["environment"]["kernel_release"] == RELEASE
    crash = (tmp_path / "raw_iov-out" / "crash.txt").read_text()
    # the user address read from kernel mode: a protection fault (SMAP), not a missing page
    assert "BUG: unable to handle page fault" in crash and "supervisor read access in kernel mode" in crash, \
        crash[-2000:]
    assert not checks(result)["no_kernel_fault"]["passed"]
    assert result["score"] < result["max_score"]


def test_solution_gets_full_marks_on_6_12_through_iter_ubuf(trixie_vm, tmp_path):
    result = solution_full_marks(trixie_vm, tmp_path, RELEASE, "x86_64")
    # the records' user addresses are the programs' own buffers (copy1_record, copy4_record) and agree
    # with the independent trace: on 6.12 a single buffer is ITER_UBUF, so only the solution's
    # iter->ubuf branch can have produced them
    passed = {c["name"] for c in result["checks"] if c["passed"]}
    assert {"copy1_record", "copy4_record", "agrees_with_trace"} <= passed


def test_a_module_written_for_6_1_finds_no_user_address_on_6_12(lab1, trixie_vm, tmp_path):
    """iovec_only gets full marks on 6.1 (test_grading.py); on 6.12 its records keep the kernel side
    and lose the user side: a partial grade that says which address is missing, never full marks."""
    result = run_kind(lab1, trixie_vm, tmp_path, "iovec_only")
    c = checks(result)
    assert result["verdict"] is None
    assert c["copy1_kernel_side"]["passed"] and c["copy4_kernel_side"]["passed"]
    for name, side in (("copy1_record", "src"), ("copy4_record", "dest")):
        text = evidence_text(c[name])
        assert not c[name]["passed"] and f"{side}=0x0 is not a user-space address" in text, text
    assert not c["agrees_with_trace"]["passed"]
    assert result["score"] < result["max_score"]


def test_a_corked_sender_is_named_through_the_6_12_checksumming_path(lab1, trixie_vm, tmp_path):
    """UDP_CORK: copy #1 goes through csum_and_copy_from_iter_full on 6.12 as well, the profile's
    copylab_tx_csum probe sees it, and the feedback names that path."""
    result = run_kind(lab1, trixie_vm, tmp_path, "missing_copy1")
    c = checks(result)["copy1_kernel_side"]
    text = evidence_text(c)
    assert not c["passed"] and "csum_and_copy_from_iter" in text, text
