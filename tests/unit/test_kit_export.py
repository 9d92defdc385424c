"""The student kit (grader/kit.py, `python -m grader export-kit`): the real repository exported in all
three formats, then refusals on a copy of the repository with a leak, a key, a link planted in it.
No VM; real files and real git throughout.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from grader.errors import GraderError
from grader.kit import FIXTURES, KIT_PATHS, collect_files, export_kit, find_labs, scan_kit

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
if not PYTHON.exists():
    PYTHON = Path(sys.executable)

MADE_FILES = {"README.md", ".gitignore", "lab", "vagrant.kit.yml", "kit.json"}
REQUIRED = {
    "Vagrantfile", "provision/ansible.cfg", "provision/site.yml", "provision/plays/lab_vm.yml",
    "provision/roles/copylab_lab/tasks/main.yml", "provision/roles/copylab_kernel/files/selftest/Kbuild",
    "grader/__init__.py", "grader/errors.py", "grader/executor.py", "grader/engine/__init__.py",
    "grader/engine/labspec.py", "grader/engine/check.py", "grader/profiles/6.1.0-50-amd64.toml",
    "grader/vmside/copylab-helper", "labs/lab1/README.md", "labs/lab1/Makefile", "labs/lab1/Kbuild",
    "labs/lab1/lab.toml", "labs/lab1/skeleton/SHA256SUMS", "labs/lab1/skeleton/sender.c",
    "labs/lab1/skeleton/receiver.c", "labs/lab1/skeleton/copytrace.c", "labs/tools/handin.py",
    "labs/tools/doctor.py", "labs/tools/manifest.json", "labs/tools/lab",
}
NEVER = ("labs/tools/mkskeleton.py", "provision/image", "provision/inventory.example.ini",
         "provision/host-packages.txt", "provision/.ansible-lint", "grader/service", "grader/vm",
         "grader/ssh.py", "grader/submission.py", "grader/__main__.py", "grader/kit.py", "tests", "bench",
         "faults", "requirements.txt", "Makefile", "labs/lab1/solution")


def quiet(_msg: str) -> None:
    pass


def files_of(folder: Path) -> set[str]:
    """Every regular file under folder, relative, leaving out a top-level .git."""
    out = set()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if rel.parts[0] != ".git" and (p.is_file() or p.is_symlink()):
            out.add(rel.as_posix())
    return out


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def export_cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PYTHON), "-m", "grader", "export-kit", *args], cwd=repo,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- the real repository, three formats

@pytest.fixture(scope="module")
def kits(tmp_path_factory) -> dict[str, Path]:
    """The real repository exported as a folder, a tar (and its extraction) and a git kit."""
    tmp = tmp_path_factory.mktemp("kits")
    out = {
        "dir": export_kit(REPO, tmp / "dir-kit", "dir", progress=quiet),
        "git": export_kit(REPO, tmp / "git-kit", "git", progress=quiet),
        "tar_file": export_kit(REPO, tmp / "kit.tar.gz", "tar", progress=quiet),
    }
    with tarfile.open(out["tar_file"]) as tar:
        tar.extractall(tmp / "untarred", filter="data")
    out["tar"] = tmp / "untarred" / "copylab-kit"
    return out


@pytest.mark.parametrize("fmt", ["dir", "tar", "git"])
def test_kit_holds_the_allowlist_and_nothing_else(kits, fmt):
    kit = kits[fmt]
    files = files_of(kit)
    assert REQUIRED <= files, sorted(REQUIRED - files)
    assert MADE_FILES <= files
    assert files == set(collect_files(REPO, quiet)) | MADE_FILES
    for rel in files:
        assert "solution" not in rel.split("/"), rel
        assert "__pycache__" not in rel and not rel.endswith(".pyc"), rel
        assert not (kit / rel).is_symlink(), rel
    for rel in NEVER:
        assert not (kit / rel).exists(), rel
    assert scan_kit(kit, REPO) == []


@pytest.mark.parametrize("fmt", ["dir", "tar", "git"])
def test_lab_files_are_byte_identical(kits, fmt):
    kit = kits[fmt]
    assert find_labs(REPO) == ["lab1", "lab2"]
    for lab in find_labs(REPO):
        src = REPO / "labs" / lab
        skeleton = sorted(p.relative_to(src) for p in (src / "skeleton").rglob("*") if p.is_file())
        assert skeleton, f"labs/{lab}/skeleton is empty"
        for rel in skeleton + [Path("README.md"), Path("Makefile"), Path("Kbuild"), Path("lab.toml")]:
            assert (kit / "labs" / lab / rel).read_bytes() == (src / rel).read_bytes(), rel
        assert not (kit / "labs" / lab / "solution").exists()
    assert (kit / "lab").read_bytes() == (REPO / "labs/tools/lab").read_bytes()
    assert (kit / "lab").stat().st_mode & 0o777 == 0o755
    assert (kit / "grader/vmside/copylab-helper").stat().st_mode & 0o111


def test_kit_json_describes_every_file(kits):
    kit = kits["dir"]
    meta = json.loads((kit / "kit.json").read_text())
    assert meta["copylab_kit"] == 1
    assert meta["source_commit"] == git(REPO, "rev-parse", "HEAD")
    assert meta["labs"] == ["lab1", "lab2"]
    manifest = json.loads((REPO / "labs/tools/manifest.json").read_text())
    pins = manifest["kernels"][manifest["suite"]]
    assert meta["kernel_release"] == pins["x86_64"]["release"]
    assert meta["kernels"] == {arch: pin["release"] for arch, pin in pins.items()}
    readme = (kit / "README.md").read_text()
    assert "`6.1.0-50-amd64` (`6.1.0-50-arm64` on arm64 computers)" in readme
    assert set(meta["files"]) == files_of(kit) - {"kit.json"}
    for rel, digest in meta["files"].items():
        assert hashlib.sha256((kit / rel).read_bytes()).hexdigest() == digest, rel
    assert "\nCOPYLAB_WORK_DIR: work\n" in (kit / "vagrant.kit.yml").read_text()
    assert meta["suite"] == manifest["suite"] == "bookworm"
    assert "\nCOPYLAB_SUITE: bookworm\n" in (kit / "vagrant.kit.yml").read_text()
    assert "The VM runs Debian 12\n" in readme


def test_readme_and_gitignore_are_for_students(kits):
    kit = kits["dir"]
    readme = (kit / "README.md").read_text()
    for words in ("vagrant up", "vagrant ssh", "sudo -iu student", "cd ~/labs/lab1", "make && make check",
                  "make handin", "./lab doctor", "lab doctor", "arm64", "VirtualBox", "libvirt",
                  "6.1.0-50-amd64"):
        assert words in readme, words
    assert "{" not in readme and "}" not in readme, "a placeholder was left unfilled"
    ignored = (kit / ".gitignore").read_text().splitlines()
    for pattern in (".vagrant/", "vagrant.local.yml", "handin-*.tar.gz", "*.ko", "*.o"):
        assert pattern in ignored, pattern


def test_engine_imports_from_the_kit_alone(kits, tmp_path):
    """What `make check` runs in the VM: the kit's grader package, stdlib only (-S: no site-packages)."""
    kit = kits["dir"]
    code = ("import grader.engine.check, grader.engine.labspec as ls, grader.engine.profile as pr; "
            "lab = ls.load_lab('lab1'); pr.load_profile(lab.kernel); print(ls.__file__); print(lab.id)")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "PYTHONPATH": str(kit)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where, lab = proc.stdout.split()
    assert Path(where).resolve() == (kit / "grader/engine/labspec.py").resolve()
    assert lab == "lab1"


def test_kit_provisioning_parses_on_its_own(kits):
    """site.yml finds its plays and roles inside the kit (ansible --syntax-check, no host needed)."""
    playbook = Path(sys.executable).with_name("ansible-playbook")
    proc = subprocess.run([str(playbook), "--syntax-check", "-i", "localhost,", "site.yml"],
                          cwd=kits["dir"] / "provision", capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANSIBLE_CONFIG": str(kits["dir"] / "provision/ansible.cfg")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "playbook: site.yml" in proc.stdout


def test_tar_is_one_reproducible_folder(kits, tmp_path):
    with tarfile.open(kits["tar_file"]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert {n.split("/")[0] for n in names} == {"copylab-kit"}
    assert names[0] == "copylab-kit" and members[0].isdir()
    assert names == sorted(names, key=lambda n: n.split("/"))
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", ""), m.name
        assert m.isdir() or m.isfile(), m.name
    again = export_kit(REPO, tmp_path / "again.tar.gz", "tar", progress=quiet)
    assert again.read_bytes() == kits["tar_file"].read_bytes()


def test_git_kit_is_one_clean_commit(kits):
    kit = kits["git"]
    head = git(REPO, "rev-parse", "HEAD")
    assert git(kit, "status", "--porcelain", "--ignored") == ""
    assert git(kit, "rev-list", "--count", "HEAD") == "1"
    assert git(kit, "log", "-1", "--format=%s") == f"copylab student kit ({head})"
    assert git(kit, "log", "-1", "--format=%an <%ae>") == "copylab <copylab@localhost>"
    assert set(git(kit, "ls-files").splitlines()) == files_of(kit)


def test_allowlist_is_an_allowlist():
    assert "labs/tools/mkskeleton.py" not in KIT_PATHS
    never = ("tests", "provision/image", "grader/service", "grader/vm/")
    assert not any(p.startswith(never) for p in KIT_PATHS)


# ---------------------------------------------------------------- refusals, on a copy of the repository

@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """What export needs: the kit's files, the solutions, the submission variants and the grader's command line."""
    copy = tmp_path / "repo"
    needed = set(collect_files(REPO, quiet)) | {"grader/__main__.py", "grader/kit.py", "grader/kit_readme.md"}
    for folder in (REPO / "labs").glob("*/solution"):
        needed |= {p.relative_to(REPO).as_posix() for p in folder.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts}
    needed |= {p.relative_to(REPO).as_posix() for pattern in FIXTURES for p in REPO.glob(pattern)}
    for rel in needed:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, copy / rel)
    return copy


def solution_only_line(repo: Path, name: str = "copytrace.c", marker: str = 'pr_info("[COPY1] src=') -> str:
    line = next(ln for ln in (repo / "labs/lab1/solution" / name).read_text().splitlines() if marker in ln)
    assert line.strip() not in (repo / "labs/lab1/skeleton" / name).read_text()
    return line


def refusal(repo: Path, dest: Path) -> str:
    with pytest.raises(GraderError) as err:
        export_kit(repo, dest, progress=quiet)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.tmp-")] == []
    return str(err.value)


def test_the_copy_exports_cleanly(repo_copy, tmp_path):
    kit = export_kit(repo_copy, tmp_path / "kit", progress=quiet)
    assert json.loads((kit / "kit.json").read_text())["source_commit"] is None
    assert files_of(kit) == files_of(export_kit(REPO, tmp_path / "real", progress=quiet))


def test_solution_line_in_a_handout_is_refused(repo_copy, tmp_path):
    line = solution_only_line(repo_copy)
    readme = repo_copy / "labs/lab1/README.md"
    readme.write_text(readme.read_text() + f"\nHint:\n\n    {line.strip()}\n")
    msg = refusal(repo_copy, tmp_path / "kit")
    assert "labs/lab1/README.md:" in msg and "labs/lab1/solution/copytrace.c" in msg


def test_solution_line_inside_a_longer_line_is_refused(repo_copy, tmp_path):
    line = solution_only_line(repo_copy, "sender.c", "n = sendto(")
    role = repo_copy / "provision/roles/copylab_lab/defaults/main.yml"
    role.write_text(role.read_text() + f"# see: `{line.strip()}` for the answer\n")
    msg = refusal(repo_copy, tmp_path / "kit")
    assert "provision/roles/copylab_lab/defaults/main.yml:" in msg and "solution/sender.c" in msg


def test_private_key_in_a_role_is_refused(repo_copy, tmp_path):
    role = repo_copy / "provision/roles/copylab_kernel/defaults/main.yml"
    kind = "OPENSSH PRIVATE KEY-----"  # split, so no scanner mistakes this file for a key
    block = f"-----BEGIN {kind}\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END {kind}\n"
    role.write_text(role.read_text() + "# leftover:\n" + "".join(f"# {ln}\n" for ln in block.splitlines()))
    msg = refusal(repo_copy, tmp_path / "kit")
    assert "provision/roles/copylab_kernel/defaults/main.yml: holds a private key block" in msg


@pytest.mark.parametrize("rel, text, problem", [
    ("provision/roles/copylab_lab/files/id_ed25519", "not really a key\n",
     "provision/roles/copylab_lab/files/id_ed25519: file named like a key"),
    ("provision/roles/copylab_lab/files/grader.pem", "x\n",
     "provision/roles/copylab_lab/files/grader.pem: file named like a key"),
    ("labs/lab1/.env", "A=1\n", "labs/lab1/.env: an environment (.env) file"),
    ("provision/roles/copylab_lab/files/instance/config.py", "DEBUG = False\n",
     "provision/roles/copylab_lab/files/instance/: an instance/ folder"),
    ("provision/roles/copylab_lab/tests/test.yml", "---\n",
     "provision/roles/copylab_lab/tests/: a tests/ folder (hidden checks)"),
    ("provision/roles/copylab_lab/vars/extra.yml", 'copylab_token: "abcdef123456"\n',
     "provision/roles/copylab_lab/vars/extra.yml:1: assigns a literal token"),
    ("grader/engine/settings.py", "X = 1\nSECRET_KEY = 'x8Hq2mZ0pLr7'\n",
     "grader/engine/settings.py:2: assigns a literal SECRET_KEY"),
])
def test_secrets_and_hidden_checks_are_refused(repo_copy, tmp_path, rel, text, problem):
    (repo_copy / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo_copy / rel).write_text(text)
    msg = refusal(repo_copy, tmp_path / "kit")
    assert problem in msg


def test_copy_of_a_fixture_is_refused(repo_copy, tmp_path):
    fixture = repo_copy / "support/lab1_submissions.py"
    shutil.copy(fixture, repo_copy / "labs/lab1/submissions.py")
    (repo_copy / "labs/lab1/skeleton/lab1_submissions.py").write_text(fixture.read_text() + "# edited\n")
    msg = refusal(repo_copy, tmp_path / "kit")
    assert "labs/lab1/submissions.py: same content as support/lab1_submissions.py" in msg
    assert "labs/lab1/skeleton/lab1_submissions.py: named like support/lab1_submissions.py" in msg


def test_symlink_is_refused(repo_copy, tmp_path):
    link = repo_copy / "labs/lab1/skeleton/extra.c"
    link.symlink_to("../solution/copytrace.c")
    msg = refusal(repo_copy, tmp_path / "kit")
    assert "labs/lab1/skeleton/extra.c is a symbolic link" in msg


def test_missing_listed_file_is_named(repo_copy, tmp_path):
    (repo_copy / "labs/tools/doctor.py").unlink()
    msg = refusal(repo_copy, tmp_path / "kit")
    assert "labs/tools/doctor.py is missing" in msg


def test_solution_folders_and_build_outputs_stay_out(repo_copy, tmp_path):
    (repo_copy / "labs/lab1/skeleton/solution").mkdir()
    (repo_copy / "labs/lab1/skeleton/solution/notes.txt").write_text("answers\n")
    (repo_copy / "labs/lab1/handin-lab1-20250101T000000Z.tar.gz").write_bytes(b"\x1f\x8b")
    (repo_copy / "grader/engine/__pycache__").mkdir()
    (repo_copy / "grader/engine/__pycache__/run.cpython-311.pyc").write_bytes(b"\0")
    (repo_copy / "labs/lab1/copytrace.ko").write_bytes(b"\x7fELF")
    kit = export_kit(repo_copy, tmp_path / "kit", progress=quiet)
    names = files_of(kit)
    assert not any("solution" in n or "handin-" in n or "pycache" in n or n.endswith(".ko") for n in names)


def test_git_checkout_source_commit_ignored_files_and_uncommitted_warning(repo_copy, tmp_path):
    (repo_copy / ".gitignore").write_text("labs/*/sender\n")
    git(repo_copy, "init", "-q")
    git(repo_copy, "add", "-A")
    git(repo_copy, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "copy")
    (repo_copy / "labs/lab1/sender").write_bytes(b"\x7fELF built from the solution")
    handout = repo_copy / "labs/lab1/README.md"
    handout.write_text(handout.read_text() + "\nOne more note.\n")
    messages: list[str] = []
    kit = export_kit(repo_copy, tmp_path / "kit", progress=messages.append)
    assert json.loads((kit / "kit.json").read_text())["source_commit"] == git(repo_copy, "rev-parse", "HEAD")
    assert not (kit / "labs/lab1/sender").exists()
    assert (kit / "labs/lab1/README.md").read_text().endswith("One more note.\n")
    warning = [m for m in messages if m.startswith("warning:")]
    assert len(warning) == 1 and "labs/lab1/README.md" in warning[0], messages
    assert any("labs/lab1/sender" in m for m in messages if m.startswith("left out")), messages


def test_non_empty_dest_is_kept_without_force(repo_copy, tmp_path):
    dest = tmp_path / "kit"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me\n")
    with pytest.raises(GraderError, match="exists and is not empty"):
        export_kit(repo_copy, dest, progress=quiet)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]
    assert (dest / "mine.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kit", "repo"]
    export_kit(repo_copy, dest, force=True, progress=quiet)
    assert not (dest / "mine.txt").exists() and (dest / "kit.json").is_file()


def test_failed_forced_export_keeps_the_old_kit(repo_copy, tmp_path):
    dest = export_kit(repo_copy, tmp_path / "kit", progress=quiet)
    before = {rel: (dest / rel).read_bytes() for rel in files_of(dest)}
    readme = repo_copy / "labs/lab1/README.md"
    readme.write_text(readme.read_text() + solution_only_line(repo_copy) + "\n")
    with pytest.raises(GraderError, match="failed its scan"):
        export_kit(repo_copy, dest, force=True, progress=quiet)
    assert {rel: (dest / rel).read_bytes() for rel in files_of(dest)} == before


def test_force_never_replaces_the_repository(repo_copy, tmp_path):
    for dest in (repo_copy, tmp_path, repo_copy / "labs/lab1/out", repo_copy / "grader/engine/kit"):
        with pytest.raises(GraderError, match="repository or contains it|which the kit copies"):
            export_kit(repo_copy, dest, force=True, progress=quiet)
    assert (repo_copy / "labs/lab1/solution/copytrace.c").is_file()
    assert not (repo_copy / "labs/lab1/out").exists()


def test_tar_needs_a_tar_name(repo_copy, tmp_path):
    with pytest.raises(GraderError, match=r"\.tar\.gz"):
        export_kit(repo_copy, tmp_path / "kit", "tar", progress=quiet)


# ---------------------------------------------------------------- the command line

def test_cli_exports_and_prints_the_path(tmp_path):
    proc = export_cli(REPO, str(tmp_path / "kit.tar.gz"), "--format", "tar")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{tmp_path / 'kit.tar.gz'}\n"
    assert "collecting the kit's files" in proc.stderr
    assert tarfile.is_tarfile(tmp_path / "kit.tar.gz")


def test_cli_refusals_exit_1_with_one_line(repo_copy, tmp_path):
    dest = tmp_path / "kit"
    dest.mkdir()
    (dest / "x").write_text("x")
    proc = export_cli(REPO, str(dest))
    assert proc.returncode == 1 and proc.stdout == ""
    expected = f"grader: cannot export: {dest} exists and is not empty (--force replaces it)"
    assert proc.stderr.splitlines() == [expected]

    readme = repo_copy / "labs/lab1/README.md"
    readme.write_text(readme.read_text() + solution_only_line(repo_copy) + "\n")
    proc = export_cli(repo_copy, str(tmp_path / "leaky"))
    assert proc.returncode == 1 and proc.stdout == ""
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("grader: cannot export: the kit failed its scan (1 problem): labs/lab1/README.md:")
    assert not (tmp_path / "leaky").exists()

    proc = export_cli(repo_copy, str(tmp_path / "kit2"), "--format", "zip")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_a_kit_for_a_debian_13_course_records_its_release(tmp_path):
    """export-kit --suite trixie: the Vagrantfile brings up a Debian 13 box (vagrant.kit.yml), `lab doctor`
    checks the 6.12 pin (the kit's manifest) and the README names that kernel."""
    kit = export_kit(REPO, tmp_path / "kit13", "dir", progress=quiet, suite="trixie")
    meta = json.loads((kit / "kit.json").read_text())
    manifest = json.loads((kit / "labs/tools/manifest.json").read_text())
    assert meta["suite"] == manifest["suite"] == "trixie"
    assert meta["kernel_release"] == manifest["kernels"]["trixie"]["x86_64"]["release"] == "6.12.117+deb13-amd64"
    assert "\nCOPYLAB_SUITE: trixie\n" in (kit / "vagrant.kit.yml").read_text()
    readme = (kit / "README.md").read_text()
    assert "The VM runs Debian 13\n" in readme and "`6.12.117+deb13-amd64`" in readme
    with pytest.raises(GraderError, match="no kernels for Debian release 'forky'"):
        export_kit(REPO, tmp_path / "kit14", "dir", progress=quiet, suite="forky")
