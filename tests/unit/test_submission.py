"""The grade CLI's submissions (grader/submission.py materialize): the hostile archives the service
refuses (tests/service/test_uploads.py ARCHIVES) are refused here too, with the service's reason,
and a folder gives only the lab's files, checked the same way."""
from __future__ import annotations

import pytest

from grader.engine.labspec import load_lab
from grader.service.config import Defaults
from grader.service.uploads import UploadPart, validate_upload
from grader.submission import Limits, SubmissionRejected, materialize
from tests.service.test_uploads import ARCHIVES, GOOD, good_members, reg, tar_of

LAB = load_lab("lab1")
# the service's limits at its defaults (grader/service/submit.py limits_for)
LIMITS = Limits(file_bytes=LAB.max_file_bytes, archive_bytes=Defaults.UPLOAD_MAX_ARCHIVE_BYTES,
                members=Defaults.UPLOAD_MAX_MEMBERS, unpacked_bytes=Defaults.UPLOAD_MAX_UNPACKED_BYTES)


def service_reason(data: bytes) -> str:
    with pytest.raises(SubmissionRejected) as e:
        validate_upload([UploadPart("archive", "handin.tar.gz", data)], LAB.files, LIMITS, LAB.optional_files)
    return str(e.value)


def test_the_cli_takes_the_service_defaults():
    assert Limits(LAB.max_file_bytes) == LIMITS


@pytest.mark.parametrize("case", list(ARCHIVES))
def test_hostile_archive_refused_with_the_services_reason(case, tmp_path):
    data, expect = ARCHIVES[case]
    archive = tmp_path / "handin.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(SubmissionRejected) as e:
        materialize(archive, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes), LAB.optional_files)
    assert expect in str(e.value)
    assert str(e.value) == service_reason(data)
    assert not (tmp_path / "out").exists()


def test_foreign_member_is_refused_not_skipped(tmp_path):
    archive = tmp_path / "s.tar"
    archive.write_bytes(tar_of(good_members() + [reg("notes.txt", b"hello\n")], gz=False))
    with pytest.raises(SubmissionRejected, match="'notes.txt' is not one of this lab's files"):
        materialize(archive, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))


def test_a_well_formed_archive_gives_the_labs_files(tmp_path):
    archive = tmp_path / "s.tar.gz"
    archive.write_bytes(tar_of(good_members()))
    out = materialize(archive, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == GOOD


def folder(tmp_path, **replace):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in dict(GOOD, **replace).items():
        (src / name).write_bytes(data)
    return src


def test_a_folder_gives_only_the_labs_files(tmp_path):
    src = folder(tmp_path)
    (src / "sender.o").write_bytes(b"\x7fELF" + bytes(100))   # build output beside the sources
    out = materialize(src, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes), LAB.optional_files)
    assert sorted(p.name for p in out.iterdir()) == sorted(GOOD)


@pytest.mark.parametrize("replace, reason", [
    ({"sender.c": b""}, "sender.c is empty"),
    ({"sender.c": bytes(range(256))}, "sender.c is not a text file (it contains NUL bytes)"),
    ({"sender.c": "/* caf\xe9 */\n".encode("latin-1")}, "sender.c is not UTF-8 text"),
    ({"sender.c": b"/*" + b"x" * 70000 + b"*/"}, "sender.c is larger than 65536 bytes"),
])
def test_a_folders_files_are_checked_as_the_service_checks_them(replace, reason, tmp_path):
    src = folder(tmp_path, **replace)
    with pytest.raises(SubmissionRejected) as e:
        materialize(src, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))
    assert str(e.value).startswith(reason)
    files = [UploadPart(n, n, (src / n).read_bytes()) for n in GOOD]
    with pytest.raises(SubmissionRejected) as service:
        validate_upload(files, LAB.files, LIMITS)
    assert str(service.value) == str(e.value)


def test_a_folder_refuses_a_link_and_names_what_is_missing(tmp_path):
    src = folder(tmp_path)
    (src / "copytrace.c").unlink()
    with pytest.raises(SubmissionRejected, match=r"the upload lacks copytrace.c \(expected sender.c, receiver.c"):
        materialize(src, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))
    (src / "copytrace.c").symlink_to("/etc/passwd")
    with pytest.raises(SubmissionRejected, match="copytrace.c in .* is not a regular file"):
        materialize(src, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))


def test_neither_folder_nor_archive(tmp_path):
    with pytest.raises(SubmissionRejected, match="does not exist"):
        materialize(tmp_path / "nothing", LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))
    p = tmp_path / "s.txt"
    p.write_text("just text\n")
    with pytest.raises(SubmissionRejected, match="not a .tar, .tar.gz or .zip file"):
        materialize(p, LAB.files, tmp_path / "out", Limits(LAB.max_file_bytes))
