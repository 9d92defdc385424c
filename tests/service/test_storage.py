"""What the store keeps per student: the default cooldown and quota, the storage budget, no bytes past
an archive's end; and the instance folder, database, queue, store and artifacts private to the
service's account."""
from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from faults.storage import open_to_others, tar_of, trailing_cases, zip_of
from support.service import lab_files
from tests.service.helpers import upload_data
from tests.service.test_uploads import api  # noqa: F401 - the fixture: alice's API upload

GOOD = lab_files()
TRAILING = trailing_cases(GOOD)   # the fault suite's cases (faults/storage.py)
EXPECT = {  # what each refusal names
    "tar + junk": "not the end-of-archive zeros", "tar padded with zeros to 1 MiB": "zero bytes after its last",
    "tar + a second tar": "not the end-of-archive zeros", "tar.gz + junk": "after the end of its gzip stream",
    "tar.gz + zeros": "after the end of its gzip stream",
    "tar.gz + a gzip member of junk": "not the end-of-archive zeros", "zip + junk": "after its end record",
    "junk + zip": "before member", "zip + 60 KB comment": "a comment of 60000 bytes",
    "zip with junk between members": "before member", "two zips": "before member",
}


def send(api, data: bytes):
    return api({"archive": (io.BytesIO(data), "handin.tar.gz")})


def stored(app) -> list[Path]:
    root = Path(app.config["STORE_DIR"])
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_every_trailing_case_has_its_expectation():
    assert set(EXPECT) == set(TRAILING)


@pytest.mark.parametrize("case", list(TRAILING))
def test_data_past_an_archives_end_is_refused(app, api, case):
    r = send(api, TRAILING[case])
    assert r.status_code == 422, (case, r.status_code, r.data[:300])
    assert EXPECT[case] in r.get_json()["error"] and "not kept" in r.get_json()["error"], r.get_json()
    assert stored(app) == []


@pytest.mark.parametrize("make", [lambda: tar_of(GOOD, False), lambda: tar_of(GOOD, True), lambda: zip_of(GOOD),
                                  lambda: zip_of(GOOD, b"made by a tool that signs its archives")])
def test_archives_as_tools_make_them_are_kept_byte_for_byte(app, api, make):
    data = make()
    r = send(api, data)
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
    assert api(upload_data(GOOD)).status_code == 201
    r = api(upload_data(GOOD))
    assert r.status_code == 429 and f"cooldown {Defaults.SUBMIT_COOLDOWN_SECONDS} s" in r.get_json()["error"]
    assert 0 < int(r.headers["Retry-After"]) <= Defaults.SUBMIT_COOLDOWN_SECONDS
    # the count quota from the config, and an assignment's own value over it
    app.config.update(SUBMIT_COOLDOWN_SECONDS=0, SUBMIT_MAX_PER_ASSIGNMENT=2)
    assert api(upload_data(GOOD)).status_code == 201
    r = api(upload_data(GOOD))
    assert r.status_code == 429 and "all 2 submissions" in r.get_json()["error"]
    with app.app_context():
        db.session.get(Assignment, app.ids["assignment"]).max_submissions = 3
        db.session.commit()
    assert api(upload_data(GOOD)).status_code == 201 and api(upload_data(GOOD)).status_code == 429


def test_storage_budget(app, api):
    """The bytes the store keeps for a student, all submissions together, stay within the budget; the
    refusal names the budget and what is used; nothing of the refused upload is kept."""
    one = tar_of(GOOD, False)
    per_submission = len(one) + sum(len(d) for d in GOOD.values())
    app.config["STORAGE_BUDGET_BYTES"] = 3 * per_submission + 100
    for _ in range(3):
        assert send(api, one).status_code == 201
    before = stored(app)
    r = send(api, one)
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


def test_instance_files_are_private(tmp_path, monkeypatch):
    """Under the usual umask 022, an instance folder made world-readable beforehand, with a config.py
    open to all: everything the app creates or keeps there is the service account's alone, the
    database's WAL files and later store writes and artifacts included."""
    from grader import create_app
    from grader.service.models import ApiToken, db
    from grader.service.store import Store
    from support.service import seed

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
        r = c.post("/api/v1/labs/lab1/submissions", data={"archive": (io.BytesIO(tar_of(GOOD, True)), "a.tgz")},
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
        assert open_to_others(inst)[0] == []
        assert stat.S_IMODE(inst.stat().st_mode) == 0o700
        assert (Path(app.config["STORE_DIR"]) / key / "kmsg.txt").read_text() == "copytrace: [COPY1]\n"
        with app.app_context():
            db.engine.dispose()
    finally:
        os.umask(old)


def test_generated_config_is_private(tmp_path):
    """The config.py the harness (fault suite, VM tests) writes holds a secret key: 0600 in a 0700
    folder. `make demo` writes its config.py through the same helper (grader/service/private.py)."""
    from support.service import ServiceProcesses

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


def parallel_uploads(app, n: int = 8) -> list[int]:
    """The statuses of ``n`` uploads by alice at the same moment, on ``n`` threads (as waitress runs
    them), at the default cooldown."""
    import threading

    from grader.service.config import Defaults
    from grader.service.models import ApiToken, db

    app.config["SUBMIT_COOLDOWN_SECONDS"] = Defaults.SUBMIT_COOLDOWN_SECONDS
    with app.app_context():
        db.session.add(ApiToken(user_id=app.ids["alice"], name="t", token_hash=ApiToken.hash("cl_par"),
                                prefix="cl_par"))
        db.session.commit()
    start, statuses = threading.Barrier(n), []

    def one():
        c = app.test_client()
        start.wait()
        r = c.post("/api/v1/labs/lab1/submissions", data=upload_data(GOOD), content_type="multipart/form-data",
                   headers={"Authorization": "Bearer cl_par"})
        statuses.append(r.status_code)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return sorted(statuses)


def test_parallel_uploads_do_not_pass_the_cooldown_together(app):
    """The checks and the insert happen one student at a time (grader/service/submit.py
    hold_student), so the cooldown lets exactly one of 8 simultaneous uploads through (on SQLite;
    PostgreSQL in test_backends.py)."""
    assert parallel_uploads(app) == [201] + [429] * 7
    assert len([p for p in stored(app) if p.name == "sender.c"]) == 1


TOOLS = {  # archives as students make them: each must be accepted and kept byte for byte
    "GNU tar": ["tar", "cf", "{out}", "{files}"],
    "GNU tar, gzip": ["tar", "czf", "{out}", "{files}"],
    "GNU tar, folder": ["tar", "czf", "{out}", "{folder}"],
    "bsdtar, gzip": ["bsdtar", "-czf", "{out}", "{files}"],
    "bsdtar, zip": ["bsdtar", "--format", "zip", "-cf", "{out}", "{files}"],
    "Info-ZIP": ["zip", "-q", "{out}", "{files}"],
    "Info-ZIP, folder": ["zip", "-q", "-r", "{out}", "{folder}"],
    "Info-ZIP to a pipe (data descriptors)": ["sh", "-c", "zip -q - {files} > {out}"],
}


@pytest.mark.parametrize("tool", list(TOOLS))
def test_archives_made_by_students_tools_are_accepted(app, api, tool, tmp_path):
    import subprocess

    folder = tmp_path / "lab1"
    folder.mkdir()
    for n, d in GOOD.items():
        (folder / n).write_bytes(d)
    out = tmp_path / "handin.archive"
    cmd = []
    for arg in TOOLS[tool]:
        arg = arg.replace("{out}", str(out)).replace("{folder}", folder.name)
        cmd += list(GOOD) if arg == "{files}" else [arg.replace("{files}", " ".join(GOOD))]
    subprocess.run(cmd, cwd=tmp_path if "{folder}" in TOOLS[tool] else folder, check=True, timeout=60)
    data = out.read_bytes()
    r = send(api, data)
    assert r.status_code == 201, (tool, r.get_json())
    assert r.get_json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_handin_archive_is_accepted(app, api, tmp_path):
    """The archive labs/tools/handin.py builds (what `make handin` sends)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("handin_tool", Path(__file__).resolve().parents[2] / "labs" /
                                                  "tools" / "handin.py")
    handin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handin)
    data = handin.build_archive(GOOD, 1_700_000_000)
    assert send(api, data).status_code == 201
