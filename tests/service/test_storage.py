"""The instance folder, database, queue, store and artifacts private to the service's account."""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

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
