"""Archives for the hostile-upload cases (faults/upload_cases.py): tar (plain or gzip) and zip written
member by member so that nothing is sanitised (names, types and sizes exactly as a case needs them), pax
records, and decompression bombs made once per run."""
from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile
import zlib


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
