"""The hostile upload and form cases of the uploads part (faults/uploads.py), one generator per kind of
case (``case_*``), each drawing its variant from the case's own seeded random source; ``make_case``
draws the generator by weight (GENERATORS). A few well-formed control uploads are among them.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import random
import secrets
import tarfile

from faults.upload_archives import M, Bombs, dir_headers, pax_tar, tar_bytes, zip_bytes, zip_of
from support.http import multipart, urlencoded

LAB_FILES = ("sender.c", "receiver.c", "copytrace.c")


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

def case_member_climbing_out_of_the_upload(g: Gen) -> Case:
    """A member (file or folder) whose path climbs out of the upload."""
    name = g.escape_path()
    if g.rng.random() < 0.2:
        return g.archive_case("traversal", g.insert(g.members(), M(name + "/", kind="dir")), ("escapes",),
                              f"folder {name!r}")
    return g.archive_case("traversal", g.insert(g.members(), M(name, b"int x;\n")), ("escapes",),
                          f"member {name!r}")


def case_member_with_an_absolute_path(g: Gen) -> Case:
    """A member with an absolute path."""
    name = g.absolute_path()
    members = g.members()
    members[g.rng.randrange(len(members))] = M(name, g.good["sender.c"])
    return g.archive_case("absolute path", members, ("escapes",), f"member {name!r}")


def case_lab_file_as_a_symbolic_link(g: Gen) -> Case:
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


def case_lab_file_as_a_hard_link(g: Gen) -> Case:
    """A lab file that is a hard link."""
    target = g.rng.choice(["receiver.c", "/etc/shadow", f"../../{g.marker}", f"/tmp/{g.marker}"])
    members = [m for m in g.members() if m.name != "copytrace.c"]
    return g.archive_case("hardlink", g.insert(members, M("copytrace.c", kind="lnk", link=target)),
                          ("not a regular file",), f"copytrace.c hard link -> {target}", formats=("tgz", "tar"))


def case_lab_file_as_a_device_fifo_or_socket(g: Gen) -> Case:
    """A lab file that is a device, a FIFO or a socket."""
    kind = g.rng.choice(["chr", "blk", "fifo", "sock"])
    formats = ("zip",) if kind == "sock" else ("tgz", "tar", "zip")
    name = g.rng.choice(LAB_FILES)
    members = [m for m in g.members() if m.name != name]
    return g.archive_case("device or fifo", g.insert(members, M(name, kind=kind)), ("not a regular file",),
                          f"{name} is a {kind}", formats=formats)


def case_over_a_size_cap(g: Gen) -> Case:
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


def case_nested_too_deep(g: Gen) -> Case:
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


def case_decompression_bomb(g: Gen) -> Case:
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


def case_lab_file_not_utf8_text(g: Gen) -> Case:
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


def case_bad_member_or_field_name(g: Gen) -> Case:
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


def case_lab_file_twice(g: Gen) -> Case:
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


def case_wrong_set_of_files(g: Gen) -> Case:
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


def case_empty_files_or_archive(g: Gen) -> Case:
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


def case_damaged_archive(g: Gen) -> Case:
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


def case_wrong_field_types(g: Gen) -> Case:
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


def case_oversized_form_fields(g: Gen) -> Case:
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


def case_bad_api_credentials(g: Gen) -> Case:
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


def case_bad_csrf_token(g: Gen) -> Case:
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


def case_hostile_login_form(g: Gen) -> Case:
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


def case_hostile_password_form(g: Gen) -> Case:
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


def case_hostile_roster_import(g: Gen) -> Case:
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


def case_hostile_lab_settings_form(g: Gen) -> Case:
    """Lab settings (a new assignment) with wrong field types, out-of-range and oversized values."""
    field, values, keyword = g.rng.choice(ASSIGNMENT_BAD)
    form = {"lab": "lab1", "deadline": "2031-01-01T00:00", "title": "faults"}
    form[field] = g.rng.choice(values)
    return Case(g.i, "lab settings", "assignment", f"{field}={form[field][:30]!r}",
                [(k, None, v) for k, v in form.items()], (keyword,), encoding=g.rng.choice(["multipart", "urlencoded"]))


def case_hostile_extension_form(g: Gen) -> Case:
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


def case_hostile_cohort_name(g: Gen) -> Case:
    """New cohorts with empty, oversized or non-printable names."""
    name = g.rng.choice(["", "   ", "c" * g.rng.randint(121, 200_000), "a\x00b", "\x1b[2J", "line\nbreak", "\x7f"])
    return Case(g.i, "cohort names", "cohort", f"cohort name {name[:20]!r} ({len(name)} chars)",
                [("name", None, name)], ("1-120",), encoding=g.rng.choice(["multipart", "urlencoded"]))


def case_well_formed_control_upload(g: Gen) -> Case:
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


GENERATORS = [  # (generator, weight): the first cases of a run take them in this order
    (case_member_climbing_out_of_the_upload, 10),
    (case_member_with_an_absolute_path, 6),
    (case_lab_file_as_a_symbolic_link, 6),
    (case_lab_file_as_a_hard_link, 4),
    (case_lab_file_as_a_device_fifo_or_socket, 5),
    (case_over_a_size_cap, 6),
    (case_nested_too_deep, 6),
    (case_decompression_bomb, 5),
    (case_lab_file_not_utf8_text, 7),
    (case_bad_member_or_field_name, 7),
    (case_lab_file_twice, 4),
    (case_wrong_set_of_files, 8),
    (case_empty_files_or_archive, 4),
    (case_damaged_archive, 5),
    (case_wrong_field_types, 6),
    (case_oversized_form_fields, 4),
    (case_bad_api_credentials, 5),
    (case_bad_csrf_token, 4),
    (case_hostile_login_form, 5),
    (case_hostile_password_form, 2),
    (case_hostile_roster_import, 6),
    (case_hostile_lab_settings_form, 5),
    (case_hostile_extension_form, 3),
    (case_hostile_cohort_name, 3),
    (case_well_formed_control_upload, 4),
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
