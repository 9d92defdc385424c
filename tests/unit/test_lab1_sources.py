"""Lab 1 sources: skeleton generation, user programs, module builds, handin.

No VM needed. Module builds use the Debian 12 target headers
(/usr/src/linux-headers-6.1.0-50-amd64, override with COPYLAB_KDIR); `make deps` installs them,
and their absence fails the tests (never a skip).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import http.server
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import string
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "labs" / "lab1"
TOOLS = REPO / "labs" / "tools"
KDIR = Path(os.environ.get("COPYLAB_KDIR", "/usr/src/linux-headers-6.1.0-50-amd64"))
FILES = ("sender.c", "receiver.c", "copytrace.c")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


from support import lab1_submissions as subs  # noqa: E402
mkskeleton = _load("copylab_mkskeleton", TOOLS / "mkskeleton.py")

@pytest.fixture
def _require_gcc():
    # `make deps` installs build-essential: a missing compiler is a set-up failure, never a skip
    assert shutil.which("gcc"), "gcc is not installed: run `make deps`"


@pytest.fixture
def _require_kdir():
    assert (KDIR / "Makefile").is_file(), (
        f"no kernel headers at {KDIR}: run `make deps` (installs linux-headers-6.1.0-50-amd64)")


needs_gcc = pytest.mark.usefixtures("_require_gcc")
needs_kdir = pytest.mark.usefixtures("_require_kdir")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run(cmd, **kw)


# --- skeleton -----------------------------------------------------------------------------------


def test_skeleton_up_to_date():
    r = run([sys.executable, str(TOOLS / "mkskeleton.py"), "--check"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_skeletonize_markers():
    text = (
        "int f(void)\n{\n"
        "\t/* TODO(1): return 42 */\n"
        "\t/* BEGIN SOLUTION */\n\treturn 42;\n\t/* END SOLUTION */\n"
        "\t/* SKELETON: return 0; */\n}\n"
    )
    assert (
        mkskeleton.skeletonize(text)
        == "int f(void)\n{\n\t/* TODO(1): return 42 */\n\treturn 0;\n}\n"
    )


@pytest.mark.parametrize(
    "text",
    [
        "/* BEGIN SOLUTION */\nx\n/* END SOLUTION */\n",  # no TODO before
        "/* TODO(1): a */\n/* BEGIN SOLUTION */\nx\n",  # never closed
        "/* END SOLUTION */\n",  # END alone
        "/* TODO(1): a */\n/* BEGIN SOLUTION */\n/* BEGIN SOLUTION */\n/* END SOLUTION */\n",
    ],
)
def test_skeletonize_rejects_bad_markers(text):
    with pytest.raises(mkskeleton.MarkerError):
        mkskeleton.skeletonize(text)


def test_check_reports_stale_skeleton(tmp_path):
    labs = tmp_path / "labs"
    shutil.copytree(LAB / "solution", labs / "lab1" / "solution")
    shutil.copytree(LAB / "skeleton", labs / "lab1" / "skeleton")
    cmd = [sys.executable, str(TOOLS / "mkskeleton.py"), "--labs-dir", str(labs), "--check"]
    assert run(cmd).returncode == 0
    with (labs / "lab1" / "solution" / "sender.c").open("a") as fh:
        fh.write("/* changed */\n")
    r = run(cmd)
    assert r.returncode == 1
    assert "lab1/skeleton/sender.c" in r.stderr and "lab1/skeleton/SHA256SUMS" in r.stderr
    assert "receiver.c" not in r.stderr
    assert run(cmd[:-1]).returncode == 0  # regenerate
    assert run(cmd).returncode == 0


def test_skeleton_leaves_the_student_work_open():
    sk = {name: (LAB / "skeleton" / name).read_text() for name in FILES}
    assert "= sendto(" not in sk["sender.c"] and 'printf("sender: buffer at' not in sk["sender.c"]
    assert (
        "= recv(" not in sk["receiver.c"] and 'printf("receiver: buffer at' not in sk["receiver.c"]
    )
    assert "regs_get_kernel_argument(regs, 0)" not in sk["copytrace.c"]
    assert "strcmp(current->comm" not in sk["copytrace.c"]
    assert "[COPY1] src=" in sk["copytrace.c"]  # the format is in the TODO text
    assert 'pr_info("[COPY' not in sk["copytrace.c"]
    assert "register_kprobe(%s) failed: %d" in sk["copytrace.c"]
    for text in sk.values():
        assert "SOLUTION" not in text and "SKELETON:" not in text


# --- fixtures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", subs.KINDS)
def test_fixture_kinds_apply(kind, tmp_path):
    folder = subs.make_submission(kind, tmp_path / kind)
    with_answers = kind in subs.WITH_ANSWERS
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES + (subs.ANSWERS,) * with_answers)
    texts = {n: (folder / n).read_text() for n in FILES}
    solution = {n: (LAB / "solution" / n).read_text() for n in FILES}
    assert (texts == solution) == (kind == "solution" or with_answers)


def test_fixture_anchor_is_asserted(monkeypatch):
    monkeypatch.setattr(subs, "SENDTO", "\tthis anchor is not in the solution;\n")
    with pytest.raises(subs.FixtureAnchorError):
        subs.submission_texts("hang_sender")


# --- user programs ------------------------------------------------------------------------------


def gcc(src: Path, out: Path) -> subprocess.CompletedProcess:
    return run(["gcc", "-Wall", "-Wextra", "-O2", "-o", str(out), str(src)])


@needs_gcc
@pytest.mark.parametrize("variant", ["solution", "skeleton"])
@pytest.mark.parametrize("prog", ["sender", "receiver"])
def test_user_program_compiles(variant, prog, tmp_path):
    r = gcc(LAB / variant / f"{prog}.c", tmp_path / prog)
    assert r.returncode == 0, r.stderr
    if variant == "solution":
        assert "warning:" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    assert shutil.which("gcc"), "gcc is not installed: run `make deps`"
    d = tmp_path_factory.mktemp("progs")
    for prog in ("sender", "receiver"):
        r = gcc(LAB / "solution" / f"{prog}.c", d / prog)
        assert r.returncode == 0, r.stderr
    return d


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send_and_receive(programs: Path, message: str):
    port = free_udp_port()
    recv = subprocess.Popen(
        [str(programs / "receiver"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # stdout is a pipe: these lines arrive before the datagram only if the receiver line-buffers
        lines = [recv.stdout.readline(), recv.stdout.readline()]
        sent = run([str(programs / "sender"), message, str(port)], timeout=10)
        out, err = recv.communicate(timeout=10)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return port, lines + out.splitlines(keepends=True), recv.returncode, err, sent


ADDR = r"0x[0-9a-f]+"


@pytest.mark.timeout(30)
def test_sender_receiver_output_contract(programs):
    message = "".join(
        random.choice(string.ascii_uppercase + string.digits + "_") for _ in range(16)
    )
    port, rlines, rc, rerr, sent = send_and_receive(programs, message)
    assert rc == 0, rerr
    assert [l.rstrip("\n") for l in rlines] == [
        f"receiver: listening on 127.0.0.1:{port}",
        rlines[1].rstrip("\n"),
        f'receiver: received 16 bytes "{message}"',
    ]
    assert re.fullmatch(rf"receiver: buffer at {ADDR}\n", rlines[1])
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == ""
    slines = sent.stdout.splitlines()
    assert len(slines) == 2
    assert re.fullmatch(rf"sender: buffer at {ADDR}", slines[0])
    assert slines[1] == f'sender: sent 16 bytes "{message}" to 127.0.0.1:{port}'


@pytest.mark.timeout(30)
def test_long_message_is_sent_with_a_warning_and_truncated(programs):
    message = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    port, rlines, rc, _, sent = send_and_receive(programs, message)
    assert sent.returncode == 0
    assert "warning" in sent.stderr and "16-byte" in sent.stderr
    assert f'sender: sent 26 bytes "{message}" to 127.0.0.1:{port}' in sent.stdout
    assert rc == 0 and rlines[-1] == 'receiver: received 16 bytes "ABCDEFGHIJKLMNOP"\n'


def test_errors_are_reported(programs):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        r = run([str(programs / "receiver"), str(port)], timeout=10)
    assert r.returncode != 0
    assert f"receiver: bind 127.0.0.1:{port}: Address already in use" in r.stderr
    for args in (["x", "0"], ["x", "70000"], ["x", "12ab"]):
        r = run([str(programs / "sender"), *args], timeout=10)
        assert r.returncode == 2 and "invalid port" in r.stderr
    r = run([str(programs / "receiver"), "1", "2"], timeout=10)
    assert r.returncode == 2 and "usage" in r.stderr


# --- module builds ------------------------------------------------------------------------------


def lab_folder(kind: str, dest: Path) -> Path:
    """A build folder as the grader makes it: the three files + the lab's Makefile and Kbuild."""
    folder = subs.make_submission(kind, dest)
    for name in ("Makefile", "Kbuild"):
        shutil.copy(LAB / name, folder / name)
    return folder


@needs_gcc
@needs_kdir
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", subs.KINDS)
def test_module_builds(kind, tmp_path):
    folder = lab_folder(kind, tmp_path / kind)
    r = run(["make", "-C", str(folder), f"KDIR={KDIR}"], timeout=280)
    if kind == "compile_error":
        assert r.returncode != 0
        assert "copytrace.c" in r.stderr and "error:" in r.stderr
        return
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("sender", "receiver", "copytrace.ko"):
        assert (folder / name).is_file(), name
    if kind == "solution":
        assert "warning:" not in r.stderr, r.stderr
        r = run(["make", "-C", str(folder), "clean"])
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in folder.iterdir()) == sorted(FILES + ("Makefile", "Kbuild"))


# --- handin -------------------------------------------------------------------------------------


def student_folder(tmp_path: Path, kind: str = "solution") -> Path:
    """The student's layout: skeleton copy (with SHA256SUMS) + Makefile, Kbuild, lab.toml."""
    folder = tmp_path / "lab1"
    shutil.copytree(LAB / "skeleton", folder)
    for name in ("Makefile", "Kbuild", "lab.toml"):
        shutil.copy(LAB / name, folder / name)
    subs.make_submission(kind, folder)
    return folder


def handin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("COPYLAB_GRADER_URL", "COPYLAB_TOKEN", "XDG_CONFIG_HOME")
    }
    env["HOME"] = str(tmp_path / "home")  # no real ~/.config/copylab/handin.conf
    env.update(extra)
    return env


def handin(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run(
        [sys.executable, str(TOOLS / "handin.py"), "--lab-dir", str(folder), *args],
        env=env,
        timeout=60,
    )


def archives(folder: Path) -> list[Path]:
    return sorted(folder.glob("handin-lab1-*.tar.gz"))


def test_handin_archives_exactly_the_submission_files(tmp_path):
    folder = student_folder(tmp_path)
    (folder / "notes.txt").write_text("not handed in\n")
    r = run(
        ["make", "-s", "-C", str(folder), "handin", f"COPYLAB_TOOLS={TOOLS}"],
        env=handin_env(tmp_path),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    [archive] = archives(folder)
    assert re.fullmatch(r"handin-lab1-\d{8}T\d{6}Z\.tar\.gz", archive.name)
    # the full path, so the student can find the archive from anywhere; and no claim to have submitted
    assert f"wrote {archive.resolve()} (" in r.stdout
    assert "not uploaded" in r.stdout and "nothing was submitted" in r.stdout
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        assert sorted(m.name for m in members) == sorted(FILES)
        for m in members:
            assert m.isreg() and m.mode == 0o644 and m.uid == 0 and m.gid == 0
            assert m.uname == "" and m.gname == ""
            assert tar.extractfile(m).read() == (folder / m.name).read_bytes()


def test_handin_repo_layout_uses_skeleton_manifest(tmp_path):
    folder = tmp_path / "labs" / "lab1"
    shutil.copytree(LAB / "skeleton", folder / "skeleton")
    shutil.copy(LAB / "lab.toml", folder / "lab.toml")
    for name in FILES:
        shutil.copy(LAB / "skeleton" / name, folder / name)
    r = handin(folder, handin_env(tmp_path))
    assert r.returncode == 2
    assert all(f"{n}: unchanged skeleton file" in r.stderr for n in FILES)
    subs.make_submission("solution", folder)
    r = handin(folder, handin_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert len(archives(folder)) == 1


def test_handin_rejects_a_missing_file(tmp_path):
    folder = student_folder(tmp_path)
    (folder / "receiver.c").unlink()
    r = handin(folder, handin_env(tmp_path), "--spec", str(folder / "lab.toml"))
    assert r.returncode == 2
    assert "receiver.c: missing" in r.stderr
    assert archives(folder) == []


def test_handin_rejects_an_empty_file(tmp_path):
    folder = student_folder(tmp_path)
    (folder / "sender.c").write_text("")
    r = handin(folder, handin_env(tmp_path))
    assert r.returncode == 2 and "sender.c: empty" in r.stderr
    assert archives(folder) == []


def test_handin_rejects_an_unchanged_skeleton_file(tmp_path):
    folder = student_folder(tmp_path)
    shutil.copy(LAB / "skeleton" / "copytrace.c", folder / "copytrace.c")
    r = handin(folder, handin_env(tmp_path))
    assert r.returncode == 2
    assert "copytrace.c: unchanged skeleton file" in r.stderr
    assert "sender.c" not in r.stderr
    assert archives(folder) == []


def test_handin_spec_from_elsewhere(tmp_path):
    folder = student_folder(tmp_path)
    spec = folder / "lab.toml"
    spec = spec.rename(tmp_path / "lab.toml")
    assert handin(folder, handin_env(tmp_path)).returncode == 2  # no lab.toml, no --spec
    r = handin(folder, handin_env(tmp_path), "--spec", str(spec))
    assert r.returncode == 0, r.stderr


class _Receiver(http.server.BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 201
    redirect: tuple[int, str] | None = None  # (status, Location) answered instead of a receipt

    def do_GET(self):  # noqa: N802 (http.server API): where a followed 301/302/303 would go
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
        self.send_response(404)
        self.end_headers()

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.redirect:
            self.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
            self.send_response(self.redirect[0])
            self.send_header("Location", self.redirect[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        parts = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
        archive = parts["archive"].get_payload(decode=True)
        self.requests.append(
            {
                "path": self.path,
                "auth": self.headers.get("Authorization"),
                "filename": parts["archive"].get_filename(),
                "archive": archive,
            }
        )
        if self.status == 201:
            reply = {"id": "sub-0001", "sha256": hashlib.sha256(archive).hexdigest()}
        else:
            reply = {"error": "token not valid"}
        data = json.dumps(reply).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve_receiver(host: str = "127.0.0.1"):
    """A _Receiver subclass of its own (its own request list) served on ``host``; (url, class,
    server)."""
    handler = type("Receiver", (_Receiver,), {"requests": [], "status": 201, "redirect": None})
    server = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_address[1]}", handler, server


@pytest.fixture
def grader_server():
    url, handler, server = serve_receiver()
    try:
        yield url, handler
    finally:
        server.shutdown()
        server.server_close()


def test_handin_uploads_with_bearer_token(tmp_path, grader_server):
    url, receiver = grader_server
    folder = student_folder(tmp_path)
    env = handin_env(tmp_path, COPYLAB_GRADER_URL=url + "/", COPYLAB_TOKEN="s3cret-token")
    r = handin(folder, env)
    assert r.returncode == 0, r.stdout + r.stderr
    [req] = receiver.requests
    assert req["path"] == "/api/v1/labs/lab1/submissions"
    assert req["auth"] == "Bearer s3cret-token"
    [archive] = archives(folder)
    assert req["filename"] == archive.name
    assert req["archive"] == archive.read_bytes()
    assert "receipt id sub-0001" in r.stdout
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in r.stdout
    assert "s3cret-token" not in r.stdout + r.stderr


def test_handin_upload_config_file(tmp_path, grader_server):
    url, receiver = grader_server
    folder = student_folder(tmp_path)
    conf = tmp_path / "home" / ".config" / "copylab" / "handin.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"[handin]\nurl = {url}\ntoken = from-file\n")
    r = handin(folder, handin_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert [q["auth"] for q in receiver.requests] == ["Bearer from-file"]


def test_handin_upload_errors_keep_the_archive(tmp_path, grader_server):
    url, receiver = grader_server
    receiver.status = 401
    folder = student_folder(tmp_path)
    r = handin(folder, handin_env(tmp_path, COPYLAB_GRADER_URL=url, COPYLAB_TOKEN="wrong"))
    assert r.returncode == 3
    assert "HTTP 401" in r.stderr and "token not valid" in r.stderr
    [archive] = archives(folder)
    assert str(archive) in r.stderr

    closed = free_tcp_port()
    r = handin(
        folder,
        handin_env(tmp_path, COPYLAB_GRADER_URL=f"http://127.0.0.1:{closed}", COPYLAB_TOKEN="t"),
    )
    assert r.returncode == 3 and "upload to" in r.stderr and "failed" in r.stderr
    assert len(archives(folder)) == 2


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url", ["http://grader.example.org", "http://10.0.0.5:8000/", "http://[fe80::1]/", "ftp://127.0.0.1/"]
)
def test_handin_refuses_plain_http_to_another_machine(tmp_path, url):
    """The token never leaves over plain http:// (nothing is sent, nothing written: exit 2)."""
    folder = student_folder(tmp_path)
    r = handin(folder, handin_env(tmp_path, COPYLAB_GRADER_URL=url, COPYLAB_TOKEN="s3cret-token"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("plain http:// to another machine" in r.stderr) or ("not an http(s) URL" in r.stderr)
    assert "s3cret-token" not in r.stdout + r.stderr and archives(folder) == []


def test_handin_url_rule():
    handin_mod = _load("handin_mod", TOOLS / "handin.py")
    for ok in ("https://grader.example.org", "https://10.0.0.5:8443/x", "http://localhost:8000",
               "http://LOCALHOST", "http://127.0.0.1:1", "http://127.8.9.10", "http://[::1]:8000/"):
        assert handin_mod.url_problem(ok) is None, ok
    for bad in ("http://grader.example.org", "http://localhost.example.org", "http://128.0.0.1",
                "http://[::2]/", "https://", "file:///etc/passwd"):
        assert handin_mod.url_problem(bad), bad


def test_handin_over_localhost(tmp_path, grader_server):
    url, receiver = grader_server
    folder = student_folder(tmp_path)
    url = url.replace("127.0.0.1", "localhost")
    r = handin(folder, handin_env(tmp_path, COPYLAB_GRADER_URL=url, COPYLAB_TOKEN="tok-local"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [q["auth"] for q in receiver.requests] == ["Bearer tok-local"]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("where", ["other host", "same host"])
def test_handin_never_follows_a_redirect(tmp_path, grader_server, code, where):
    """A grader (or anything in its place) answering with a redirect does not get the token sent on:
    not to another host (127.0.0.2, a real second server), not even back to itself."""
    url, receiver = grader_server
    other_url, other, other_server = serve_receiver("127.0.0.2")
    try:
        target = (other_url if where == "other host" else url) + "/api/v1/labs/lab1/submissions"
        receiver.redirect = (code, target)
        folder = student_folder(tmp_path)
        r = handin(folder, handin_env(tmp_path, COPYLAB_GRADER_URL=url, COPYLAB_TOKEN="s3cret-token"))
    finally:
        other_server.shutdown()
        other_server.server_close()
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"HTTP {code} redirecting to {target}" in r.stderr and "does not follow" in r.stderr
    assert [q["auth"] for q in receiver.requests] == ["Bearer s3cret-token"]   # the first request only
    assert other.requests == []
    assert len(archives(folder)) == 1
