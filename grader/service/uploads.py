"""The service's side of an upload: the form's file fields (one archive, or one field per lab file)
turned into the lab's files. The rules themselves (names, archives, sizes, text) are grader/submission.py's,
shared with the grade CLI; nothing is written to disk here: the result is a dict name -> bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from grader.submission import Limits, SubmissionRejected, checked_files, printable, unpack_archive


@dataclass
class UploadPart:
    field: str                # form field name
    filename: str             # the client's file name (untrusted, only used in messages and checks)
    data: bytes


def validate_upload(parts: list[UploadPart], lab_files: list[str], limits: Limits,
                    optional_files: list[str] = ()) -> dict[str, bytes]:
    """The lab's files from an upload (one archive field, or one field per file), with those of
    ``optional_files`` that were sent (checked like the others when present)."""
    allowed = set(lab_files) | set(optional_files)
    expected = ", ".join(lab_files)
    if not parts:
        raise SubmissionRejected(f"no files were uploaded: send {expected}, or one archive holding them")
    archives = [p for p in parts if p.field == "archive"]
    if archives:
        if len(parts) != 1:
            raise SubmissionRejected("send either one archive or the separate files, not both")
        found = unpack_archive(archives[0].data, allowed, limits)
    else:
        found = {}
        for p in parts:
            if p.field not in allowed:
                extra = f" and optionally {', '.join(optional_files)}" if optional_files else ""
                raise SubmissionRejected(f"unexpected upload field {printable(p.field)}: this lab takes "
                                         f"{expected}{extra} (or one archive)")
            base = PurePosixPath((p.filename or "").replace("\\", "/")).name
            if p.filename and base != p.field:
                raise SubmissionRejected(f"the file for {p.field} is named {printable(p.filename)}; "
                                         f"upload a file named {p.field}")
            if p.field in found:
                raise SubmissionRejected(f"{p.field} was uploaded twice")
            found[p.field] = p.data
    return checked_files(found, lab_files, limits, optional_files)
