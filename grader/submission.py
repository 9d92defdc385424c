"""Turn an untrusted submission (a folder or an archive) into a folder holding exactly the lab's files.

Only regular files whose base name is one of the lab's submission files are taken; links, devices,
paths that escape, duplicates and oversized members are refused with a message naming the member.
"""
from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from grader.errors import GraderError


class SubmissionError(GraderError):
    """The submission cannot be graded as it is (the message says why)."""


def _safe_name(name: str, allowed: set[str]) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise SubmissionError(f"archive member {name!r} has a path that escapes the submission")
    return p.name if p.name in allowed else None


def materialize(source: Path, files: list[str], dest: Path, max_bytes: int,
                optional: list[str] = ()) -> Path:
    """Copy the lab's files (and those of ``optional`` that are there) from a folder, .tar(.gz)
    or .zip into dest; returns dest."""
    source = Path(source)
    allowed = set(files) | set(optional)
    dest.mkdir(parents=True, exist_ok=True)
    found: dict[str, bytes] = {}
    if source.is_dir():
        for name in [*files, *optional]:
            p = source / name
            if p.is_symlink() or (p.exists() and not p.is_file()):
                raise SubmissionError(f"{name} in {source} is not a regular file")
            if p.is_file():
                if p.stat().st_size > max_bytes:
                    raise SubmissionError(f"{name} is {p.stat().st_size} bytes; the limit is {max_bytes}")
                found[name] = p.read_bytes()
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            for m in tar.getmembers():
                name = _safe_name(m.name, allowed)
                if name is None:
                    continue
                if not m.isreg():
                    raise SubmissionError(f"archive member {m.name!r} is not a regular file")
                if m.size > max_bytes:
                    raise SubmissionError(f"{m.name} is {m.size} bytes; the limit is {max_bytes}")
                if name in found:
                    raise SubmissionError(f"the archive holds {name} twice")
                found[name] = tar.extractfile(m).read(max_bytes + 1)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            for info in z.infolist():
                name = _safe_name(info.filename, allowed)
                if name is None or info.is_dir():
                    continue
                if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):
                    raise SubmissionError(f"archive member {info.filename!r} is not a regular file")
                if info.file_size > max_bytes:
                    raise SubmissionError(f"{info.filename} is {info.file_size} bytes; the limit is {max_bytes}")
                if name in found:
                    raise SubmissionError(f"the archive holds {name} twice")
                with z.open(info) as f:
                    found[name] = f.read(max_bytes + 1)
    elif not source.exists():
        raise SubmissionError(f"{source} does not exist")
    else:
        raise SubmissionError(f"{source} is neither a folder nor a .tar.gz/.zip archive")
    missing = [n for n in files if n not in found]
    if missing:
        raise SubmissionError(f"the submission lacks {', '.join(missing)} (expected {', '.join(files)})")
    for name, data in found.items():
        if len(data) > max_bytes:
            raise SubmissionError(f"{name} is larger than {max_bytes} bytes")
        (dest / name).write_bytes(data)
    return dest


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
