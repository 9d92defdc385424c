"""The Vagrantfile's decisions that need no VM, through the real `vagrant validate`: which hosts it
refuses before anything is downloaded, which provisioner `auto` takes, and what ansible_local uploads
(the paths of provision/controller-files.txt, never a solution or build output)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture(autouse=True)
def vagrant_installed():
    assert shutil.which("vagrant"), "vagrant is not installed: `make deps` installs it (provision/host-packages.txt)"


def copy_project(dest: Path) -> Path:
    """The files the Vagrantfile reads, solutions included (as in the instructor's repository)."""
    (dest / "grader").mkdir(parents=True)
    shutil.copy2(ROOT / "Vagrantfile", dest / "Vagrantfile")
    for rel in ("provision", "labs", "grader/engine", "grader/profiles", "grader/vmside"):
        shutil.copytree(ROOT / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "build"))
    for rel in ("grader/__init__.py", "grader/errors.py", "grader/executor.py"):
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


def validate(cwd: Path, tmp_path: Path, path: str | None = None, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COPYLAB_", "VAGRANT_"))}
    base.update(VAGRANT_CWD=str(cwd), VAGRANT_HOME=str(tmp_path / "vagrant.d"),
                VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1", **env)
    if path is not None:
        base["PATH"] = path
    return subprocess.run(["vagrant", "validate"], capture_output=True, text=True, timeout=120, env=base)


def without_ansible() -> str:
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d and d != venv_bin)
    assert shutil.which("ansible-playbook", path=path) is None
    return path


def controller_files() -> list[str]:
    lines = (ROOT / "provision/controller-files.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def downloaded_boxes(tmp_path: Path) -> list[Path]:
    boxes = tmp_path / "vagrant.d" / "boxes"
    return list(boxes.iterdir()) if boxes.exists() else []


@pytest.mark.parametrize("cpu, message", [
    ("arm64", "Debian publishes no arm64\nVagrant box, so nothing was downloaded"),
    ("aarch64", "Debian publishes no arm64\nVagrant box, so nothing was downloaded"),
    ("riscv64", "the lab VM runs on x86_64 or arm64 hosts"),
])
def test_unsupported_hosts_are_told_before_anything_is_downloaded(tmp_path, cpu, message):
    r = validate(ROOT, tmp_path, COPYLAB_HOST_CPU=cpu, COPYLAB_PROVISION="none")
    assert r.returncode != 0
    assert message in r.stderr + r.stdout
    assert downloaded_boxes(tmp_path) == []


def test_the_debian_release_is_a_setting_refused_before_any_download_when_unknown(tmp_path):
    r = validate(ROOT, tmp_path, COPYLAB_SUITE="forky", COPYLAB_PROVISION="none")
    assert r.returncode != 0 and 'COPYLAB_SUITE is "forky"' in r.stderr + r.stdout
    assert downloaded_boxes(tmp_path) == []
    r = validate(ROOT, tmp_path, COPYLAB_SUITE="trixie", COPYLAB_PROVISION="none")
    assert r.returncode == 0, r.stderr


def test_a_local_box_of_another_debian_release_is_not_taken(tmp_path):
    """COPYLAB_BOX=local takes the newest box of COPYLAB_SUITE from the cache, never the other release's."""
    box = tmp_path / "cache" / "images" / "golden-amd64-6.1.0-50-amd64-k"
    box.mkdir(parents=True)
    (box / "copylab.box").write_bytes(b"")
    (box / "manifest.json").write_text(json.dumps({"arch": "amd64", "suite": "bookworm"}))
    r = validate(ROOT, tmp_path, COPYLAB_BOX="local", COPYLAB_SUITE="trixie", COPYLAB_CACHE=str(tmp_path / "cache"),
                 COPYLAB_PROVISION="none")
    assert r.returncode != 0
    assert "no locally built trixie box" in r.stderr + r.stdout and "COPYLAB_SUITE=trixie" in r.stderr + r.stdout


def test_arm64_host_refuses_an_amd64_local_box(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    (box / "copylab.box").write_bytes(b"")
    for name in ("vmlinuz", "initrd"):
        (box / name).write_bytes(b"x")
    (box / "manifest.json").write_text(json.dumps({
        "arch": "amd64", "key": "k", "kernel_path": str(box / "vmlinuz"), "initrd_path": str(box / "initrd"),
        "cmdline": "", "admin_user": "copylab", "admin_key_path": str(box / "key")}))
    r = validate(ROOT, tmp_path, COPYLAB_HOST_CPU="arm64", COPYLAB_BOX="local",
                 COPYLAB_LOCAL_BOX_DIR=str(box), COPYLAB_PROVISION="none")
    assert r.returncode != 0
    assert "is amd64 but this host is arm64" in r.stderr + r.stdout


def test_arm64_host_with_a_named_arm64_box_validates(tmp_path):
    r = validate(ROOT, tmp_path, COPYLAB_HOST_CPU="arm64", COPYLAB_BOX_ARM64="example/bookworm-arm64",
                 COPYLAB_PROVISION="none")
    assert r.returncode == 0, r.stderr


def test_auto_provisions_from_inside_the_vm_on_a_host_without_ansible(tmp_path):
    project = copy_project(tmp_path / "project")
    stage = project / ".vagrant" / "copylab-provision"
    r = validate(project, tmp_path, path=without_ansible())
    assert r.returncode == 0, r.stderr
    assert stage.is_dir(), "auto without ansible-playbook on PATH did not take ansible_local"
    shutil.rmtree(stage)
    r = validate(project, tmp_path, path=f"{Path(sys.executable).parent}{os.pathsep}{without_ansible()}")
    assert r.returncode == 0, r.stderr
    assert not stage.exists(), "auto with ansible-playbook on PATH staged files for ansible_local"


def test_ansible_local_uploads_the_controller_files_and_no_solution(tmp_path):
    project = copy_project(tmp_path / "project")
    # what a working instructor checkout also holds: build output and a compiled program
    (project / "labs/lab1/copytrace.o").write_bytes(b"\x7fELF-object")
    elf = project / "labs/lab1/sender"
    elf.write_bytes(b"\x7fELF" + b"\0" * 60)
    elf.chmod(0o755)
    assert (project / "labs/lab1/solution/copytrace.c").is_file()
    r = validate(project, tmp_path, COPYLAB_PROVISION="ansible_local")
    assert r.returncode == 0, r.stderr
    stage = project / ".vagrant" / "copylab-provision"
    staged = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert not [p for p in staged if "/solution/" in p or p.startswith("solution")], staged
    assert "labs/lab1/copytrace.o" not in staged and "labs/lab1/sender" not in staged
    listed = controller_files()
    for rel in listed:
        assert any(p == rel or p.startswith(rel) for p in staged), f"{rel} was not staged"
    assert "labs/lab1/skeleton/copytrace.c" in staged and "provision/site.yml" in staged
    # the skeleton staged is the repository's, byte for byte
    assert (stage / "labs/lab1/skeleton/copytrace.c").read_bytes() == \
        (ROOT / "labs/lab1/skeleton/copytrace.c").read_bytes()


def test_the_kit_carries_every_controller_file():
    from grader.kit import KIT_PATHS

    listed = controller_files()
    for rel in listed:
        assert rel in KIT_PATHS or any(rel.startswith(k) for k in KIT_PATHS if k.endswith("/")) or \
            (rel.endswith("/") and any(k.startswith(rel) for k in KIT_PATHS)), rel
