"""Hostile uploads: each refused with a clear message, nothing stored, nothing written outside the
store, never a server error."""
from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from support.service import lab_files

GOOD = lab_files()


def tar_of(members, gz=True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as t:
        for m in members:
            t.addfile(m[0], io.BytesIO(m[1]) if len(m) > 1 else None)
    return buf.getvalue()


def reg(name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return (ti, data)


def special(name, kind, target=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return (ti,)


def zip_of(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            zi = zipfile.ZipInfo(name)
            zi.external_attr = mode << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return buf.getvalue()


def good_members(**replace):
    files = dict(GOOD, **replace)
    return [reg(n, d) for n, d in files.items()]


BOMB = b"\0" * (64 * 1024 * 1024)

ARCHIVES = {
    "traversal": (tar_of(good_members() + [reg("../../evil.c", b"x")]), "escapes"),
    "absolute": (tar_of([reg("/etc/sender.c", GOOD["sender.c"])] + good_members()[1:]), "escapes"),
    "symlink": (tar_of([special("sender.c", tarfile.SYMTYPE, "/etc/passwd")] + good_members()[1:]),
                "not a regular file"),
    "hardlink": (tar_of([special("sender.c", tarfile.LNKTYPE, "receiver.c")] + good_members()[1:]),
                 "not a regular file"),
    "device": (tar_of([special("sender.c", tarfile.CHRTYPE)] + good_members()[1:]), "not a regular file"),
    "fifo": (tar_of([special("sender.c", tarfile.FIFOTYPE)] + good_members()[1:]), "not a regular file"),
    "wrong name": (tar_of(good_members() + [reg("Makefile", b"all:\n")]), "not one of this lab's files"),
    "duplicate": (tar_of(good_members() + [reg("dir/sender.c", GOOD["sender.c"])]), "twice"),
    "missing file": (tar_of(good_members()[:2]), "lacks copytrace.c"),
    "oversize member": (tar_of(good_members(**{"sender.c": b"/*" + b"x" * 70000 + b"*/"})), "larger than"),
    "binary junk member": (tar_of(good_members(**{"sender.c": bytes(range(256)) * 4})), "not a text file"),
    "latin-1 text": (tar_of(good_members(**{"sender.c": "/* caf\xe9 */\n".encode("latin-1")})), "not UTF-8"),
    "empty member": (tar_of(good_members(**{"sender.c": b""})), "is empty"),
    "gzip bomb": (tar_of([reg("sender.c", BOMB)]), "larger than"),
    "zip bomb": (zip_of([("sender.c", BOMB, 0o100644)]), "larger than"),
    "zip symlink": (zip_of([("sender.c", b"/etc/passwd", 0o120777)] +
                           [(n, d, 0o100644) for n, d in list(GOOD.items())[1:]]), "not a regular file"),
    "zip traversal": (zip_of([("../sender.c", GOOD["sender.c"], 0o100644)]), "escapes"),
    "many members": (tar_of([special(f"d{i}", tarfile.DIRTYPE) for i in range(100)]), "more than"),
    "nested archive": (tar_of([reg("inner.tar.gz", tar_of(good_members()))]), "not one of this lab's files"),
    "not an archive": (b"\x7fELF" + bytes(1000), "not a .tar, .tar.gz or .zip"),
    "truncated gzip": (tar_of(good_members())[:200], "damaged"),
    "empty archive": (b"", "empty"),
}


@pytest.fixture
def api(app):
    from grader.service.models import ApiToken, db

    with app.app_context():
        db.session.add(ApiToken(user_id=app.ids["alice"], name="t", token_hash=ApiToken.hash("cl_alice_t"),
                                prefix="cl_alice"))
        db.session.commit()
    c = app.test_client()

    def post(data, **kw):
        return c.post("/api/v1/labs/lab1/submissions", data=data, headers={"Authorization": "Bearer cl_alice_t"},
                      content_type="multipart/form-data", **kw)
    return post


def store_files(app) -> list[Path]:
    root = Path(app.config["STORE_DIR"])
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def submissions(app) -> int:
    from grader.service.models import Submission, db

    with app.app_context():
        return db.session.execute(db.select(db.func.count(Submission.id))).scalar_one()


@pytest.mark.parametrize("case", list(ARCHIVES))
def test_hostile_archive_refused(app, api, case, tmp_path):
    data, expect = ARCHIVES[case]
    before = set(p for p in tmp_path.parent.rglob("*evil*"))
    r = api({"archive": (io.BytesIO(data), "handin.tar.gz")})
    assert r.status_code in (413, 422), (case, r.status_code, r.data[:300])
    assert expect in r.get_json()["error"], (case, r.get_json())
    assert submissions(app) == 0 and store_files(app) == []
    assert set(p for p in tmp_path.parent.rglob("*evil*")) == before
    # the grade CLI refuses the same archive with the same reason (grader/submission.py)
    from grader.engine.labspec import load_lab
    from grader.submission import Limits, SubmissionRejected, materialize

    lab = load_lab("lab1")
    (tmp_path / "handin.tar.gz").write_bytes(data)
    with pytest.raises(SubmissionRejected) as cli:
        materialize(tmp_path / "handin.tar.gz", lab.files, tmp_path / "cli", Limits(lab.max_file_bytes),
                    lab.optional_files)
    assert str(cli.value) == r.get_json()["error"]


FORMS = {
    "unknown field": (lambda: {"evil.sh": (io.BytesIO(b"x"), "evil.sh")}, "unexpected upload field"),
    "traversal file name": (lambda: dict({k: (io.BytesIO(v), k) for k, v in GOOD.items()},
                                         **{"sender.c": (io.BytesIO(GOOD["sender.c"]), "../../sender.c")}), None),
    "renamed file": (lambda: dict({k: (io.BytesIO(v), k) for k, v in GOOD.items()},
                                  **{"sender.c": (io.BytesIO(GOOD["sender.c"]), "main.c")}), "upload a file named"),
    "text instead of file": (lambda: {"sender.c": "int main(){}"}, "must be a file upload"),
    "archive as text": (lambda: {"archive": "not a file"}, "must be a file upload"),
    "archive and files": (lambda: dict({k: (io.BytesIO(v), k) for k, v in GOOD.items()},
                                       archive=(io.BytesIO(tar_of(good_members())), "a.tgz")), "not both"),
    "nothing": (lambda: {}, "no files were uploaded"),
    "one file missing": (lambda: {k: (io.BytesIO(v), k) for k, v in list(GOOD.items())[:2]}, "lacks"),
    "binary file": (lambda: dict({k: (io.BytesIO(v), k) for k, v in GOOD.items()},
                                 **{"copytrace.c": (io.BytesIO(b"\x00\x01\x02" * 100), "copytrace.c")}),
                    "not a text file"),
}


@pytest.mark.parametrize("case", list(FORMS))
def test_hostile_form_refused(app, api, case):
    make, expect = FORMS[case]
    r = api(make())
    if expect is None:  # a path in the client's file name is reduced to its base name and accepted
        assert r.status_code == 201, r.get_json()
        return
    assert r.status_code == 422, (case, r.status_code, r.data[:300])
    assert expect in r.get_json()["error"], (case, r.get_json())
    assert submissions(app) == 0 and store_files(app) == []


def test_request_too_large_is_413(app, api):
    r = api({"archive": (io.BytesIO(b"\0" * (3 * 1024 * 1024)), "big.tar")})
    assert r.status_code == 413 and "larger than" in r.get_json()["error"]


def test_good_archive_accepted_with_receipt(app, api):
    for data in (tar_of(good_members()), tar_of(good_members(), gz=False),
                 zip_of([(f"lab1/{n}", d, 0o100644) for n, d in GOOD.items()])):
        r = api({"archive": (io.BytesIO(data), "whatever.bin")})
        assert r.status_code == 201, r.get_json()
        body = r.get_json()
        from grader.engine.run import submission_digest

        import hashlib

        assert body["content_sha256"] == submission_digest(GOOD)[0]
        assert body["sha256"] == hashlib.sha256(data).hexdigest()   # names the bytes sent
        assert body["status"] == "queued"
    files = store_files(app)
    assert len(files) == 12 and all(p.stat().st_mode & 0o777 != 0o777 for p in files)


def test_web_form_rejection_is_shown(app, browser):
    alice = browser("alice")
    aid = app.ids["assignment"]
    r = alice.post(f"/assignments/{aid}/submit", data={"archive": (io.BytesIO(ARCHIVES["symlink"][0]), "x.tgz")},
                   content_type="multipart/form-data", follow_redirects=True)
    assert r.status_code == 200 and b"Not accepted: archive member" in r.data
