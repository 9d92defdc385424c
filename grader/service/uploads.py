"""Validation of untrusted uploads, before anything is stored or run.

An upload is either the lab's files as separate file fields, or one archive (tar, tar.gz or zip,
recognised by content, not by name). Accepted: exactly the lab's file names, regular files, within
the size caps, UTF-8 text without NUL bytes. Everything else is refused with a message that names the
offending field or member. Nothing is written to disk here: the result is a dict name -> bytes.

An archive must end where its format says it ends: no bytes after a tar's end-of-archive blocks (past
the padding to a full record), after the last gzip member, or around a zip's records. Such bytes are
refused, not dropped: the store keeps the archive exactly as uploaded, because the receipt's sha256
names those bytes (ARCHITECTURE.md "Receipts"), and refusing keeps that true without storing data the
lab does not need.
"""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath


class UploadRejected(ValueError):
    """The upload cannot be accepted; str() is the message for the student."""


@dataclass(frozen=True)
class Limits:
    file_bytes: int           # one lab file
    archive_bytes: int        # the uploaded archive
    members: int              # archive members (directories included)
    unpacked_bytes: int       # everything an archive unpacks to


@dataclass
class UploadPart:
    field: str                # form field name
    filename: str             # the client's file name (untrusted, only used in messages and checks)
    data: bytes


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
            raise UploadRejected("the archive unpacks to more than the allowed size")
        return n


def _printable(name: str) -> str:
    return repr(name[:80])


def check_text(name: str, data: bytes, limits: Limits) -> None:
    if len(data) == 0:
        raise UploadRejected(f"{name} is empty")
    if len(data) > limits.file_bytes:
        raise UploadRejected(f"{name} is larger than {limits.file_bytes} bytes")
    if b"\0" in data:
        raise UploadRejected(f"{name} is not a text file (it contains NUL bytes)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UploadRejected(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                             "save it as UTF-8") from None


def _escapes(p: PurePosixPath) -> bool:
    """An absolute path, a path with .., or a drive (C:) prefix."""
    return p.is_absolute() or ".." in p.parts or bool(p.parts and p.parts[0].endswith(":"))


def _member_name(raw: str, allowed: set[str]) -> str:
    if "\0" in raw or len(raw) > 255:
        raise UploadRejected(f"archive member {_printable(raw)} has an invalid name")
    p = PurePosixPath(raw.replace("\\", "/"))
    if _escapes(p):
        raise UploadRejected(f"archive member {_printable(raw)} has a path that escapes the upload")
    if p.name not in allowed:
        raise UploadRejected(f"archive member {_printable(raw)} is not one of this lab's files "
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
                    raise UploadRejected(f"the archive has more than {limits.members} members")
                if m.isdir():
                    _check_dir_name(m.name)
                    continue
                name = _member_name(m.name, allowed)
                if not m.isreg():
                    raise UploadRejected(f"archive member {_printable(m.name)} is not a regular file "
                                         "(links and devices are refused)")
                if m.size > limits.file_bytes:
                    raise UploadRejected(f"{name} is larger than {limits.file_bytes} bytes")
                if name in found:
                    raise UploadRejected(f"the archive holds {name} twice")
                f = tar.extractfile(m)
                found[name] = f.read(limits.file_bytes + 1) if f else b""
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        if compressed:   # names bytes after the gzip stream when they are the cause
            _gunzip(data, budget)
        raise UploadRejected(f"the archive is damaged or not a tar/zip archive ({type(e).__name__})") from None
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
    raise UploadRejected(f"the archive has {what}; data past an archive's end is not kept: make the "
                         "archive again with tar or make handin")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every gzip member of ``data``, decompressed (at most ``limit`` bytes); anything after the last
    member is refused."""
    out = bytearray()
    rest = data
    while rest:
        if rest[:2] != b"\x1f\x8b":
            raise UploadRejected(f"the archive has {len(rest)} bytes after the end of its gzip stream; "
                                 "data past an archive's end is not kept: make the archive again with "
                                 "tar or make handin")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = rest
            while chunk and not d.eof:
                out += d.decompress(chunk, limit + 1 - len(out))
                if len(out) > limit:
                    raise UploadRejected("the archive unpacks to more than the allowed size")
                chunk = d.unconsumed_tail
        except zlib.error as e:
            raise UploadRejected(f"the archive is damaged or not a tar/zip archive ({e})") from None
        if not d.eof:
            raise UploadRejected("the archive is damaged or not a tar/zip archive (the gzip stream is cut short)")
        rest = d.unused_data
    return bytes(out)


def _check_dir_name(raw: str) -> None:
    p = PurePosixPath(raw.replace("\\", "/"))
    if _escapes(p):
        raise UploadRejected(f"archive member {_printable(raw)} has a path that escapes the upload")


def _from_zip(data: bytes, allowed: set[str], limits: Limits) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if len(infos) > limits.members:
                raise UploadRejected(f"the archive has more than {limits.members} members")
            total = 0
            for info in infos:
                if info.is_dir():
                    _check_dir_name(info.filename)
                    continue
                name = _member_name(info.filename, allowed)
                mode = (info.external_attr >> 16) & 0o170000
                if mode not in (0, 0o100000):
                    raise UploadRejected(f"archive member {_printable(info.filename)} is not a regular "
                                         "file (links and devices are refused)")
                if info.flag_bits & 0x1:
                    raise UploadRejected(f"archive member {_printable(info.filename)} is encrypted")
                if info.file_size > limits.file_bytes:
                    raise UploadRejected(f"{name} is larger than {limits.file_bytes} bytes")
                if name in found:
                    raise UploadRejected(f"the archive holds {name} twice")
                with z.open(info) as f:
                    body = f.read(limits.file_bytes + 1)
                total += len(body)
                if total > limits.unpacked_bytes:
                    raise UploadRejected("the archive unpacks to more than the allowed size")
                found[name] = body
            _check_zip_layout(data, infos, z.start_dir)
    except UnicodeDecodeError:
        raise UploadRejected("an archive member's name is marked as UTF-8 but is not valid UTF-8") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError,
            RuntimeError) as e:
        raise UploadRejected(f"the archive is damaged or uses an unsupported zip feature "
                             f"({type(e).__name__})") from None
    return found


ZIP_COMMENT_MAX = 1024


def _outside_zip(what: str) -> UploadRejected:
    return UploadRejected(f"the zip archive has {what}; data outside an archive's records is not kept: "
                          "make the archive again with zip or your file manager")


def _check_zip_layout(data: bytes, infos: list[zipfile.ZipInfo], start_dir: int) -> None:
    """Every byte of a zip belongs to its records: the members (local header, data, data descriptor)
    back to back from the first byte, the central directory right after them, then the end record
    (and its zip64 forms), whose comment (at most ZIP_COMMENT_MAX bytes) ends the file."""
    pos = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != pos:
            raise _outside_zip(f"{info.header_offset - pos} bytes before member {_printable(info.filename)}")
        head = data[pos:pos + 30]
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise UploadRejected(f"the archive is damaged (no local header for {_printable(info.filename)})")
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
        raise UploadRejected("the archive is empty")
    if len(data) > limits.archive_bytes:
        raise UploadRejected(f"the archive is larger than {limits.archive_bytes} bytes")
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return _from_zip(data, allowed, limits)
    if data[:2] == b"\x1f\x8b" or (len(data) >= 512 and data[257:262] == b"ustar"):
        return _from_tar(data, allowed, limits)
    raise UploadRejected("the archive is not a .tar, .tar.gz or .zip file")


def validate_upload(parts: list[UploadPart], lab_files: list[str], limits: Limits,
                    optional_files: list[str] = ()) -> dict[str, bytes]:
    """The lab's files from an upload (one archive field, or one field per file), with those of
    ``optional_files`` that were sent (checked like the others when present)."""
    allowed = set(lab_files) | set(optional_files)
    expected = ", ".join(lab_files)
    if not parts:
        raise UploadRejected(f"no files were uploaded: send {expected}, or one archive holding them")
    archives = [p for p in parts if p.field == "archive"]
    if archives:
        if len(parts) != 1:
            raise UploadRejected("send either one archive or the separate files, not both")
        found = unpack_archive(archives[0].data, allowed, limits)
    else:
        found = {}
        for p in parts:
            if p.field not in allowed:
                extra = f" and optionally {', '.join(optional_files)}" if optional_files else ""
                raise UploadRejected(f"unexpected upload field {_printable(p.field)}: this lab takes "
                                     f"{expected}{extra} (or one archive)")
            base = PurePosixPath((p.filename or "").replace("\\", "/")).name
            if p.filename and base != p.field:
                raise UploadRejected(f"the file for {p.field} is named {_printable(p.filename)}; "
                                     f"upload a file named {p.field}")
            if p.field in found:
                raise UploadRejected(f"{p.field} was uploaded twice")
            found[p.field] = p.data
    missing = [n for n in lab_files if n not in found]
    if missing:
        raise UploadRejected(f"the upload lacks {', '.join(missing)} (expected {expected})")
    # an empty optional file is the same as none: a student who answered nothing loses only that
    present = [n for n in [*lab_files, *optional_files]
               if n in found and (n in lab_files or found[n].strip())]
    for name in present:
        check_text(name, found[name], limits)
    return {n: found[n] for n in present}
