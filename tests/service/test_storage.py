"""What the store keeps per student: the default cooldown and quota, the storage budget, no bytes past
an archive's end; and the instance folder, database, queue, store and artifacts private to the
service's account."""
from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.service.helpers import solution_files

GOOD = solution_files()


def tar_bytes(gz: bool, files: dict[str, bytes] = GOOD) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for n, d in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            t.addfile(ti, io.BytesIO(d))
    return buf.getvalue()


def zip_bytes(comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in GOOD.items():
            z.writestr(n, d)
        z.comment = comment
    return buf.getvalue()


def zip_with_gap() -> bytes:
    """A zip whose second member starts 5000 bytes after the first ends (offsets all consistent)."""
    members, central, out = list(GOOD.items()), bytearray(), bytearray()
    for k, (name, data) in enumerate(members):
        if k == 1:
            out += b"G" * 5000
        offset = len(out)
        crc = __import__("zlib").crc32(data)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, len(data), len(data),
                           len(name), 0) + name.encode() + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, 20, 0, 0, 0, 0x21, crc, len(data),
                               len(data), len(name), 0, 0, 0, 0, 0o100644 << 16, offset) + name.encode()
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + eocd)


TRAILING = {
    "tar + text": (tar_bytes(False) + b"A" * 100, "after its last member"),
    "tar padded to 1 MiB with zeros": (tar_bytes(False).ljust(1024 * 1024, b"\0"), "after its last member"),
    "tar + a second tar": (tar_bytes(False) + tar_bytes(False), "after its last member"),
    "tar.gz + garbage": (tar_bytes(True) + os.urandom(3000), "after the end of its gzip stream"),
    "tar.gz + zeros": (tar_bytes(True) + bytes(4096), "after the end of its gzip stream"),
    "tar.gz + a gzip member of padding": (tar_bytes(True) + gzip.compress(os.urandom(50_000)),
                                          "after its last member"),
    "zip + garbage": (zip_bytes() + b"X" * 4000, "after its end record"),
    "garbage + zip": (b"PK\x03\x04" + b"X" * 4000 + zip_bytes(), "before member"),
    "zip with a gap between members": (zip_with_gap(), "before member"),
    "zip with a 60 KB comment": (zip_bytes(b"c" * 60000), "a comment of 60000 bytes"),
}


@pytest.fixture
def api(app):
    from grader.service.models import ApiToken, db

    with app.app_context():
        db.session.add(ApiToken(user_id=app.ids["alice"], name="t", token_hash=ApiToken.hash("cl_alice_s"),
                                prefix="cl_alice"))
        db.session.commit()
    c = app.test_client()

    def post(data: bytes | None = None, files: dict[str, bytes] | None = None):
        form = {"archive": (io.BytesIO(data), "handin.tar.gz")} if data is not None else \
            {n: (io.BytesIO(d), n) for n, d in (files or GOOD).items()}
        return c.post("/api/v1/labs/lab1/submissions", data=form, content_type="multipart/form-data",
                      headers={"Authorization": "Bearer cl_alice_s"})
    return post


def stored(app) -> list[Path]:
    root = Path(app.config["STORE_DIR"])
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", list(TRAILING))
def test_data_past_an_archives_end_is_refused(app, api, case):
    data, expect = TRAILING[case]
    r = api(data)
    assert r.status_code == 422, (case, r.status_code, r.data[:300])
    assert expect in r.get_json()["error"] and "not kept" in r.get_json()["error"], r.get_json()
    assert stored(app) == []


@pytest.mark.parametrize("make", [lambda: tar_bytes(False), lambda: tar_bytes(True), lambda: zip_bytes(),
                                  lambda: zip_bytes(b"made by a tool that signs its archives")])
def test_archives_as_tools_make_them_are_kept_byte_for_byte(app, api, make):
    import hashlib

    data = make()
    r = api(data)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["sha256"] == hashlib.sha256(data).hexdigest()
    upload = [p for p in stored(app) if p.name == ".upload"]
    assert [p.read_bytes() for p in upload] == [data]


def test_default_cooldown_and_quota(app, api):
    """Without settings of its own, an assignment has the service's cooldown and quota."""
    from grader.service.config import Defaults
    from grader.service.models import Assignment, db
    from grader.service.policy import submit_limits

    assert Defaults.SUBMIT_COOLDOWN_SECONDS > 0 and Defaults.SUBMIT_MAX_PER_ASSIGNMENT > 0
    assert Defaults.STORAGE_BUDGET_BYTES > 0
    app.config["SUBMIT_COOLDOWN_SECONDS"] = Defaults.SUBMIT_COOLDOWN_SECONDS
    with app.app_context():
        a = db.session.get(Assignment, app.ids["assignment"])
        assert (a.max_submissions, a.cooldown_seconds) == (0, 0)
        lim = submit_limits(a)
    assert (lim.max_submissions, lim.cooldown_seconds, lim.storage_bytes) == (
        Defaults.SUBMIT_MAX_PER_ASSIGNMENT, Defaults.SUBMIT_COOLDOWN_SECONDS, Defaults.STORAGE_BUDGET_BYTES)
    assert api().status_code == 201
    r = api()
    assert r.status_code == 429 and f"cooldown {Defaults.SUBMIT_COOLDOWN_SECONDS} s" in r.get_json()["error"]
    assert 0 < int(r.headers["Retry-After"]) <= Defaults.SUBMIT_COOLDOWN_SECONDS
    # the count quota from the config, and an assignment's own value over it
    app.config.update(SUBMIT_COOLDOWN_SECONDS=0, SUBMIT_MAX_PER_ASSIGNMENT=2)
    assert api().status_code == 201
    r = api()
    assert r.status_code == 429 and "all 2 submissions" in r.get_json()["error"]
    with app.app_context():
        db.session.get(Assignment, app.ids["assignment"]).max_submissions = 3
        db.session.commit()
    assert api().status_code == 201 and api().status_code == 429


def test_storage_budget(app, api):
    """The bytes the store keeps for a student, all submissions together, stay within the budget; the
    refusal names the budget and what is used; nothing of the refused upload is kept."""
    one = tar_bytes(False)
    per_submission = len(one) + sum(len(d) for d in GOOD.values())
    app.config["STORAGE_BUDGET_BYTES"] = 3 * per_submission + 100
    for _ in range(3):
        assert api(one).status_code == 201
    before = stored(app)
    r = api(one)
    assert r.status_code == 429, r.get_json()
    msg = r.get_json()["error"]
    used = sum(p.stat().st_size for p in before)
    assert used == 3 * per_submission
    assert f"storage budget of {3 * per_submission + 100} bytes" in msg and f"keep {used} bytes" in msg
    assert stored(app) == before
    # another student's budget is their own
    from grader.service.models import ApiToken, db

    with app.app_context():
        db.session.add(ApiToken(user_id=app.ids["bob"], name="t", token_hash=ApiToken.hash("cl_bob_s"),
                                prefix="cl_bob"))
        db.session.commit()
    r = app.test_client().post("/api/v1/labs/lab1/submissions", data={"archive": (io.BytesIO(one), "a.tar")},
                               content_type="multipart/form-data", headers={"Authorization": "Bearer cl_bob_s"})
    assert r.status_code == 201


def open_to_others(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                out.append(f"{p.relative_to(root)} {st.st_mode & 0o777:o}")
    return out


def test_instance_files_are_private(tmp_path, monkeypatch):
    """Under the usual umask 022, an instance folder made world-readable beforehand, with a config.py
    open to all: everything the app creates or keeps there is the service account's alone, the
    database's WAL files and later store writes and artifacts included."""
    from grader import create_app
    from grader.service.models import ApiToken, db
    from grader.service.store import Store
    from tests.service.helpers import seed

    inst = tmp_path / "instance"
    inst.mkdir(mode=0o755)
    (inst / "config.py").write_text("SECRET_KEY = 'k-0123456789abcdefghijklmnopqrstuvwxyz'\n")
    os.chmod(inst / "config.py", 0o644)
    monkeypatch.setenv("GRADER_INSTANCE_PATH", str(inst))
    old = os.umask(0o022)
    try:
        app = create_app({"SUBMIT_COOLDOWN_SECONDS": 0})
        assert app.config["PRODUCTION"]
        ids = seed(app)
        with app.app_context():
            db.session.add(ApiToken(user_id=ids["alice"], name="t", token_hash=ApiToken.hash("cl_x"), prefix="cl_x"))
            db.session.commit()
        c = app.test_client()
        r = c.post("/api/v1/labs/lab1/submissions", data={"archive": (io.BytesIO(tar_bytes(True)), "a.tgz")},
                   content_type="multipart/form-data", headers={"Authorization": "Bearer cl_x"})
        assert r.status_code == 201, r.get_json()
        src = tmp_path / "run-out"
        (src / "sub").mkdir(parents=True)
        (src / "kmsg.txt").write_text("copytrace: [COPY1]\n")
        (src / "sub" / "sender.out").write_text("sender: sent\n")
        os.chmod(src / "kmsg.txt", 0o666)
        key = Store(app.config["STORE_DIR"]).put_artifacts(1, src)
        names = {p.name for p in inst.rglob("*")}
        assert {"grader.sqlite3", "grader.sqlite3-wal", "queue.sqlite3", ".upload", "kmsg.txt",
                "sender.out"} <= names, names
        assert open_to_others(inst) == []
        assert stat.S_IMODE(inst.stat().st_mode) == 0o700
        assert (Path(app.config["STORE_DIR"]) / key / "kmsg.txt").read_text() == "copytrace: [COPY1]\n"
        with app.app_context():
            db.engine.dispose()
    finally:
        os.umask(old)


def test_generated_config_is_private(tmp_path):
    """The config.py the harness (fault suite, VM tests) writes holds a secret key: 0600 in a 0700
    folder. `make demo` writes its config.py through the same helper (grader/service/private.py)."""
    from grader.service.harness import ServiceProcesses

    old = os.umask(0o022)
    try:
        svc = ServiceProcesses(tmp_path / "a" / "instance", None, progress=lambda m: None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((svc.instance / "config.py").stat().st_mode) == 0o600
    assert stat.S_IMODE(svc.instance.stat().st_mode) == 0o700
    assert stat.S_IMODE(svc.instance.parent.stat().st_mode) == 0o700


def test_assignment_page_shows_the_limits_in_force(app, browser):
    from grader.service.config import Defaults

    app.config["SUBMIT_COOLDOWN_SECONDS"] = Defaults.SUBMIT_COOLDOWN_SECONDS
    page = browser("alice").get(f"/assignments/{app.ids['assignment']}").get_data(as_text=True)
    assert f"Quota: {Defaults.SUBMIT_MAX_PER_ASSIGNMENT} submissions (0 used)" in page
    assert f"Wait {Defaults.SUBMIT_COOLDOWN_SECONDS} s between submissions" in page
