"""Validation of untrusted submissions, before anything is stored or run (stdlib only): the grade CLI
(a folder or an archive file) and the service (grader/service/uploads.py: an archive or one form field
per file; batches.py: a folder of collected submissions) turn what a student sent into the lab's files
here, under the same rules and with the same reasons.

Accepted: exactly the lab's file names, regular files, within the size caps, UTF-8 text without NUL
bytes. Everything else is refused with a message that names the offending file or member. An archive
(tar, tar.gz or zip, recognised by content, not by name) may hold nothing but the lab's files (and
folders), at most ``Limits.members`` members unpacking to at most ``Limits.unpacked_bytes``. A folder
is read for the lab's file names only: a student's working folder also holds build output.

An archive must end where its format says it ends: no bytes after a tar's end-of-archive blocks (past
the padding to a full record), after the last gzip member, or around a zip's records. Such bytes are
refused, not dropped: the service's store keeps the archive exactly as uploaded, because the
receipt's sha256 names those bytes (ARCHITECTURE.md "Receipts"), and refusing keeps that true without
storing data the lab does not need.
"""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from grader.errors import GraderError

# the defaults of the service's UPLOAD_* settings and the CLI's limits
ARCHIVE_BYTES = 1024 * 1024
MEMBERS = 64
UNPACKED_BYTES = 4 * 1024 * 1024


class SubmissionRejected(GraderError):
    """The submission cannot be accepted; str() is the message for the student."""


@dataclass(frozen=True)
class Limits:
    file_bytes: int                         # one lab file (lab.toml [submission] max_file_bytes)
    archive_bytes: int = ARCHIVE_BYTES      # the archive as sent
    members: int = MEMBERS                  # archive members (directories included)
    unpacked_bytes: int = UNPACKED_BYTES    # everything an archive unpacks to


class _Budget(io.RawIOBase):
    """A read-only stream that refuses to deliver more than `limit` bytes (decompression bombs)."""

    def __init__(self, raw, limit: int):
        self.raw, self.left = raw, limit

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b) if hasattr(self.raw, "readinto") else None
        if n is None:
            data = self.raw.read(len(b))
            n = len(data)
            b[:n] = data
        self.left -= n
        if self.left < 0:
            raise SubmissionRejected("the archive unpacks to more than the allowed size")
        return n


def printable(name: str) -> str:
    return repr(name[:80])


def check_text(name: str, data: bytes, limits: Limits) -> None:
    if len(data) == 0:
        raise SubmissionRejected(f"{name} is empty")
    if len(data) > limits.file_bytes:
        raise SubmissionRejected(f"{name} is larger than {limits.file_bytes} bytes")
    if b"\0" in data:
        raise SubmissionRejected(f"{name} is not a text file (it contains NUL bytes)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SubmissionRejected(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                 "save it as UTF-8") from None


def _escapes(p: PurePosixPath) -> bool:
    """An absolute path, a path with .., or a drive (C:) prefix."""
    return p.is_absolute() or ".." in p.parts or bool(p.parts and p.parts[0].endswith(":"))


def _member_name(raw: str, allowed: set[str]) -> str:
    if "\0" in raw or len(raw) > 255:
        raise SubmissionRejected(f"archive member {printable(raw)} has an invalid name")
    p = PurePosixPath(raw.replace("\\", "/"))
    if _escapes(p):
        raise SubmissionRejected(f"archive member {printable(raw)} has a path that escapes the upload")
    if p.name not in allowed:
        raise SubmissionRejected(f"archive member {printable(raw)} is not one of this lab's files "
                                 f"({', '.join(sorted(allowed))})")
    return p.name


def _from_tar(data: bytes, allowed: set[str], limits: Limits) -> dict[str, bytes]:
    raw = io.BytesIO(data)
    compressed = data[:2] == b"\x1f\x8b"
    budget = limits.unpacked_bytes + 64 * 1024
    stream = _Budget(gzip.GzipFile(fileobj=raw) if compressed else raw, budget)
    found: dict[str, bytes] = {}
    count = 0
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
            for m in tar:
                count += 1
                if count > limits.members:
                    raise SubmissionRejected(f"the archive has more than {limits.members} members")
                if m.isdir():
                    _check_dir_name(m.name)
                    continue
                name = _member_name(m.name, allowed)
                if not m.isreg():
                    raise SubmissionRejected(f"archive member {printable(m.name)} is not a regular file "
                                             "(links and devices are refused)")
                if m.size > limits.file_bytes:
                    raise SubmissionRejected(f"{name} is larger than {limits.file_bytes} bytes")
                if name in found:
                    raise SubmissionRejected(f"the archive holds {name} twice")
                f = tar.extractfile(m)
                found[name] = f.read(limits.file_bytes + 1) if f else b""
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        if compressed:   # names bytes after the gzip stream when they are the cause
            _gunzip(data, budget)
        raise SubmissionRejected(f"the archive is damaged or not a tar/zip archive ({type(e).__name__})") from None
    _check_tar_end(_gunzip(data, budget) if compressed else data, end)
    return found


# a tar ends with two zero blocks, padded with zeros to a whole record (tar's blocking factor 20)
TAR_TAIL = 2 * tarfile.BLOCKSIZE + tarfile.RECORDSIZE


def _check_tar_end(tar_bytes: bytes, end: int) -> None:
    """Only the end-of-archive zeros may follow the last member (``end``: where its data ends)."""
    tail = tar_bytes[end:]
    if tail.strip(b"\0"):
        what = f"{len(tail)} bytes after its last member that are not the end-of-archive zeros"
    elif len(tail) > TAR_TAIL:
        what = f"{len(tail)} zero bytes after its last member where the end-of-archive blocks take {TAR_TAIL}"
    else:
        return
    raise SubmissionRejected(f"the archive has {what}; data past an archive's end is not kept: make the "
                             "archive again with tar or make handin")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member of ``data``, decompressed (at most ``limit`` bytes); anything after the last
    member is refused."""
    out = bytearray()
    rest = data
    while rest:
        if rest[:2] != b"\x1f\x8b":
            raise SubmissionRejected(f"the archive has {len(rest)} bytes after the end of its gzip stream; "
                                     "data past an archive's end is not kept: make the archive again with "
                                     "tar or make handin")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = rest
            while chunk and not d.eof:
                out += d.decompress(chunk, limit + 1 - len(out))
                if len(out) > limit:
                    raise SubmissionRejected("the archive unpacks to more than the allowed size")
                chunk = d.unconsumed_tail
        except zlib.error as e:
            raise SubmissionRejected(f"the archive is damaged or not a tar/zip archive ({e})") from None
        if not d.eof:
            raise SubmissionRejected("the archive is damaged or not a tar/zip archive (the gzip stream is cut short)")
        rest = d.unused_data
    return bytes(out)


def _check_dir_name(raw: str) -> None:
    p = PurePosixPath(raw.replace("\\", "/"))
    if _escapes(p):
        raise SubmissionRejected(f"archive member {printable(raw)} has a path that escapes the upload")


def _from_zip(data: bytes, allowed: set[str], limits: Limits) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > limits.members:
                raise SubmissionRejected(f"the archive has more than {limits.members} members")
            total = 0
            for info in infos:
                if info.is_dir():
                    _check_dir_name(info.filename)
                    continue
                name = _member_name(info.filename, allowed)
                mode = (info.external_attr >> 16) & 0o170000
                if mode not in (0, 0o100000):
                    raise SubmissionRejected(f"archive member {printable(info.filename)} is not a regular "
                                             "file (links and devices are refused)")
                if info.flag_bits & 0x1:
                    raise SubmissionRejected(f"archive member {printable(info.filename)} is encrypted")
                if info.file_size > limits.file_bytes:
                    raise SubmissionRejected(f"{name} is larger than {limits.file_bytes} bytes")
                if name in found:
                    raise SubmissionRejected(f"the archive holds {name} twice")
                with z.open(info) as f:
                    body = f.read(limits.file_bytes + 1)
                total += len(body)
                if total > limits.unpacked_bytes:
                    raise SubmissionRejected("the archive unpacks to more than the allowed size")
                found[name] = body
            _check_zip_layout(data, infos, z.start_dir)
    except UnicodeDecodeError:
        raise SubmissionRejected("an archive member's name is marked as UTF-8 but is not valid UTF-8") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError,
            RuntimeError) as e:
        raise SubmissionRejected(f"the archive is damaged or uses an unsupported zip feature "
                                 f"({type(e).__name__})") from None
    return found


ZIP_COMMENT_MAX = 1024


def _outside_zip(what: str) -> SubmissionRejected:
    return SubmissionRejected(f"the zip archive has {what}; data outside an archive's records is not kept: "
                              "make the archive again with zip or your file manager")


def _check_zip_layout(data: bytes, infos: list[zipfile.ZipInfo], start_dir: int) -> None:
    """Every byte of a zip belongs to its records: the members (local header, data, data descriptor)
    back to back from the first byte, the central directory right after them, then the end record
    (and its zip64 forms), whose comment (at most ZIP_COMMENT_MAX bytes) ends the file."""
    pos = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != pos:
            raise _outside_zip(f"{info.header_offset - pos} bytes before member {printable(info.filename)}")
        head = data[pos:pos + 30]
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise SubmissionRejected(f"the archive is damaged (no local header for {printable(info.filename)})")
        name_len, extra_len = struct.unpack("<2H", head[26:30])
        pos += 30 + name_len + extra_len + info.compress_size
        if info.flag_bits & 0x08:   # a data descriptor follows: optional signature, crc and two sizes
            zip64 = info.compress_size >= 0xFFFFFFFF or info.file_size >= 0xFFFFFFFF
            pos += (4 if data[pos:pos + 4] == b"PK\x07\x08" else 0) + (20 if zip64 else 12)
    if start_dir != pos:
        raise _outside_zip(f"{start_dir - pos} bytes between its last member and its central directory")
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
    cd_size, _cd_offset, comment = struct.unpack("<2LH", data[eocd + 12:eocd + 22])
    cd_end = eocd
    if data[eocd - 20:eocd - 16] == b"PK\x06\x07":   # zip64 end record, then its locator
        (cd_end,) = struct.unpack("<Q", data[eocd - 12:eocd - 4])
        rec_size, = struct.unpack("<Q", data[cd_end + 4:cd_end + 12])
        cd_size, = struct.unpack("<Q", data[cd_end + 40:cd_end + 48])
        if data[cd_end:cd_end + 4] != b"PK\x06\x06" or cd_end + 12 + rec_size != eocd - 20:
            raise _outside_zip("bytes between its zip64 end records")
    if start_dir + cd_size != cd_end:
        raise _outside_zip(f"{cd_end - start_dir - cd_size} bytes after its central directory")
    if comment > ZIP_COMMENT_MAX:
        raise _outside_zip(f"a comment of {comment} bytes (at most {ZIP_COMMENT_MAX})")
    if eocd + 22 + comment != len(data):
        raise _outside_zip(f"{len(data) - eocd - 22 - comment} bytes after its end record")


def unpack_archive(data: bytes, allowed: set[str], limits: Limits) -> dict[str, bytes]:
    if len(data) == 0:
        raise SubmissionRejected("the archive is empty")
    if len(data) > limits.archive_bytes:
        raise SubmissionRejected(f"the archive is larger than {limits.archive_bytes} bytes")
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return _from_zip(data, allowed, limits)
    if data[:2] == b"\x1f\x8b" or (len(data) >= 512 and data[257:262] == b"ustar"):
        return _from_tar(data, allowed, limits)
    raise SubmissionRejected("the archive is not a .tar, .tar.gz or .zip file")


def checked_files(found: dict[str, bytes], files: list[str], limits: Limits,
                  optional: list[str] = ()) -> dict[str, bytes]:
    """The lab's files of ``found`` (name -> bytes, only allowed names), each checked as text, with
    those of ``optional`` that hold something; refused when one of ``files`` is missing."""
    missing = [n for n in files if n not in found]
    if missing:
        raise SubmissionRejected(f"the upload lacks {', '.join(missing)} (expected {', '.join(files)})")
    # an empty optional file is the same as none: a student who answered nothing loses only that
    present = [n for n in [*files, *optional] if n in found and (n in files or found[n].strip())]
    for name in present:
        check_text(name, found[name], limits)
    return {n: found[n] for n in present}


def read_folder(source: Path, allowed: set[str], limits: Limits) -> dict[str, bytes]:
    """The files of ``allowed`` that a folder holds; a link, folder or device under such a name is
    refused, like an archive member."""
    found = {}
    for name in sorted(allowed):
        p = source / name
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise SubmissionRejected(f"{name} in {source} is not a regular file")
        if p.is_file():
            with p.open("rb") as f:
                found[name] = f.read(limits.file_bytes + 1)
            if len(found[name]) > limits.file_bytes:
                raise SubmissionRejected(f"{name} is larger than {limits.file_bytes} bytes")
    return found


def materialize(source: Path, files: list[str], dest: Path, limits: Limits, optional: list[str] = ()) -> Path:
    """The grade CLI's submission: the lab's files (and those of ``optional`` that are there) from a
    folder or an archive file, validated as the service validates an upload, written into dest;
    returns dest."""
    source = Path(source)
    allowed = set(files) | set(optional)
    if source.is_dir():
        found = read_folder(source, allowed, limits)
    elif source.is_file():
        with source.open("rb") as f:
            found = unpack_archive(f.read(limits.archive_bytes + 1), allowed, limits)
    elif not source.exists():
        raise SubmissionRejected(f"{source} does not exist")
    else:
        raise SubmissionRejected(f"{source} is neither a folder nor a .tar.gz/.zip archive")
    checked = checked_files(found, files, limits, optional)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in checked.items():
        (dest / name).write_bytes(data)
    return dest
