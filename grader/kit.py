"""The student kit an instructor publishes: ``python -m grader export-kit DEST`` (stdlib only).

The kit is an ALLOWLIST of repository files (KIT_PATHS) plus files made here: the student README
(from grader/kit_readme.md), a .gitignore, the host-side ``lab`` entry, ``vagrant.kit.yml`` and,
written last, ``kit.json`` (format, source commit, labs, kernel, sha256 of every file). Before anything
is published, scan_kit() looks for solution lines, secrets and hidden checks in the built kit; the kit
is built in a temp folder next to DEST and renamed into place, so a failed export leaves nothing.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from grader.errors import GraderError

KIT_FORMAT = 1
FORMATS = ("dir", "tar", "git")
TAR_TOP = "copylab-kit"
TAR_SUFFIXES = (".tar.gz", ".tgz")
LABS_ENTRY = "labs/*/"  # every labs/<lab>/ holding lab.toml, without its solution folder
# test support the kit must hold no copy of: the solutions with faults put in, per kind
FIXTURES = ("support/lab*_submissions.py",)

# Relative to the repository root; an entry ending in "/" is a folder copied recursively.
KIT_PATHS: tuple[str, ...] = (
    "Vagrantfile",
    "provision/ansible.cfg",
    "provision/controller-files.txt",
    "provision/site.yml",
    "provision/plays/",
    "provision/roles/",
    # the grader engine `make check` runs in the VM (role copylab_lab installs it from <kit>/grader)
    "grader/__init__.py",
    "grader/errors.py",
    "grader/executor.py",
    "grader/engine/",
    "grader/profiles/",
    "grader/vmside/copylab-helper",
    LABS_ENTRY,
    "labs/tools/handin.py",
    "labs/tools/doctor.py",
    "labs/tools/manifest.json",
    "labs/tools/lab",
)

# Never copied out of an included folder: Python caches, build outputs, hand-in archives. (In a git
# checkout, files git ignores are skipped too: a solution built or handed in there stays out.)
SKIP_PATTERNS = ("__pycache__", "*.pyc", "*.pyo", "*.o", "*.ko", "*.mod", "*.mod.c", "*.cmd",
                 "Module.symvers", "modules.order", "handin-*.tar.gz", ".pytest_cache", ".git")

README_TEMPLATE = Path(__file__).with_name("kit_readme.md")
HOST_ENTRY = "labs/tools/lab"
MANIFEST = "labs/tools/manifest.json"
KIT_JSON = "kit.json"

KIT_GITIGNORE = """\
# copylab student kit
.vagrant/
vagrant.local.yml
handin-*.tar.gz
# bundles provisioning makes on the host
/build/
# build outputs, should you build on the host
*.ko
*.o
*.mod
*.mod.c
*.cmd
Module.symvers
modules.order
__pycache__/
*.pyc
"""

# the kit's Vagrantfile settings: the student's work folder (created by the Vagrantfile) is the VM's ~/labs
VAGRANT_KIT_YML = ("# copylab student kit: settings the Vagrantfile reads (vagrant.local.yml overrides them)\n"
                   "COPYLAB_WORK_DIR: work\nCOPYLAB_SUITE: {suite}\n")
DEBIAN = {"bookworm": "Debian 12", "trixie": "Debian 13"}

# scan_kit
MIN_SOLUTION_LINE = 12
PRIVATE_KEY_RE = re.compile(rb"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----")
SECRET_ASSIGN_RE = re.compile(r"""(?i)(secret_key|password|passwd|token)\s*[:=]\s*["'][^"'\s]{8,}["']""")
KEY_NAME_PATTERNS = ("*_ed25519", "*_ecdsa", "*_dsa", "*_rsa", "id_*", "*.pem", "*.key")
ENV_FILE_PATTERNS = (".env", ".env.*")

Progress = Callable[[str], None]


# ---------------------------------------------------------------- what goes in

def find_labs(repo: Path) -> list[str]:
    """Names of the labs: folders under labs/ that hold lab.toml."""
    labs = repo / "labs"
    if not labs.is_dir():
        return []
    return sorted(d.name for d in labs.iterdir() if (d / "lab.toml").is_file())


def kit_entries(repo: Path) -> list[str]:
    """KIT_PATHS with the labs entry expanded to labs/<lab>/ for every lab."""
    out: list[str] = []
    for entry in KIT_PATHS:
        out += [f"labs/{lab}/" for lab in find_labs(repo)] if entry == LABS_ENTRY else [entry]
    return out


def _skipped(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in SKIP_PATTERNS)


def _link_in_path(repo: Path, rel: str) -> str | None:
    """The first component of rel (from the repo down) that is a symbolic link, if any."""
    parts = Path(rel.rstrip("/")).parts
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if (repo / sub).is_symlink():
            return sub
    return None


def _walk_tree(repo: Path, top: str, problems: list[str]) -> tuple[list[str], list[str]]:
    """(files, skipped) under the folder top (relative, ending in /): never a solution folder."""
    files: list[str] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(repo / top):
        here = Path(dirpath)
        for name in sorted(dirnames):
            rel = (here / name).relative_to(repo).as_posix()
            if (here / name).is_symlink():
                problems.append(f"{rel} is a symbolic link (the kit holds regular files only)")
                dirnames.remove(name)
            elif name == "solution" or _skipped(name):
                dirnames.remove(name)
                if name != "solution":
                    skipped.append(rel + "/")
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(repo).as_posix()
            if path.is_symlink():
                problems.append(f"{rel} is a symbolic link (the kit holds regular files only)")
            elif not path.is_file():
                problems.append(f"{rel} is not a regular file")
            elif _skipped(name):
                skipped.append(rel)
            else:
                files.append(rel)
    return files, skipped


def _git_ignored(repo: Path, rels: list[str]) -> set[str]:
    """The paths among rels that git ignores (empty when repo is not a git checkout)."""
    if not rels or source_commit(repo) is None:
        return set()
    proc = subprocess.run(["git", "-C", str(repo), "check-ignore", "-z", "--stdin"],
                          input="\0".join(rels) + "\0", capture_output=True, text=True, env=_git_env(),
                          timeout=60)
    if proc.returncode not in (0, 1):
        raise GraderError(f"git check-ignore failed in {repo}: {proc.stderr.strip()}")
    return {p for p in proc.stdout.split("\0") if p}


def collect_files(repo: Path, progress: Progress = print) -> list[str]:
    """Every repository file the kit holds (sorted, relative); refuses missing files and links."""
    problems: list[str] = []
    files: list[str] = []
    tree_files: list[str] = []
    skipped: list[str] = []
    for entry in kit_entries(repo):
        link = _link_in_path(repo, entry)
        path = repo / entry
        if link:
            problems.append(f"{link} is a symbolic link (the kit holds regular files only)")
        elif entry.endswith("/") and path.is_dir():
            found, junk = _walk_tree(repo, entry, problems)
            tree_files += found
            skipped += junk
        elif not entry.endswith("/") and path.is_file():
            files.append(entry)
        else:
            problems.append(f"{entry} is missing (the kit's allowlist names it)")
    if problems:
        raise GraderError(f"{repo}: " + "; ".join(dict.fromkeys(problems)))
    ignored = _git_ignored(repo, tree_files)
    skipped += sorted(ignored)
    if skipped:
        progress(f"left out {len(skipped)} build outputs and ignored files: {', '.join(skipped[:8])}"
                 + (" ..." if len(skipped) > 8 else ""))
    return sorted(set(files) | {f for f in tree_files if f not in ignored})


# ---------------------------------------------------------------- facts for kit.json and the README

def _git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")}


def source_commit(repo: Path) -> str | None:
    """git HEAD of repo, or None when repo is not the top of a git checkout."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True, env=_git_env(), timeout=60)
    except OSError:
        return None
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != repo.resolve():
        return None
    return lines[1]


def uncommitted(repo: Path, files: list[str]) -> list[str]:
    """The files among files that differ from git HEAD (modified or untracked)."""
    proc = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "-z", "--untracked-files=all",
                           "--", *files], capture_output=True, text=True, env=_git_env(), timeout=60)
    if proc.returncode != 0:
        return []
    return sorted(entry[3:] for entry in proc.stdout.split("\0") if len(entry) > 3 and entry[2] == " ")


def _manifest(repo: Path) -> dict:
    try:
        return json.loads((repo / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise GraderError(f"{MANIFEST}: cannot read it: {e}") from e


def kit_suite(repo: Path, suite: str | None = None) -> str:
    """The kit's Debian release: `suite` (the course's choice) or manifest.json's default, checked
    against the releases the manifest pins kernels for."""
    manifest = _manifest(repo)
    suite = suite or manifest.get("suite")
    known = sorted(manifest.get("kernels") or {})
    if suite not in known:
        raise GraderError(f"{MANIFEST} pins no kernels for Debian release {suite!r} (it has: {', '.join(known)})")
    return suite


def kernel_release(repo: Path, suite: str | None = None) -> str | None:
    """The x86_64 kernel pinned for the kit's Debian release (labs/tools/manifest.json)."""
    return pinned_kernels(repo, suite).get("x86_64")


def pinned_kernels(repo: Path, suite: str | None = None) -> dict[str, str]:
    """`uname -m` -> kernel release pinned for the kit's Debian release (manifest.json suite and
    kernels; kit.json, README)."""
    kernels = _manifest(repo)["kernels"][kit_suite(repo, suite)]
    return {arch: pin["release"] for arch, pin in kernels.items()
            if isinstance(pin, dict) and isinstance(pin.get("release"), str)}


def suite_kernels(repo: Path | None = None) -> dict[str, dict[str, str]]:
    """Every Debian release lab VMs are built for -> its pinned_kernels, from `repo` (default: the one
    this package is in); tests/unit/test_doctor.py keeps the manifest equal to the image builder's
    SUITES and the copylab_kernel role."""
    repo = repo or Path(__file__).resolve().parents[1]
    return {suite: pinned_kernels(repo, suite) for suite in _manifest(repo).get("kernels") or {}}


def _lab_kernels(repo: Path, labs: list[str]) -> list[str]:
    """[run].kernel of every lab's lab.toml (the README's fallback)."""
    kernels = set()
    for lab in labs:
        with open(repo / "labs" / lab / "lab.toml", "rb") as f:
            run = tomllib.load(f).get("run", {})
        listed = run.get("kernels") or []
        for kernel in [run.get("kernel"), *(listed.values() if isinstance(listed, dict) else listed)]:
            if kernel:
                kernels.add(kernel)
    return sorted(kernels)


def render_readme(repo: Path, labs: list[str], kernel: str | None,
                  others: list[str] = (), suite: str = "bookworm") -> str:
    """The student README: grader/kit_readme.md with {labs}, {first_lab} and {kernel} filled in
    (the kit's kernel, then the other architectures' pins, named for arm64 computers)."""
    if kernel:
        shown = f"`{kernel}`" + (f" ({', '.join(f'`{k}`' for k in others)} on arm64 computers)"
                                 if others else "")
    else:
        shown = " / ".join(f"`{k}`" for k in _lab_kernels(repo, labs)) or "the pinned kernel"
    values = {
        "labs": ", ".join(labs),
        "first_lab": labs[0] if labs else "lab1",
        "kernel": shown,
        "debian": DEBIAN.get(suite, f"Debian {suite}"),
    }
    text = README_TEMPLATE.read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


# ---------------------------------------------------------------- building

def _copy(src: Path, dst: Path, mode: int | None = None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if mode is None:
        mode = 0o755 if src.stat().st_mode & 0o111 else 0o644
    dst.chmod(mode)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _kit_tree(kit: Path) -> tuple[list[str], list[str], list[str]]:
    """(dirs, files, links) of a built kit, relative and sorted; the kit's own .git is left out."""
    dirs, files, links = [], [], []
    for dirpath, dirnames, filenames in os.walk(kit):
        here = Path(dirpath)
        if here == kit and ".git" in dirnames:
            dirnames.remove(".git")
        for name in list(dirnames) + filenames:
            path = here / name
            rel = path.relative_to(kit).as_posix()
            if path.is_symlink():
                links.append(rel)
            elif path.is_dir():
                dirs.append(rel)
            else:
                files.append(rel)
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return sorted(dirs), sorted(files), sorted(links)


def build_kit(repo: Path, kit: Path, files: list[str], commit: str | None, suite: str | None = None) -> dict:
    """Copy files into kit, add the made files and write kit.json last; returns kit.json's content.
    suite: the course's Debian release (default manifest.json's), recorded for the Vagrantfile (its
    box) and for `lab doctor` (the kit's manifest)."""
    suite = kit_suite(repo, suite)
    for rel in files:
        _copy(repo / rel, kit / rel)
    manifest = _manifest(repo)
    if manifest["suite"] != suite:
        _write(kit / MANIFEST, json.dumps({**manifest, "suite": suite}, indent=2) + "\n")
    labs = find_labs(repo)
    kernel = kernel_release(repo, suite)
    pins = pinned_kernels(repo, suite)
    _copy(repo / HOST_ENTRY, kit / "lab", mode=0o755)
    _write(kit / "README.md", render_readme(repo, labs, kernel, [k for k in pins.values() if k != kernel], suite))
    _write(kit / ".gitignore", KIT_GITIGNORE)
    _write(kit / "vagrant.kit.yml", VAGRANT_KIT_YML.format(suite=suite))
    meta: dict = {"copylab_kit": KIT_FORMAT, "source_commit": commit, "labs": labs, "suite": suite}
    if kernel:
        meta["kernel_release"] = kernel
    meta["kernels"] = pins
    _, kit_files, _ = _kit_tree(kit)
    meta["files"] = {rel: sha256_file(kit / rel) for rel in kit_files if rel != KIT_JSON}
    _write(kit / KIT_JSON, json.dumps(meta, indent=2) + "\n")
    return meta


# ---------------------------------------------------------------- the scan

def _text_lines(path: Path) -> list[str]:
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def _files_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def solution_lines(repo: Path) -> dict[str, str]:
    """{stripped line: solution file} for solution lines of MIN_SOLUTION_LINE+ characters that the
    same lab's skeleton does not have."""
    leaks: dict[str, str] = {}
    for solution in sorted((repo / "labs").glob("*/solution")):
        skeleton = {line.strip() for f in _files_under(solution.parent / "skeleton")
                    for line in _text_lines(f)}
        for f in _files_under(solution):
            for line in _text_lines(f):
                line = line.strip()
                if len(line) >= MIN_SOLUTION_LINE and line not in skeleton:
                    leaks.setdefault(line, f.relative_to(repo).as_posix())
    return leaks


@dataclass
class _Hidden:
    """What the kit must not hold: solution lines and the lab submission variants of support/ (FIXTURES,
    by content and name)."""
    leaks: dict[str, str]                 # stripped solution line -> its solution file
    matcher: re.Pattern | None            # finds any of leaks inside a line
    fixture_digests: dict[str, str]       # sha256 -> support/... path
    fixture_names: dict[str, str]         # file name -> support/... path

    @classmethod
    def of(cls, repo: Path) -> "_Hidden":
        leaks = solution_lines(repo)
        matcher = None
        if leaks:
            matcher = re.compile("|".join(re.escape(line) for line in sorted(leaks, key=len, reverse=True)))
        fixtures = sorted(p for pattern in FIXTURES for p in repo.glob(pattern))
        return cls(leaks, matcher,
                   {sha256_file(f): f.relative_to(repo).as_posix() for f in fixtures},
                   {f.name: f.relative_to(repo).as_posix() for f in fixtures if f.name != "__init__.py"})


def _scan_paths(dirs: list[str], files: list[str], links: list[str]) -> list[str]:
    problems = [f"{rel}: symbolic link" for rel in links]
    for rel in dirs:
        name = rel.rsplit("/", 1)[-1]
        if name == "solution":
            problems.append(f"{rel}/: a solution folder")
        elif name == "instance":
            problems.append(f"{rel}/: an instance/ folder (service secrets and data)")
        elif name == "tests":
            problems.append(f"{rel}/: a tests/ folder (hidden checks)")
    for rel in files:
        name = rel.rsplit("/", 1)[-1].lower()
        if "solution" in rel.split("/"):
            problems.append(f"{rel}: path has a solution component")
        if any(fnmatch.fnmatchcase(name, p) for p in KEY_NAME_PATTERNS):
            problems.append(f"{rel}: file named like a key")
        if any(fnmatch.fnmatchcase(name, p) for p in ENV_FILE_PATTERNS):
            problems.append(f"{rel}: an environment (.env) file")
    return problems


def _scan_content(rel: str, data: bytes, hidden: _Hidden) -> list[str]:
    problems = []
    if PRIVATE_KEY_RE.search(data):
        problems.append(f"{rel}: holds a private key block")
    if data.startswith(b"\x7fELF"):
        problems.append(f"{rel}: a compiled (ELF) binary")
    digest = hashlib.sha256(data).hexdigest()
    name = rel.rsplit("/", 1)[-1]
    if digest in hidden.fixture_digests:
        problems.append(f"{rel}: same content as {hidden.fixture_digests[digest]} (hidden checks)")
    elif name in hidden.fixture_names:
        problems.append(f"{rel}: named like {hidden.fixture_names[name]} (hidden checks)")
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        m = hidden.matcher.search(line) if hidden.matcher else None
        if m:
            problems.append(f"{rel}:{n}: holds a line of {hidden.leaks[m.group(0)]}: {m.group(0)[:60]!r}")
        m = SECRET_ASSIGN_RE.search(line)
        if m:
            problems.append(f"{rel}:{n}: assigns a literal {m.group(1)}")
    return problems


def scan_kit(kit: Path, repo: Path) -> list[str]:
    """Problems in a built kit folder (empty = clean): solution lines or paths, private keys and
    key-named files, instance/ and .env, literal secrets, tests/ and copies of the FIXTURES."""
    dirs, files, links = _kit_tree(kit)
    hidden = _Hidden.of(repo)
    problems = _scan_paths(dirs, files, links)
    for rel in files:
        problems += _scan_content(rel, (kit / rel).read_bytes(), hidden)
    return problems


# ---------------------------------------------------------------- publishing

def _non_empty(path: Path) -> bool:
    if path.is_symlink() or path.is_file():
        return path.is_symlink() or path.stat().st_size > 0
    return path.is_dir() and any(path.iterdir())


def check_dest(repo: Path, dest: Path, fmt: str, force: bool) -> None:
    """Refuse a DEST that is (or holds) the repository, lies in a folder the kit copies, has the
    wrong name for a tar, or exists non-empty without force."""
    if fmt not in FORMATS:
        raise GraderError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    root, target = repo.resolve(), dest.resolve()
    if target == root or root.is_relative_to(target):
        raise GraderError(f"{dest} is the repository or contains it")
    for entry in kit_entries(repo):
        if entry.endswith("/") and target.is_relative_to((repo / entry).resolve()):
            raise GraderError(f"{dest} lies inside {entry}, which the kit copies")
    if fmt == "tar" and not dest.name.endswith(TAR_SUFFIXES):
        raise GraderError(f"{dest}: a tar kit's name ends in .tar.gz or .tgz")
    if _non_empty(dest) and not force:
        raise GraderError(f"{dest} exists and is not empty (--force replaces it)")


def write_tar(kit: Path, out: Path) -> None:
    """A reproducible .tar.gz of kit under TAR_TOP/: sorted, mtime 0, owner 0:0, normalized modes."""
    dirs, files, _ = _kit_tree(kit)
    entries = sorted([(d, True) for d in dirs] + [(f, False) for f in files], key=lambda e: e[0].split("/"))
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo(TAR_TOP, is_dir=True))
        for rel, is_dir in entries:
            path = kit / rel
            info = _tarinfo(f"{TAR_TOP}/{rel}", is_dir, path)
            if is_dir:
                tar.addfile(info)
            else:
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def _tarinfo(name: str, is_dir: bool, path: Path | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        st = path.stat()
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
    return info


def git_commit(kit: Path, commit: str | None) -> None:
    """Make kit a fresh git repository with one commit of everything in it."""
    git = ["git", "-c", "user.name=copylab", "-c", "user.email=copylab@localhost",
           "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", "-C", str(kit)]
    message = f"copylab student kit ({commit or 'not from a git checkout'})"
    for args in (["init", "-q", "-b", "main"], ["add", "-A", "-f", "."], ["commit", "-q", "-m", message]):
        try:
            proc = subprocess.run(git + args, capture_output=True, text=True, env=_git_env(), timeout=120)
        except OSError as e:
            raise GraderError(f"cannot run git: {e}") from e
        if proc.returncode != 0:
            detail = " / ".join((proc.stderr or proc.stdout).strip().splitlines())
            raise GraderError(f"git {args[0]} failed in {kit}: {detail}")


def _publish(new: Path, dest: Path, work: Path) -> None:
    """Rename new to dest; an existing dest is first moved into work (deleted with it)."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = work / "replaced"
        os.rename(dest, old)
    try:
        os.rename(new, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        raise


def export_kit(repo: Path, dest: Path, fmt: str = "dir", force: bool = False,
               progress: Progress = print, suite: str | None = None) -> Path:
    """Export the student kit of repo to dest as a folder ("dir"), a .tar.gz ("tar") or a folder
    that is a git repository with one commit ("git"); returns dest."""
    repo, dest = Path(repo), Path(dest).absolute()
    check_dest(repo, dest, fmt, force)
    progress(f"collecting the kit's files from {repo}")
    files = collect_files(repo, progress)
    commit = source_commit(repo)
    changed = uncommitted(repo, files) if commit else []
    if changed:
        progress(f"warning: {len(changed)} kit files differ from the source commit {commit[:12]} "
                 f"(uncommitted): {', '.join(changed[:8])}" + (" ..." if len(changed) > 8 else ""))
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        kit = work / TAR_TOP
        kit.mkdir()
        meta = build_kit(repo, kit, files, commit, suite)
        progress(f"built {len(meta['files']) + 1} files (labs: {', '.join(meta['labs'])}); scanning")
        problems = scan_kit(kit, repo)
        if problems:
            for problem in problems:
                progress(f"scan: {problem}")
            count = f"{len(problems)} problem" + ("s" if len(problems) > 1 else "")
            raise GraderError(f"the kit failed its scan ({count}): " + "; ".join(problems))
        new = kit
        if fmt == "tar":
            new = work / "kit.tar.gz"
            write_tar(kit, new)
        elif fmt == "git":
            git_commit(kit, commit)
        _publish(new, dest, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"kit ({fmt}) written to {dest}")
    return dest
