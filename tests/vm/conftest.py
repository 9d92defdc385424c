"""VM tier: one golden image (built when the cache lacks it) and ONE booted lab VM shared by all tests.

Every grading run starts from the VM's clean internal snapshot (QemuLabVM.acquire), so tests do not
boot a VM each. Nothing here is skipped for lack of KVM: the runner falls back to TCG.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BUILDER = ROOT / "provision" / "image" / "build_image.py"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)
    # the arm64 and Debian 13 tests last: `make test` builds their images in the background meanwhile,
    # and xdist hands tests out in this order (a worker waiting for an image early would hold back its queue)
    items.sort(key=lambda item: item.fspath.basename in ("test_kernel_6_12.py", "test_arm64.py"))


class Reporter:
    """Progress lines straight to the terminal, also while pytest captures output."""

    def __init__(self, config):
        self.capman = config.pluginmanager.getplugin("capturemanager")

    def __call__(self, msg: str) -> None:
        with self.capman.global_and_fixture_disabled():
            print(f"\n[vm-tier {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@pytest.fixture(scope="session")
def progress(pytestconfig):
    return Reporter(pytestconfig)


def run_builder(progress, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BUILDER), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {}),
                                     PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        progress(line.rstrip())
    proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def built_golden(progress, *args: str) -> Path:
    """The golden image folder the builder prints for these arguments (built or taken from the cache)."""
    r = run_builder(progress, *args)
    assert r.returncode == 0, f"image build ({' '.join(args)}) failed:\n{r.stdout[-4000:]}"
    return Path(r.stdout.strip().splitlines()[-1].split("image: ", 1)[-1])


@contextmanager
def booted_vm(golden: Path, progress, workdir: Path, name: str, boot_timeout: float = 420):
    """A QemuLabVM of another image than the shared one, prepared, closed at the end."""
    from grader.vm.labvm import QemuLabVM

    vm = QemuLabVM(golden=golden, workdir=workdir, name=name, progress=progress, boot_timeout=boot_timeout)
    vm.prepare()
    yield vm
    vm.close()
    assert not vm.vm.running()


def solution_full_marks(vm, tmp_path: Path, release: str, arch: str) -> dict:
    """Lab 1's solution graded on vm: full marks on the expected kernel; returns the result."""
    from support.lab1_submissions import make_submission

    from grader.engine.labspec import load_lab
    from grader.engine.run import grade

    sub = make_submission("solution", tmp_path / "solution")
    result = grade(load_lab("lab1"), vm, sub, tmp_path / "out").result
    failed = {c["name"]: c["evidence"] for c in result["checks"] if not c["passed"]}
    assert result["score"] == result["max_score"] == 100, f"failed: {failed}\nphases: {result['phases']}"
    env = result["environment"]
    assert env["kernel_release"] == release and env["arch"] == arch
    assert result["copies"] == 2 and result["bytes_held"] == 48
    return result


@pytest.fixture(scope="session")
def golden_build(progress) -> tuple[Path, bool]:
    """(golden image folder, whether this session built it from nothing)."""
    r = run_builder(progress, "--suite", "bookworm", "--stage", "golden")
    assert r.returncode == 0, f"image build failed:\n{r.stdout[-4000:]}"
    path = Path(r.stdout.strip().splitlines()[-1].split("image: ", 1)[-1])
    assert (path / "manifest.json").exists(), r.stdout
    return path, "base image ready" in r.stdout or _base_built_since_session_start(path)


def _base_built_since_session_start(golden: Path) -> bool:
    """`make test` builds the image before pytest starts and exports COPYLAB_SESSION_START."""
    import calendar

    start = os.environ.get("COPYLAB_SESSION_START")
    if not start:
        return False
    base = Path(json.loads((golden / "manifest.json").read_text())["base"])
    built = json.loads((base / "manifest.json").read_text())["built_at"]
    return calendar.timegm(time.strptime(built, "%Y-%m-%dT%H:%M:%SZ")) >= int(start)


@pytest.fixture(scope="session")
def golden(golden_build) -> Path:
    return golden_build[0]


@pytest.fixture(scope="session")
def golden_manifest(golden) -> dict:
    return json.loads((golden / "manifest.json").read_text())


@pytest.fixture(scope="session")
def lab_vm(golden, progress, tmp_path_factory):
    """The one shared lab VM (booted once, clean snapshot taken), destroyed at the end of the session."""
    from grader.vm.labvm import QemuLabVM

    vm = QemuLabVM(golden=golden, workdir=tmp_path_factory.mktemp("labvm"), progress=progress)
    vm.prepare()
    yield vm
    vm.close()
    assert not vm.vm.running(), "QEMU is still running after close()"


@pytest.fixture(scope="session")
def nic_lab_vm(golden, progress, tmp_path_factory):
    """The one lab VM of lab 2's shape (two e1000e cards on a QEMU hub), booted once when a test asks
    for it and shared like lab_vm (every grading run starts from its clean snapshot)."""
    from grader.engine.labspec import load_lab
    from grader.vm.labvm import QemuLabVM, shape_options

    vm = QemuLabVM(golden=golden, workdir=tmp_path_factory.mktemp("nicvm"), name="lab2", progress=progress,
                   **shape_options(load_lab("lab2").vm_shape))
    vm.prepare()
    yield vm
    vm.close()


def admin_ssh_to(vm, manifest: dict):
    """A function that runs a command in vm (a QemuLabVM) as the image's admin account (sudo),
    through OpenSSH."""
    def run(command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ssh", "-i", manifest["admin_key_path"], "-p", str(vm.vm.ssh_port),
               "-o", f"UserKnownHostsFile={vm.vm.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "copylab@127.0.0.1", command]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"{command!r} failed ({r.returncode}): {r.stderr}{r.stdout}"
        return r
    return run


@pytest.fixture
def admin_ssh(lab_vm, golden_manifest):
    """Run a command in the shared VM as the image's admin account (sudo), through OpenSSH."""
    return admin_ssh_to(lab_vm, golden_manifest)


@pytest.fixture
def nic_admin_ssh(nic_lab_vm, golden_manifest):
    """admin_ssh for the lab VM of lab 2's shape."""
    return admin_ssh_to(nic_lab_vm, golden_manifest)
