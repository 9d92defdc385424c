"""Hostile uploads against the real web process: generated archives and forms, each of which must be
refused with a message that says what is wrong, without a server error, without anything stored and
without a file written outside the store.

The service runs as it does in production (`python -m flask --app grader serve`, waitress, SQLite) on a
private instance folder in a temporary sandbox, and is spoken to over HTTP on 127.0.0.1 only. Cases are
generated deterministically from a seed; a few well-formed control uploads are mixed in, so that a
harness that cannot upload at all does not pass for a service that refuses everything.

The harness (sandbox, server, HTTP client, page messages, database snapshots) is support/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import random
import re
import secrets
import shutil
import struct
import tarfile
import tempfile
import threading
import time
import zlib
from pathlib import Path

from faults.report import ratio, zero
from support.http import Client, location_path, login, multipart, page_messages, reply_message, session_csrf, urlencoded
from support.service import (PASSWORDS, ServiceProcesses, add_token, in_process_app, lab_files, new_sandbox, row_changes,
                             seed, table_rows)

REPO = Path(__file__).resolve().parents[1]
PART = "uploads"
LAB_FILES = ("sender.c", "receiver.c", "copytrace.c")
SERVICE_FILES = re.compile(r"^(config\.py|(grader|queue)\.sqlite3(-wal|-shm|-journal)?)$")


# --------------------------------------------------------------------------------------------------
# Archives: tar (plain or gzip) and zip, written member by member so that nothing is sanitised
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class M:
    """One archive member. kind: reg, dir, sym, lnk, chr, blk, fifo, sock. A bytes name is written as
    those bytes (tar: through surrogateescape)."""
    name: str | bytes
    data: bytes = b""
    kind: str = "reg"
    link: str = ""


TAR_TYPES = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
             "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
ZIP_MODES = {"reg": 0o100644, "dir": 0o040755, "sym": 0o120777, "chr": 0o020666, "blk": 0o060660,
             "fifo": 0o010644, "sock": 0o140755}


def tar_bytes(members: list[M], gz: bool, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar (gzip-compressed when `gz`) of `members`, names and types exactly as given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as t:
        for m in members:
            name = m.name.decode("utf-8", "surrogateescape") if isinstance(m.name, bytes) else m.name
            ti = tarfile.TarInfo(name)
            ti.type = TAR_TYPES[m.kind]
            ti.linkname = m.link
            ti.mode = 0o755 if m.kind == "dir" else 0o644
            ti.mtime = 1700000000
            if m.kind in ("chr", "blk"):
                ti.devmajor, ti.devminor = (1, 3) if m.kind == "chr" else (8, 0)
            if m.kind == "reg":
                ti.size = len(m.data)
                t.addfile(ti, io.BytesIO(m.data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def zip_bytes(entries: list[dict]) -> bytes:
    """A zip written by hand (zipfile would clean names). An entry: name (bytes), mode, and either data
    or (deflated, crc, size); optional flags (0x800: the name is UTF-8) and declared (the size the
    headers claim)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        name = e["name"]
        if "deflated" in e:
            comp, crc, size = e["deflated"], e["crc"], e["size"]
        else:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            comp = c.compress(e["data"]) + c.flush()
            crc, size = zlib.crc32(e["data"]), len(e["data"])
        declared = e.get("declared", size)
        flags = e.get("flags", 0)
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, 8, 0, 0x21, crc, len(comp), declared,
                           len(name), 0) + name + comp
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, 20, flags, 8, 0, 0x21, crc, len(comp),
                               declared, len(name), 0, 0, 0, 0, e["mode"] << 16, offset) + name
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + eocd)


def zip_of(members: list[M]) -> bytes:
    """A zip of `members` (hard links have no zip form: they are written as symbolic links)."""
    entries = []
    for m in members:
        name = m.name if isinstance(m.name, bytes) else m.name.encode("utf-8", "surrogateescape")
        kind = "sym" if m.kind == "lnk" else m.kind
        if kind == "dir" and not name.endswith(b"/"):
            name += b"/"
        data = m.link.encode() if kind == "sym" else m.data
        entries.append({"name": name, "data": data, "mode": ZIP_MODES[kind]})
    return zip_bytes(entries)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One pax extended-header record, "LEN key=value\\n", LEN counting the whole record."""
    rest = b" " + key + b"=" + value + b"\n"
    digits = 1
    while len(str(len(rest) + digits)) != digits:
        digits += 1
    return str(len(rest) + digits).encode() + rest


def pax_tar(key: bytes, value: bytes, name: str, data: bytes) -> bytes:
    """An uncompressed tar: a pax header setting `key` to the raw bytes `value`, then the file `name`."""
    record = pax_record(key, value)
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, len(record)
    ti = tarfile.TarInfo(name)
    ti.size = len(data)

    def blocks(b: bytes) -> bytes:
        return b + bytes((-len(b)) % 512)
    return (head.tobuf(format=tarfile.USTAR_FORMAT) + blocks(record) + ti.tobuf(format=tarfile.USTAR_FORMAT)
            + blocks(data) + bytes(1024))


def dir_headers(count: int) -> bytes:
    """`count` tar folder headers (x0/, x1/, ...), for a bomb not to be the first member."""
    out = []
    for k in range(count):
        ti = tarfile.TarInfo(f"x{k}")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        out.append(ti.tobuf(format=tarfile.USTAR_FORMAT))
    return b"".join(out)


class Bombs:
    """Compressed streams of many zero bytes, made once per run: a decompression bomb is small on the wire."""

    def __init__(self, size: int = 64 * 1024 * 1024):
        self.size = size
        gz, raw = zlib.compressobj(9, zlib.DEFLATED, 31), zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = bytes(1024 * 1024)
        gz_parts, raw_parts, crc = [], [], 0
        for _ in range(size // len(chunk)):
            gz_parts.append(gz.compress(chunk))
            raw_parts.append(raw.compress(chunk))
            crc = zlib.crc32(chunk, crc)
        self.gzip_member = b"".join(gz_parts) + gz.flush()   # one gzip member of `size` zeros
        self.deflated = b"".join(raw_parts) + raw.flush()    # raw deflate of the same
        self.crc = crc

    def tar_gz(self, header: tarfile.TarInfo, fmt: int, before: bytes = b"") -> bytes:
        """A gzip stream (several members) of a tar: `before` (whole tar blocks), then `header` claiming
        `size` bytes followed by that many zeros, then the end of the archive."""
        header.size = self.size
        pad = (-self.size) % 512
        return (gzip.compress(before + header.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape"))
                + self.gzip_member + gzip.compress(bytes(pad + 1024)))


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """One hostile request (or a control that must be accepted)."""
    i: int
    category: str
    channel: str                          # api, web, login, password, roster, assignment, extension, cohort
    what: str                             # a short description for failure listings
    parts: list[tuple] = dataclasses.field(default_factory=list)   # form parts, see multipart()
    expect: tuple[str, ...] = ()          # the refusal names one of these (case-insensitive)
    control: bool = False                 # a well-formed upload that must be accepted
    raw: tuple[bytes, str] | None = None  # (body, content type) sent as is (API only)
    encoding: str = "multipart"           # web forms: multipart or urlencoded
    auth: str | bytes | None = "token"    # API: "token" (alice's), None (no header) or a literal header
    csrf: str = "valid"                   # web forms: valid, missing, forged, foreign (another session's)
    path: str | None = None               # URL other than the channel's


class Gen:
    """What a case generator needs: the case's own seeded random source, the lab files, this run's
    marker names, the bomb streams and alice's API tokens."""

    def __init__(self, i: int, rng: random.Random, run_id: str, bombs: Bombs, tokens: dict[str, str],
                 good: dict[str, bytes]):
        self.i, self.rng, self.run_id, self.bombs, self.tokens, self.good = i, rng, run_id, bombs, tokens, good

    @property
    def marker(self) -> str:
        """The marker file name of the current case: found anywhere after the run, it escaped."""
        return f"copylab-faults-{self.run_id}-{self.i}"

    def escape_path(self) -> str:
        """A name that points outside the upload, at this case's marker."""
        m = self.marker
        return self.rng.choice([f"../../{m}", f"a/../../{m}", f"lab1/../../../{m}", f"..\\..\\{m}",
                                f"./../{m}", "../sender.c", f"C:\\{m}", f"c:/{m}", f"lab1/../../x/../../{m}",
                                "../" * self.rng.randint(3, 14) + f"tmp/{m}"])

    def absolute_path(self) -> str:
        """An absolute name, some at this case's marker."""
        m = self.marker
        return self.rng.choice([f"/tmp/{m}", f"//tmp/{m}", f"/{m}", "/etc/sender.c", f"/tmp/lab1/{m}",
                                f"/dev/shm/{m}", f"/var/tmp/{m}"])

    def members(self, prefix: str = "", **replace: bytes) -> list[M]:
        """The lab's files as archive members, in a random order, optionally in a folder."""
        files = dict(self.good, **replace)
        out = [M(prefix + n, d) for n, d in files.items()]
        self.rng.shuffle(out)
        if prefix:
            out.insert(0, M(prefix.rstrip("/"), kind="dir"))
        return out

    def insert(self, members: list[M], extra: M) -> list[M]:
        """`members` with `extra` at a random position."""
        members.insert(self.rng.randint(0, len(members)), extra)
        return members

    def pack(self, members: list[M], formats: tuple[str, ...] = ("tgz", "tar", "zip")) -> tuple[bytes, str]:
        """(archive bytes, format) of `members` in one of `formats`."""
        fmt = self.rng.choice(formats)
        if fmt == "zip":
            return zip_of(members), fmt
        return tar_bytes(members, gz=fmt == "tgz"), fmt

    def archive_name(self) -> str:
        """The client's name for the archive (never used by the service to store anything)."""
        return self.rng.choice(["handin.tar.gz", "handin-lab1.tgz", "a.zip", "sub.tar", "x",
                                f"../../{self.marker}", f"/tmp/{self.marker}", "..", "archive\x7f.tgz"])

    def upload_channel(self) -> str:
        """The API (70%) or the web form (30%)."""
        return "web" if self.rng.random() < 0.3 else "api"

    def archive_case(self, category: str, members: list[M], expect: tuple[str, ...], what: str,
                     formats: tuple[str, ...] = ("tgz", "tar", "zip")) -> Case:
        """An upload of `members` packed in one of `formats`."""
        data, fmt = self.pack(members, formats)
        return self.raw_archive_case(category, data, expect, f"{what} ({fmt})")

    def raw_archive_case(self, category: str, data: bytes, expect: tuple[str, ...], what: str) -> Case:
        """An upload of `data` as the archive field."""
        return Case(self.i, category, self.upload_channel(), what, [("archive", self.archive_name(), data)],
                    expect)

    def files_case(self, category: str, files: dict, expect: tuple[str, ...], what: str, **kw) -> Case:
        """The lab's files as separate file fields (name -> bytes, or -> (filename, bytes))."""
        parts = []
        for name, v in files.items():
            filename, data = v if isinstance(v, tuple) else (name, v)
            parts.append((name, filename, data))
        self.rng.shuffle(parts)
        return Case(self.i, category, kw.pop("channel", None) or self.upload_channel(), what, parts, expect, **kw)


# --- archive categories ---------------------------------------------------------------------------

def g_traversal(g: Gen) -> Case:
    """A member (file or folder) whose path climbs out of the upload."""
    name = g.escape_path()
    if g.rng.random() < 0.2:
        return g.archive_case("traversal", g.insert(g.members(), M(name + "/", kind="dir")), ("escapes",),
                              f"folder {name!r}")
    return g.archive_case("traversal", g.insert(g.members(), M(name, b"int x;\n")), ("escapes",),
                          f"member {name!r}")


def g_absolute(g: Gen) -> Case:
    """A member with an absolute path."""
    name = g.absolute_path()
    members = g.members()
    members[g.rng.randrange(len(members))] = M(name, g.good["sender.c"])
    return g.archive_case("absolute path", members, ("escapes",), f"member {name!r}")


def g_symlink(g: Gen) -> Case:
    """A lab file that is a symbolic link (to a secret, or to this case's marker), or a linked folder."""
    target = g.rng.choice(["/etc/passwd", f"/tmp/{g.marker}", f"../../{g.marker}", "receiver.c", "/proc/self/environ"])
    v = g.rng.randrange(3)
    if v == 0:
        members = [m for m in g.members() if m.name != "sender.c"]
        return g.archive_case("symlink", g.insert(members, M("sender.c", kind="sym", link=target)),
                              ("not a regular file",), f"sender.c -> {target}")
    if v == 1:  # a link, then a file written through it
        members = [M("sender.c", kind="sym", link=target)] + g.members()
        return g.archive_case("symlink", members, ("not a regular file",), f"sender.c -> {target}, then sender.c")
    members = [M("lab1", kind="sym", link="/tmp")] + g.members(prefix="lab1/")[1:]
    return g.archive_case("symlink", members, ("not one of this lab's files",), "folder lab1 -> /tmp, then lab1/*.c")


def g_hardlink(g: Gen) -> Case:
    """A lab file that is a hard link."""
    target = g.rng.choice(["receiver.c", "/etc/shadow", f"../../{g.marker}", f"/tmp/{g.marker}"])
    members = [m for m in g.members() if m.name != "copytrace.c"]
    return g.archive_case("hardlink", g.insert(members, M("copytrace.c", kind="lnk", link=target)),
                          ("not a regular file",), f"copytrace.c hard link -> {target}", formats=("tgz", "tar"))


def g_device(g: Gen) -> Case:
    """A lab file that is a device, a FIFO or a socket."""
    kind = g.rng.choice(["chr", "blk", "fifo", "sock"])
    formats = ("zip",) if kind == "sock" else ("tgz", "tar", "zip")
    name = g.rng.choice(LAB_FILES)
    members = [m for m in g.members() if m.name != name]
    return g.archive_case("device or fifo", g.insert(members, M(name, kind=kind)), ("not a regular file",),
                          f"{name} is a {kind}", formats=formats)


def g_huge(g: Gen) -> Case:
    """Members, archives and requests over the size caps (the lab file cap, the archive cap, the request cap)."""
    v = g.rng.randrange(5)
    if v == 0:
        size = g.rng.randint(65537, 400000)
        body = b"/*" + b"x" * (size - 4) + b"*/"
        return g.archive_case("huge", g.members(**{"receiver.c": body}), ("larger than",),
                              f"receiver.c of {size} bytes")
    if v == 1:  # the tar header claims a size far beyond what follows
        ti = tarfile.TarInfo("sender.c")
        ti.size = g.rng.choice([10 ** 10, 2 ** 33 - 1, 65537, 10 ** 15])
        fmt = tarfile.GNU_FORMAT if ti.size >= 8 ** 11 else tarfile.USTAR_FORMAT
        data = ti.tobuf(format=fmt) + bytes(512) * 2
        return g.raw_archive_case("huge", gzip.compress(data) if g.rng.random() < 0.5 else data, ("larger than",),
                                  f"header claims {ti.size} bytes")
    if v == 2:
        data = b"PK\x03\x04" + g.rng.randbytes(g.rng.randint(1024 * 1024 + 1, 1900 * 1024))
        return g.raw_archive_case("huge", data, ("larger than",), "archive over the archive cap")
    if v == 3:
        data = g.rng.randbytes(g.rng.randint(2 * 1024 * 1024 + 1, 2300 * 1024))
        return g.raw_archive_case("huge", data, ("larger than",), "request over the request cap")
    size = g.rng.randint(65537, 300000)
    files = dict(g.good, **{"copytrace.c": b"//" + b"y" * size + b"\n"})
    return g.files_case("huge", files, ("larger than",), f"file field copytrace.c of {size} bytes")


def g_deep(g: Gen) -> Case:
    """Deep nesting: paths too long to be a name, folder chains past the member cap, archives in archives."""
    v = g.rng.randrange(4)
    if v == 0:
        depth = g.rng.randint(128, 400)
        prefix = "d/" * depth
        return g.archive_case("deep nesting", g.members(**{}) + [M(prefix + "sender.c", g.good["sender.c"])],
                              ("invalid name", "twice"), f"sender.c {depth} folders deep")
    if v == 1:
        count = g.rng.randint(65, 1500)  # a plain tar of 1500 headers stays under the archive cap
        chain = [M("/".join(["n"] * (k + 1)) + "/", kind="dir") for k in range(min(count, 40))]
        chain += [M(f"w{k}/", kind="dir") for k in range(count - len(chain))]
        return g.archive_case("deep nesting", chain + g.members(), ("more than",), f"{count} folders",
                              formats=("tgz", "tar", "zip"))
    if v == 2:
        inner, fmt = g.pack(g.members())
        name = g.rng.choice(["inner.tar.gz", "inner.zip", "lab1.tar", "sender.c.tgz"])
        return g.archive_case("deep nesting", [M(name, inner)], ("not one of this lab's files",),
                              f"archive {name} ({fmt}) in an archive")
    depth = g.rng.randint(2, 8)
    data = tar_bytes(g.members(), gz=True)
    for _ in range(depth):
        data = tar_bytes([M("sender.c", data)] + [m for m in g.members() if m.name != "sender.c"], gz=True)
    return g.raw_archive_case("deep nesting", data, ("not a text file", "not UTF-8", "larger than"),
                              f"archives nested {depth} deep, the inner one named sender.c")


def g_bomb(g: Gen) -> Case:
    """Decompression bombs: a member claiming 64 MiB of zeros, pax and GNU long-name headers of 64 MiB,
    a zip member of 64 MiB, a zip whose headers lie about the unpacked size."""
    b = g.bombs
    v = g.rng.randrange(5)
    before = dir_headers(g.rng.randint(0, 3))
    if v == 0:
        ti = tarfile.TarInfo(g.rng.choice(LAB_FILES))
        return g.raw_archive_case("decompression bomb", b.tar_gz(ti, tarfile.USTAR_FORMAT, before),
                                  ("larger than",), f"tar.gz member of {b.size} zero bytes")
    if v == 1:
        ti = tarfile.TarInfo("././@PaxHeader")
        ti.type = tarfile.XHDTYPE
        return g.raw_archive_case("decompression bomb", b.tar_gz(ti, tarfile.USTAR_FORMAT, before),
                                  ("unpacks to more than",), f"pax header of {b.size} bytes")
    if v == 2:
        ti = tarfile.TarInfo("././@LongLink")
        ti.type = tarfile.GNUTYPE_LONGNAME
        return g.raw_archive_case("decompression bomb", b.tar_gz(ti, tarfile.GNU_FORMAT, before),
                                  ("unpacks to more than",), f"GNU long name of {b.size} bytes")
    name = g.rng.choice(LAB_FILES).encode()
    if v == 3:
        data = zip_bytes([{"name": name, "deflated": b.deflated, "crc": b.crc, "size": b.size, "mode": 0o100644}])
        return g.raw_archive_case("decompression bomb", data, ("larger than",), f"zip member of {b.size} zeros")
    declared = g.rng.choice([100, 4096, 65536])
    data = zip_bytes([{"name": name, "deflated": b.deflated, "crc": b.crc, "size": b.size, "mode": 0o100644,
                       "declared": declared}])
    return g.raw_archive_case("decompression bomb", data, ("damaged", "not a text file", "larger than", "unpacks"),
                              f"zip member of {b.size} zeros claiming {declared} bytes")


BAD_TEXT = {
    "latin-1": ("/* caf\xe9 na\xefve */\nint x;\n".encode("latin-1"), ("not UTF-8",)),
    "UTF-16": ("int main(void) { return 0; }\n".encode("utf-16"), ("not a text file", "not UTF-8")),
    "overlong UTF-8": (b"int x; /* \xc0\xaf */\n", ("not UTF-8",)),
    "UTF-8 surrogate": (b"int x; /* \xed\xa0\x80 */\n", ("not UTF-8",)),
    "NUL in text": (b"int x;\n\0int y;\n", ("not a text file",)),
    "ELF binary": (b"\x7fELF\x02\x01\x01" + bytes(200), ("not a text file",)),
}


def g_bad_content(g: Gen) -> Case:
    """A lab file that is not UTF-8 text: other encodings, NUL bytes, binaries, random bytes."""
    name = g.rng.choice(LAB_FILES)
    label = g.rng.choice(list(BAD_TEXT) + ["random bytes"])
    if label == "random bytes":
        data, expect = b"\xff" + g.rng.randbytes(g.rng.randint(10, 3000)), ("not a text file", "not UTF-8")
    else:
        data, expect = BAD_TEXT[label]
    if g.rng.random() < 0.5:
        return g.archive_case("bad encoding (content)", g.members(**{name: data}), expect, f"{name} is {label}")
    return g.files_case("bad encoding (content)", dict(g.good, **{name: data}), expect, f"file field {name} is {label}")


def g_bad_name(g: Gen) -> Case:
    """Member and field names with bad encodings, control characters, look-alikes, NUL bytes."""
    v = g.rng.randrange(4)
    if v == 0:
        name = g.rng.choice([b"sen\xffder.c", b"\xc3\x28sender.c", b"sender.c\xed\xa0\x80", "sender.c\n",
                             "\x1b[2Jsender.c", "\u202ec.rednes", "s\u0435nder.c", "sender.c ", "SENDER.C",
                             "sender.c\r", "sender.c\t", "\u200bsender.c", "sender.c\x7f"])
        members = [m for m in g.members() if m.name != "sender.c"] + [M(name, g.good["sender.c"])]
        return g.archive_case("bad names", members, ("not one of this lab's files",), f"member {name!r}")
    if v == 1:  # a pax header whose path holds a NUL byte or invalid UTF-8
        evil = g.rng.choice([b"sender.c\0/../../x", b"\0", b"send\xffer.c", b"sender.c\0",
                             f"../../{g.marker}".encode() + b"\xff"])
        data = pax_tar(b"path", evil, "sender.c", g.good["sender.c"])
        return g.raw_archive_case("bad names", data, ("invalid name", "not one of this lab's files", "escapes",
                                                      "damaged", "lacks"),
                                  f"pax path {evil!r}")
    if v == 2:  # zip names flagged UTF-8 that are not UTF-8
        name = g.rng.choice([b"sender\xff.c", b"\xc0\xafsender.c", b"sender.c\xed\xa0\x80"])
        entries = [{"name": n.encode(), "data": d, "mode": 0o100644, "flags": 0x800} for n, d in g.good.items()]
        entries.insert(g.rng.randint(0, 3), {"name": name, "data": b"int x;\n", "mode": 0o100644, "flags": 0x800})
        return g.raw_archive_case("bad names", zip_bytes(entries), ("UTF-8",), f"zip name {name!r} flagged UTF-8")
    field = g.rng.choice([b"sen\xffder.c", "sender.c\x01", "\x1b[31msender.c", b"\xed\xa0\x80", "send\u00e9r.c"])
    parts = [(n, n, d) for n, d in g.good.items() if n != "sender.c"] + [(field, "sender.c", g.good["sender.c"])]
    g.rng.shuffle(parts)
    expect = ("could not be read",) if isinstance(field, bytes) else ("unexpected upload field",)
    return Case(g.i, "bad names", g.upload_channel(), f"form field named {field!r}", parts, expect)


def g_duplicate(g: Gen) -> Case:
    """The same lab file twice (in an archive, in a folder and at the top, or as two form fields)."""
    v = g.rng.randrange(3)
    name = g.rng.choice(LAB_FILES)
    if v == 0:
        return g.archive_case("duplicate", g.insert(g.members(), M(name, b"int evil;\n")), ("twice",),
                              f"{name} twice")
    if v == 1:
        return g.archive_case("duplicate", g.insert(g.members(), M(f"dir/{name}", g.good[name])), ("twice",),
                              f"{name} and dir/{name}")
    parts = [(n, n, d) for n, d in g.good.items()] + [(name, name, b"int evil;\n")]
    g.rng.shuffle(parts)
    return Case(g.i, "duplicate", g.upload_channel(), f"form field {name} twice", parts, ("twice",))


def g_wrong_files(g: Gen) -> Case:
    """Files missing, extra files, renamed files, wrong lab, archive and files together, unknown fields."""
    v = g.rng.randrange(7)
    if v == 0:
        keep = g.rng.sample(LAB_FILES, g.rng.randint(0, 2))
        members = [m for m in g.members() if m.name in keep] + [M("lab1/", kind="dir")]
        return g.archive_case("wrong or missing files", members, ("lacks",), f"only {keep}")
    if v == 1:
        extra = g.rng.choice(["Makefile", ".hidden", "evil.sh", "sender.h", g.marker, "Sender.c", "sender.c~",
                              "copytrace.ko", ".upload"])
        return g.archive_case("wrong or missing files", g.insert(g.members(), M(extra, b"all:\n")),
                              ("not one of this lab's files",), f"extra member {extra!r}")
    if v == 2:
        keep = g.rng.sample(LAB_FILES, g.rng.randint(1, 2))
        return g.files_case("wrong or missing files", {n: g.good[n] for n in keep}, ("lacks",), f"only fields {keep}")
    if v == 3:
        name = g.rng.choice(LAB_FILES)
        filename = g.rng.choice(["main.c", f"../../{g.marker}", f"/tmp/{g.marker}", f"{name}.txt", "", "..", "."])
        if filename == "":
            filename = "x.c"
        return g.files_case("wrong or missing files", dict(g.good, **{name: (filename, g.good[name])}),
                            ("upload a file named",), f"field {name} carries file {filename!r}")
    if v == 4:
        lab = g.rng.choice(["lab2", "LAB1", "lab1%00", "%2e%2e", "lab1%2f..", "x" * 300, "lab%C3%28", "tools"])
        case = g.files_case("wrong or missing files", dict(g.good), ("not enrolled", "not found"), f"lab {lab!r}",
                            channel="api")
        case.path = f"/api/v1/labs/{lab}/submissions"
        return case
    if v == 5:
        parts = [(n, n, d) for n, d in g.good.items()] + [("archive", "a.tgz", tar_bytes(g.members(), gz=True))]
        g.rng.shuffle(parts)
        return Case(g.i, "wrong or missing files", g.upload_channel(), "archive and files together", parts,
                    ("not both",))
    field = g.rng.choice(["evil.sh", "Makefile", g.marker, "archive2", "files[]", "sender"])
    parts = [(n, n, d) for n, d in g.good.items()] + [(field, field, b"x")]
    g.rng.shuffle(parts)
    return Case(g.i, "wrong or missing files", g.upload_channel(), f"extra field {field!r}", parts,
                ("unexpected upload field",))


def g_empty(g: Gen) -> Case:
    """Empty files, empty archives, archives without members."""
    v = g.rng.randrange(5)
    name = g.rng.choice(LAB_FILES)
    if v == 0:
        return g.archive_case("empty", g.members(**{name: b""}), ("is empty",), f"{name} empty")
    if v == 1:
        return g.raw_archive_case("empty", b"", ("empty",), "empty archive")
    if v == 2:
        return g.files_case("empty", dict(g.good, **{name: b""}), ("is empty",), f"file field {name} empty")
    if v == 3:
        data = g.rng.choice([tar_bytes([], gz=False), tar_bytes([], gz=True), zip_bytes([]), gzip.compress(b"")])
        return g.raw_archive_case("empty", data, ("lacks", "damaged", "empty", "not a .tar"),
                                  "archive without members")
    return Case(g.i, "empty", g.upload_channel(), "no parts at all", [], ("no files were uploaded",))


def g_damaged(g: Gen) -> Case:
    """Truncated and corrupted archives, and files that are no archive at all."""
    v = g.rng.randrange(4)
    good_tgz = tar_bytes(g.members(), gz=True)
    if v == 0:
        data, fmt = g.pack(g.members())
        cut = g.rng.randint(10, len(data) // 2)  # into the members (a tar cut after them is whole)
        return g.raw_archive_case("damaged", data[:cut], ("damaged", "lacks", "not a .tar"), f"{fmt} cut at {cut}")
    if v == 1:
        data = bytearray(good_tgz)
        for _ in range(g.rng.randint(1, 20)):
            data[g.rng.randrange(10, len(data))] ^= 1 << g.rng.randrange(8)
        return g.raw_archive_case("damaged", bytes(data), ("damaged", "not one of", "not UTF-8", "not a text",
                                                           "lacks", "escapes", "invalid name", "not a regular",
                                                           "larger than", "twice", "more than", "is empty"),
                                  "tar.gz with flipped bits")
    if v == 2:
        head = g.rng.choice([b"\x1f\x8b", b"PK\x03\x04", b"PK\x05\x06"])
        return g.raw_archive_case("damaged", head + g.rng.randbytes(g.rng.randint(0, 4000)),
                                  ("damaged", "lacks", "not a .tar"), f"{head!r} then garbage")
    data = g.rng.choice([b"\x7fELF" + bytes(1000), b"%PDF-1.4\n", "int main() {}\n".encode(), b"\x00" * 600,
                         b"Rar!\x1a\x07\x00", b"7z\xbc\xaf\x27\x1c", b"BZh91AY&SY"])
    return g.raw_archive_case("damaged", data, ("not a .tar",), f"not an archive ({data[:8]!r})")


def g_field_types(g: Gen) -> Case:
    """Text where a file belongs, bodies that are no form, a form that is no multipart, a wrong cohort."""
    v = g.rng.randrange(6)
    if v == 0:
        name = g.rng.choice(LAB_FILES + ("archive",))
        parts = [(n, n, d) for n, d in g.good.items() if n != name] + [(name, None, "int main(void){}")]
        return Case(g.i, "wrong field types", g.upload_channel(), f"{name} as a text field", parts,
                    ("must be a file upload",))
    if v == 1:
        body = json.dumps({n: d.decode() for n, d in g.good.items()}).encode()
        return Case(g.i, "wrong field types", "api", "JSON body", raw=(body, "application/json"),
                    expect=("no files were uploaded",))
    if v == 2:
        fields = [(n, d) for n, d in g.good.items()]
        if g.rng.random() < 0.5:
            return Case(g.i, "wrong field types", "api", "url-encoded body", raw=(*urlencoded(fields),),
                        expect=("must be a file upload",))
        return Case(g.i, "wrong field types", "web", "url-encoded form", [(n, None, d) for n, d in fields],
                    ("must be a file upload",), encoding="urlencoded")
    if v == 3:
        body, ctype = multipart([(n, n, d) for n, d in g.good.items()])
        mangle = g.rng.randrange(3)
        if mangle == 0:
            ctype = "multipart/form-data"
        elif mangle == 1:
            body = body[:g.rng.randint(50, len(body) - 50)]
        else:
            ctype = "multipart/form-data; boundary=" + "z" * g.rng.randint(1, 200)
        return Case(g.i, "wrong field types", "api", f"malformed multipart ({mangle})", raw=(body, ctype),
                    expect=("could not be read", "no files were uploaded"))
    if v == 4:
        parts = [(n, n, d) for n, d in g.good.items()] + [("cohort", "cohort.txt", b"c1")]
        return Case(g.i, "wrong field types", g.upload_channel(), "cohort as a file", parts,
                    ("unexpected upload field",))
    cohort = g.rng.choice(["nope", "", "c1' OR '1'='1", "x" * 5000, "c1\x00"])
    if cohort == "":
        cohort = " "
    parts = [(n, n, d) for n, d in g.good.items()] + [("cohort", None, cohort)]
    return Case(g.i, "wrong field types", "api", f"cohort {cohort[:20]!r}", parts, ("not enrolled",))


def g_oversized(g: Gen) -> Case:
    """Oversized field names, file names, text fields and field counts."""
    v = g.rng.randrange(4)
    if v == 0:
        size = g.rng.randint(4000, 60000)
        parts = [(n, n, d) for n, d in g.good.items()] + [("f" * size, "f", b"x")]
        return Case(g.i, "oversized fields", g.upload_channel(), f"field name of {size} bytes", parts,
                    ("unexpected upload field",))
    if v == 1:
        size = g.rng.randint(4000, 60000)
        name = g.rng.choice(LAB_FILES)
        return g.files_case("oversized fields", dict(g.good, **{name: ("s" * size, g.good[name])}),
                            ("upload a file named",), f"file name of {size} bytes")
    if v == 2:
        size = g.rng.randint(600 * 1024, 1900 * 1024)
        parts = [(n, n, d) for n, d in g.good.items()] + [("note", None, "n" * size)]
        return Case(g.i, "oversized fields", g.upload_channel(), f"text field of {size} bytes", parts,
                    ("more than",))
    count = g.rng.randint(1100, 3000)
    parts = [(f"f{k}", None, "x") for k in range(count)]
    return Case(g.i, "oversized fields", g.upload_channel(), f"{count} text fields", parts, ("more than",))


def g_api_auth(g: Gen) -> Case:
    """A good upload with missing, malformed, forged, oversized, revoked or expired credentials."""
    header = g.rng.choice([None, "Basic YWxpY2U6YWxpY2UtcGFzcy0x", "Bearer", "Bearer ", "Token " + g.tokens["alice"],
                           "Bearer cl_forged_" + secrets.token_hex(8), "Bearer " + "A" * g.rng.randint(4000, 30000),
                           "Bearer " + g.tokens["revoked"], "Bearer " + g.tokens["expired"],
                           b"Bearer \xff\xfe" + g.tokens["alice"].encode(), "Bearer " + g.tokens["alice"][:-1],
                           "Bearer " + g.tokens["alice"].upper()])
    expect = ("send an API token",) if header in (None, "Bearer", "Bearer ") or \
        str(header).startswith(("Basic", "Token")) else ("is unknown", "was revoked", "expired on")
    what = "no Authorization" if header is None else f"Authorization {str(header)[:40]!r}"
    return g.files_case("credentials", dict(g.good), expect, what, channel="api", auth=header)


def g_csrf(g: Gen) -> Case:
    """A good web upload, or an instructor form, without its CSRF token or with a forged or foreign one."""
    csrf = g.rng.choice(["missing", "forged", "foreign"])
    if g.rng.random() < 0.6:
        return g.files_case("CSRF", dict(g.good), ("form expired",), f"web upload, CSRF {csrf}", channel="web",
                            csrf=csrf)
    deadline = ("deadline", None, "2031-01-01T00:00")
    channel, fields = g.rng.choice([("cohort", [("name", None, f"faults-{g.marker}")]),
                                    ("extension", [("username", None, "alice"), deadline]),
                                    ("assignment", [("lab", None, "lab1"), deadline]),
                                    ("password", [("old", None, "alice-pass-1"), ("new", None, "faults-new-pw")])])
    return Case(g.i, "CSRF", channel, f"{channel} form, CSRF {csrf}", fields, ("form expired",), csrf=csrf,
                encoding=g.rng.choice(["multipart", "urlencoded"]))


def g_login(g: Gen) -> Case:
    """The login form with oversized, empty, binary or wrong fields (or without its CSRF token)."""
    v = g.rng.randrange(5)
    if v == 0:
        size = g.rng.randint(100_000, 1_500_000)
        user, pw, what = "u" * size, "p", f"user name of {size} bytes"
    elif v == 1:
        size = g.rng.randint(100_000, 1_500_000)
        user, pw, what = g.rng.choice(["alice", "nobody"]), "p" * size, f"password of {size} bytes"
    elif v == 2:
        user, pw = g.rng.choice([("", ""), ("alice", ""), ("", "alice-pass-1"), (" ", " ")])
        what = f"empty fields {user!r}/{pw!r}"
    elif v == 3:
        user, pw = g.rng.choice([("alice\x00", "alice-pass-1"), ("alice' --", "x"), ("\x1b[31m", "x"),
                                 ("teacher", "alice-pass-1"), ("ALICE", "alice-pass-1"), ("alice", "alice-pass-2")])
        what = f"login {user!r}"
    else:
        size = g.rng.randint(2_100_000, 2_400_000)
        return Case(g.i, "login", "login", f"login form of {size} bytes",
                    [("username", None, "alice"), ("password", None, "p" * size)], ("larger than",))
    encoding = "urlencoded" if v in (0, 1) or g.rng.random() < 0.5 else "multipart"
    # wrong passwords to the same accounts from one address soon meet the login throttle (429)
    expect = ("more than",) if encoding == "multipart" and len(user) + len(pw) > 500_000 else \
        ("Unknown user name or wrong password", "Too many failed logins")
    return Case(g.i, "login", "login", what, [("username", None, user), ("password", None, pw)], expect,
                encoding=encoding)


def g_password(g: Gen) -> Case:
    """The password form with a wrong or oversized current password, or a too short new one."""
    v = g.rng.randrange(3)
    if v == 0:
        old = g.rng.choice(["wrong", "", "x" * g.rng.randint(10_000, 400_000)])
        return Case(g.i, "password form", "password", f"current password of {len(old)} bytes",
                    [("old", None, old), ("new", None, "faults-new-password")],
                    ("current password is wrong", "Too many failed logins"),
                    encoding="urlencoded")
    new = g.rng.choice(["", "short", "1234567", " " * 3])
    return Case(g.i, "password form", "password", f"new password {new!r}",
                [("old", None, "alice-pass-1"), ("new", None, new)], ("at least 8 characters",),
                encoding=g.rng.choice(["multipart", "urlencoded"]))


def _roster_csv(g: Gen) -> tuple[bytes, tuple[str, ...], str]:
    """(CSV bytes, expected keywords, description) of one hostile roster."""
    head = "student_number,name,email\n"
    num = f"F{g.i}"
    v = g.rng.randrange(15)
    options = [
        (lambda: ("student_number,name,email\nF1,Caf\xe9,c@x.org\n".encode("latin-1"), ("not UTF-8",), "latin-1")),
        (lambda: ((head + f"{num},Ann,a@x.org\n").encode("utf-16"), ("not UTF-8",), "UTF-16")),
        (lambda: (b"", ("empty",), "empty file")),
        (lambda: (b"number,name\nF1,Ann\n", ("lacks column",), "header without email")),
        (lambda: (head.encode(), ("no students",), "header only")),
        (lambda: ((head + f"{num},Ann,not-an-email\n").encode(), ("not an email address",), "bad email")),
        (lambda: ((head + f"../../{g.marker},Ann,a@x.org\n").encode(), ("must be 1-64",),
                  "student number with a path")),
        (lambda: ((head + f"{num},Ann,a@x.org\n{num},Bob,b@x.org\n").encode(), ("repeats",), "duplicate rows")),
        (lambda: ((head + f"{num},Ann,a@x.org,extra,fields\n").encode(), ("more fields",), "too many fields")),
        (lambda: (("student_number,name,email,password\n" + f"{num},Ann,a@x.org,short\n").encode(),
                  ("at least 8 characters",), "short password")),
        (lambda: ((head + f"{num},Ann,a@x.org\n").encode() + b"x" * (1024 * 1024), ("larger than 1 MiB",),
                  "over 1 MiB")),
        (lambda: ((head + f'{num},"' + "n" * g.rng.randint(140_000, 900_000) + '",a@x.org\n').encode(), ("CSV",),
                  "a field over the CSV field limit")),
        (lambda: ((head + f"{num}," + "N" * g.rng.randint(201, 100_000) + ",a@x.org\n").encode(), ("longer than",),
                  "a name over 200 characters")),
        (lambda: ((head + f"{num},Ann" + g.rng.choice(["\x00", "\x1b[2J", "\x07", "\x08"]) + ",a@x.org\n").encode(),
                  ("control characters",), "control characters in a name")),
        (lambda: (("student_number,name,email,username\n" + f"{num},Ann,a@x.org,teacher\n").encode(),
                  ("belongs to another account",), "the instructor's user name")),
    ]
    return options[v]()


def g_roster(g: Gen) -> Case:
    """Roster imports that must import nothing: bad encodings, bad CSV, bad rows, oversized fields."""
    if g.rng.random() < 0.08:
        return Case(g.i, "roster import", "roster", "roster as a text field", [("roster", None, "a,b,c")],
                    ("Choose a CSV file",))
    data, expect, what = _roster_csv(g)
    return Case(g.i, "roster import", "roster", what, [("roster", "roster.csv", data)], expect)


ASSIGNMENT_BAD = [
    ("penalty_per_day", ["abc", "nan", "inf", "-1", "101", "1e999", "10%", "0x10", "\x00"], "penalty_per_day"),
    ("penalty_cap", ["abc", "nan", "-5", "1000", "1,5"], "penalty_cap"),
    ("max_submissions", ["1.5", "-1", "9" * 30, "9" * 5000, "ten", "1e3", "\u0661\u0662" + "9" * 25],
     "max_submissions"),
    ("cooldown_seconds", ["-60", "9" * 20, "1.0", "60s", "9" * 5000], "cooldown_seconds"),
    ("deadline", ["", "tomorrow", "2030-13-01", "2030-02-30T00:00", "0001-01-01T00:00+01:00",
                  "9999-12-31T23:59-01:00", "9" * 5000, "2030-01-01T00:00+99:00", "2030-01-01\x00"], "deadline"),
    ("lab", ["", "../../etc", "lab1\x00", "LAB1", "x" * 3000, "tools", "lab1/"], "unknown lab"),
]


def g_assignment(g: Gen) -> Case:
    """Lab settings (a new assignment) with wrong field types, out-of-range and oversized values."""
    field, values, keyword = g.rng.choice(ASSIGNMENT_BAD)
    form = {"lab": "lab1", "deadline": "2031-01-01T00:00", "title": "faults"}
    form[field] = g.rng.choice(values)
    return Case(g.i, "lab settings", "assignment", f"{field}={form[field][:30]!r}",
                [(k, None, v) for k, v in form.items()], (keyword,), encoding=g.rng.choice(["multipart", "urlencoded"]))


def g_extension(g: Gen) -> Case:
    """Extensions for non-students, with bad deadlines, oversized or empty fields."""
    if g.rng.random() < 0.5:
        user = g.rng.choice(["", "teacher", "nobody", "x" * g.rng.randint(1000, 100_000), "alice\x00", "ALICE"])
        form, keyword = {"username": user, "deadline": "2031-01-01T00:00"}, "is not a student"
        what = f"user {user[:20]!r}"
    else:
        deadline = g.rng.choice(["", "soon", "99999-01-01", "0001-01-01T00:00+01:00", "9999-12-31T23:59-01:00",
                                 "2031-02-29T00:00", "9" * 5000])
        form, keyword = {"username": "alice", "deadline": deadline}, "must look like"
        what = f"deadline {deadline[:20]!r}"
    return Case(g.i, "extensions", "extension", what, [(k, None, v) for k, v in form.items()], (keyword,),
                encoding=g.rng.choice(["multipart", "urlencoded"]))


def g_cohort(g: Gen) -> Case:
    """New cohorts with empty, oversized or non-printable names."""
    name = g.rng.choice(["", "   ", "c" * g.rng.randint(121, 200_000), "a\x00b", "\x1b[2J", "line\nbreak", "\x7f"])
    return Case(g.i, "cohort names", "cohort", f"cohort name {name[:20]!r} ({len(name)} chars)",
                [("name", None, name)], ("1-120",), encoding=g.rng.choice(["multipart", "urlencoded"]))


def g_control(g: Gen) -> Case:
    """A well-formed upload that must be accepted: archives in every format, in a folder or not, the
    separate files (client paths in file names are reduced to base names), the scheme in lower case."""
    v = g.rng.randrange(6)
    if v == 0:
        case = g.archive_case("control", g.members(), (), "archive")
    elif v == 1:
        case = g.archive_case("control", g.members(prefix=g.rng.choice(["lab1/", "handin/", "a/b/c/"])), (),
                              "archive with a folder")
    elif v == 2:
        case = g.files_case("control", dict(g.good), (), "separate files")
    elif v == 3:
        name = g.rng.choice(LAB_FILES)
        case = g.files_case("control", dict(g.good, **{name: (f"../../{name}", g.good[name])}), (),
                            f"file name ../../{name}", channel="api")
    elif v == 4:
        case = g.files_case("control", dict(g.good), (), "scheme 'bearer'", channel="api",
                            auth="bearer " + g.tokens["alice"])
    else:
        case = g.archive_case("control", g.members(prefix="d/" * 100), (), "archive 100 folders deep",
                              formats=("tgz", "zip"))
    case.control = True
    return case


GENERATORS = [  # (generator, weight)
    (g_traversal, 10), (g_absolute, 6), (g_symlink, 6), (g_hardlink, 4), (g_device, 5), (g_huge, 6),
    (g_deep, 6), (g_bomb, 5), (g_bad_content, 7), (g_bad_name, 7), (g_duplicate, 4), (g_wrong_files, 8),
    (g_empty, 4), (g_damaged, 5), (g_field_types, 6), (g_oversized, 4), (g_api_auth, 5), (g_csrf, 4),
    (g_login, 5), (g_password, 2), (g_roster, 6), (g_assignment, 5), (g_extension, 3), (g_cohort, 3),
    (g_control, 4),
]


def make_case(i: int, n: int, seed: int, run_id: str, bombs: Bombs, tokens: dict[str, str],
              good: dict[str, bytes]) -> Case:
    """Case `i` of `n`, drawn from GENERATORS by weight with its own random source seeded from (seed, i),
    so that it is the same case whichever thread makes it (the run id only names markers). The first
    cases use every generator once when n is at least twice their number."""
    rng = random.Random(f"{seed}-{i}")
    fns = [f for f, _ in GENERATORS]
    fn = fns[i] if i < len(fns) and n >= 2 * len(fns) else rng.choices(fns, [w for _, w in GENERATORS])[0]
    return fn(Gen(i, rng, run_id, bombs, tokens, good))


# --------------------------------------------------------------------------------------------------
# Sending cases
# --------------------------------------------------------------------------------------------------

class Callers:
    """One worker thread's callers: the API (no cookies), alice and the teacher logged in on the web,
    an anonymous visitor; each web caller with the CSRF token of its session."""

    WEB_PATHS = {"password": "/account/password", "cohort": "/instructor/cohorts", "login": "/login"}

    def __init__(self, port: int, ids: dict):
        self.ids = ids
        self.api = Client(port)
        self.alice, self.teacher, self.anon = Client(port), Client(port), Client(port)
        for c, user in ((self.alice, "alice"), (self.teacher, "teacher")):
            r = login(c, user, PASSWORDS[user])
            if r.status != 302:
                raise RuntimeError(f"could not log in as {user}: {r.status} {reply_message(r)}")
        self.csrf = {id(c): session_csrf(c) for c in (self.alice, self.teacher, self.anon)}

    def for_channel(self, channel: str) -> tuple[Client, str]:
        """The caller and URL of a channel."""
        a = self.ids
        if channel == "web":
            return self.alice, f"/assignments/{a['assignment']}/submit"
        if channel == "password":
            return self.alice, self.WEB_PATHS["password"]
        if channel == "login":
            return self.anon, "/login"
        paths = {"roster": f"/instructor/cohorts/{a['cohort']}/roster",
                 "assignment": f"/instructor/cohorts/{a['empty_cohort']}/assignments",
                 "extension": f"/instructor/assignments/{a['assignment']}/extensions",
                 "cohort": "/instructor/cohorts"}
        return self.teacher, paths[channel]

    def close(self) -> None:
        """Close every caller's connection."""
        for c in (self.api, self.alice, self.teacher, self.anon):
            c.close()

    @property
    def requests(self) -> int:
        """HTTP requests sent by this worker's callers."""
        return sum(c.requests for c in (self.api, self.alice, self.teacher, self.anon))


def body_of(case: Case, csrf: str | None) -> tuple[bytes, str]:
    """The request body of a case (with `csrf` as the first field when not None)."""
    if case.raw is not None:
        return case.raw
    parts = ([("csrf_token", None, csrf)] if csrf is not None else []) + list(case.parts)
    if case.encoding == "urlencoded":
        return urlencoded([(name, data) for name, _fn, data in parts])
    return multipart(parts)


def send(case: Case, callers: Callers, tokens: dict[str, str]) -> dict:
    """Send one case; returns what came back: status, message, where a redirect led, a receipt id."""
    if case.channel == "api":
        headers = {}
        if case.auth == "token":
            headers["Authorization"] = f"Bearer {tokens['alice']}"
        elif case.auth is not None:
            headers["Authorization"] = case.auth
        body, ctype = body_of(case, None)
        headers["Content-Type"] = ctype
        r = callers.api.request("POST", case.path or "/api/v1/labs/lab1/submissions", body, headers)
        j = r.json() or {}
        receipt = j.get("id") if r.status == 201 else None
        return {"status": r.status, "message": reply_message(r), "receipt": receipt, "error": r.error}
    client, path = callers.for_channel(case.channel)
    own = callers.csrf[id(client)]
    csrf = {"valid": own, "missing": None, "forged": "IjAxMjM0NTY3ODlhYmNkZWYi.ZZZZZZ.forged",
            "foreign": callers.csrf[id(callers.anon if client is not callers.anon else callers.alice)]}[case.csrf]
    body, ctype = body_of(case, csrf)
    r = client.request("POST", case.path or path, body, {"Content-Type": ctype})
    out = {"status": r.status, "message": reply_message(r), "receipt": None, "error": r.error, "flash": ""}
    if r.status in (302, 303):
        target = location_path(r)
        out["location"] = target
        m = re.match(r"^/submissions/(\d+)$", target)
        if m:
            out["receipt"] = int(m.group(1))
        page = client.get(target) if target else None
        if page is not None:
            errors, others = page_messages(page.text())
            out["message"] = " | ".join(errors)
            out["flash"] = " | ".join(others)
            if page.status >= 500 or page.status < 0:
                out["follow_status"] = page.status
    return out


def judge(case: Case, out: dict) -> dict:
    """Classify a reply: server error, refused with a clear message, refused unclearly, or accepted."""
    status = out["status"]
    server_error = status < 0 or status >= 500 or out.get("follow_status", 0) >= 500 or \
        out.get("follow_status", 0) < 0
    msg = out["message"] or ""
    said = any(k.lower() in msg.lower() for k in case.expect) if case.expect else False
    refused_status = 400 <= status < 500 or (case.channel != "api" and status in (302, 303) and bool(msg)
                                             and not out.get("receipt"))
    accepted = bool(out.get("receipt")) or (case.channel != "api" and status in (302, 303) and not msg)
    return {"server_error": server_error, "refused": refused_status and said and not server_error,
            "unclear": refused_status and not said, "accepted": accepted}


def run_cases(n: int, make, port: int, ids: dict, tokens: dict, workers: int, progress
              ) -> tuple[list[Case], list[dict], int]:
    """Make and send cases 0..n-1 (make(i) -> Case), `workers` callers in parallel, case i by worker
    i % workers; progress every ~250 cases. Returns the cases (without their bodies), what came back
    and how many HTTP requests were sent."""
    cases: list[Case | None] = [None] * n
    results: list[dict | None] = [None] * n
    counts = {"done": 0, "requests": 0}
    lock = threading.Lock()
    failures: list[BaseException] = []
    t0 = time.monotonic()

    def work(k: int) -> None:
        try:
            callers = Callers(port, ids)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failures.append(e)
            return
        try:
            for idx in range(k, n, workers):
                case = make(idx)
                out = send(case, callers, tokens)
                out.update(judge(case, out))
                cases[idx], results[idx] = dataclasses.replace(case, parts=[], raw=None), out
                with lock:
                    counts["done"] += 1
                    if counts["done"] % 250 == 0 or counts["done"] == n:
                        progress(f"uploads: {counts['done']}/{n} cases sent ({time.monotonic() - t0:.0f}s)")
        except BaseException as e:  # noqa: BLE001 - re-raised below
            failures.append(e)
        finally:
            with lock:
                counts["requests"] += callers.requests
            callers.close()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return cases, results, counts["requests"]


# --------------------------------------------------------------------------------------------------
# After the run: what is in the store, what changed in the database, what escaped
# --------------------------------------------------------------------------------------------------

def file_listing(root: Path) -> set[str]:
    """Every file and folder under `root`, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def marker_hits(roots: list[Path], needle: str, shallow: list[Path]) -> list[str]:
    """Paths whose name contains `needle`: a full walk of `roots` (not following links), and the entries
    directly in each of `shallow`."""
    hits = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            for name in dirnames + filenames:
                if needle in name:
                    hits.add(os.path.join(dirpath, name))
    for folder in shallow:
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if needle in entry.name:
                    hits.add(entry.path)
    return sorted(hits)


def outside_files(sandbox: Path, instance: Path, before: set[str]) -> list[str]:
    """New files in the sandbox that are neither in the store nor the service's own (database, queue,
    config, the server's log)."""
    out = []
    for rel in sorted(file_listing(sandbox) - before):
        parts = Path(rel).parts
        if re.fullmatch(r"web\d+\.log", rel) or parts == ("instance",):
            continue
        if parts[0] == "instance" and len(parts) > 1:
            if parts[1] == "store" or (len(parts) == 2 and SERVICE_FILES.match(parts[1])):
                continue
        out.append(rel)
    return out


def store_check(app, control_receipts: set[int]) -> dict:
    """Submissions rows that no control upload produced, and store entries that belong to no submission
    (left-over temp folders, stray files)."""
    from grader.service.models import Submission, db

    with app.app_context():
        subs = db.session.execute(db.select(Submission.id, Submission.storage_key, Submission.files_json)).all()
        store_dir = Path(app.config["STORE_DIR"])
    keys = {key: set(json.loads(files)) | {".upload"} for _id, key, files in subs}
    stray = []
    for p in sorted(store_dir.rglob("*")) if store_dir.exists() else []:
        rel = p.relative_to(store_dir)
        parts = rel.parts
        if p.is_dir() and not p.is_symlink() and (len(parts) <= 2 and parts[0] == "submissions"
                                                 or "/".join(parts) in keys):
            continue
        key = "/".join(parts[:-1])
        if p.is_file() and not p.is_symlink() and key in keys and parts[-1] in keys[key]:
            continue
        if parts[0] == "artifacts":
            continue
        stray.append(str(rel))
    hostile_rows = sorted(i for i, _k, _f in subs if i not in control_receipts)
    return {"submissions": len(subs), "hostile_rows": hostile_rows, "stray_store_entries": stray}


# --------------------------------------------------------------------------------------------------
# The part
# --------------------------------------------------------------------------------------------------

def seed_instance(app) -> tuple[dict, dict]:
    """Seed like the service tests (teacher, alice and bob in c1 with lab1) plus a cohort without
    assignments (the target of the lab-settings forms); API tokens for alice: valid, revoked, expired."""
    from grader.service.models import Cohort, db

    ids = seed(app, deadline_days=30)
    with app.app_context():
        c = Cohort(name="faults-empty")
        db.session.add(c)
        db.session.commit()
        ids["empty_cohort"] = c.id
    tokens = {"alice": add_token(app, ids["alice"]), "revoked": add_token(app, ids["alice"], revoked=True),
              "expired": add_token(app, ids["alice"], expired=True)}
    return ids, tokens


def summarise(cases: list[Case], results: list[dict]) -> dict:
    """Per category: cases, refused with a clear message, refused unclearly, accepted, server errors."""
    out: dict[str, dict] = {}
    for c, r in zip(cases, results):
        s = out.setdefault(c.category, {"cases": 0, "refused": 0, "unclear": 0, "accepted": 0, "server_errors": 0})
        s["cases"] += 1
        s["refused"] += r["refused"]
        s["unclear"] += r["unclear"]
        s["accepted"] += r["accepted"]
        s["server_errors"] += r["server_error"]
    return out


def failing(cases: list[Case], results: list[dict], pred, limit: int = 8) -> list[dict]:
    """The first `limit` cases for which pred(case, result) holds, as (category, what, status, message)."""
    out = []
    for c, r in zip(cases, results):
        if pred(c, r):
            out.append({"case": c.i, "category": c.category, "channel": c.channel, "what": c.what[:120],
                        "status": r["status"], "message": (r["message"] or r.get("error") or "")[:200],
                        "expected": list(c.expect)})
            if len(out) >= limit:
                break
    return out


def brief(items: list[dict], n: int = 3) -> str:
    """A figure note from the first failing cases."""
    return "; ".join(f"#{x['case']} {x['category']}/{x['channel']} {x['what'][:60]} -> {x['status']} "
                     f"{x['message'][:80]!r}" for x in items[:n])


def measure(n: int = 2000, progress=print, seed: int = 20240601, workers: int = 3) -> dict:
    """Generate `n` hostile upload and form cases, send them to a real web process over 127.0.0.1, and
    count server errors, escapes, refusals with a clear message and anything hostile stored."""
    t0 = time.monotonic()
    run_id = secrets.token_hex(4)
    sandbox, instance = new_sandbox("copylab-faults-uploads-")
    try:
        with in_process_app(instance) as app:
            from flask_migrate import upgrade

            with app.app_context():
                upgrade()
            ids, tokens = seed_instance(app)
            skip = {"api_tokens": {"last_used_at"}}
            rows_before = table_rows(app, skip)
        bombs, good = Bombs(), lab_files()

        def make(i: int) -> Case:
            return make_case(i, n, seed, run_id, bombs, tokens, good)
        listing_before = file_listing(sandbox)
        with ServiceProcesses(instance, progress=progress, logs=sandbox) as server:
            progress(f"uploads: {n} cases against the web process on 127.0.0.1:{server.port}")
            cases, results, requests = run_cases(n, make, server.port, ids, tokens, workers, progress)
        exceptions = server.exceptions()
        with in_process_app(instance) as app:
            control_receipts = {r["receipt"] for c, r in zip(cases, results) if c.control and r["receipt"]}
            store = store_check(app, control_receipts)
            changes = row_changes(rows_before, table_rows(app, skip))
        hits = marker_hits([sandbox, Path(tempfile.gettempdir())], f"copylab-faults-{run_id}",
                           [REPO, REPO.parent, Path.home(), Path("/")])
        outside = outside_files(sandbox, instance, listing_before)
        return report(cases, results, store, changes, hits, outside, exceptions,
                      {"n": n, "seed": seed, "run_id": run_id, "workers": workers, "requests": requests,
                       "elapsed_s": round(time.monotonic() - t0, 1)})
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


def report(cases, results, store, changes, hits, outside, exceptions, meta) -> dict:
    """The part's figures and details from the results and the checks after the run."""
    hostile = [(c, r) for c, r in zip(cases, results) if not c.control]
    controls = [(c, r) for c, r in zip(cases, results) if c.control]
    errors = failing(cases, results, lambda c, r: r["server_error"])
    not_refused = failing(cases, results, lambda c, r: not c.control and not r["refused"])
    controls_bad = failing(cases, results, lambda c, r: c.control and not r["accepted"])
    refused = sum(r["refused"] for _c, r in hostile)
    # rows changed by hostile forms: everything but the control submissions and their jobs, and the
    # login throttle's counts of the hostile logins' failures (digests, nothing the forms sent)
    table_changes = {t: v for t, v in changes.items() if t not in ("submissions", "jobs", "login_throttle")}
    stored_hostile = len(store["hostile_rows"]) + len(store["stray_store_entries"]) + \
        sum(v["added"] + v["removed"] + v["changed"] for v in table_changes.values())
    escapes = len(hits) + len(outside)
    figures = [
        zero(PART, "server errors (HTTP 5xx or dropped connection)", sum(r["server_error"] for r in results),
             brief(errors) + (f"; server log: {exceptions[0]}" if exceptions else "")),
        zero(PART, "files written outside the store", escapes, "; ".join((hits + outside)[:3])),
        ratio(PART, "hostile cases refused with a clear message", refused, len(hostile),
              brief(not_refused) if refused < len(hostile) else
              f"{len(hostile)} cases in {len({c.category for c, _r in hostile})} categories; web forms "
              "answer 303 and show the refusal as an error message on the next page"),
        zero(PART, "hostile cases stored", stored_hostile,
             f"submissions {store['hostile_rows'][:5]}, store {store['stray_store_entries'][:3]}, "
             f"tables {table_changes}" if stored_hostile else ""),
        ratio(PART, "well-formed control uploads accepted", sum(r["accepted"] for _c, r in controls), len(controls),
              brief(controls_bad)),
    ]
    return {
        "figures": [f.as_dict() for f in figures],
        **meta,
        "categories": summarise(cases, results),
        "server_errors": errors, "not_refused": not_refused, "controls_refused": controls_bad,
        "server_log_exceptions": exceptions, "escaped_markers": hits[:20], "files_outside_store": outside[:20],
        "store": {"submissions": store["submissions"], "hostile_rows": store["hostile_rows"][:20],
                  "stray_store_entries": store["stray_store_entries"][:20]},
        "table_changes": table_changes,
    }

