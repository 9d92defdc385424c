"""Parsers for what a grading run collects: /dev/kmsg records, the module's COPY records, the lab
programs' output lines, tracefs trace lines, crash markers and the taint mask. Stdlib only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# ---------------------------------------------------------------- /dev/kmsg
FACILITY_KERNEL = 0


@dataclass
class KmsgRecord:
    prio: int
    seq: int
    ts_usec: int
    flags: str
    text: str
    extra: list[str] = field(default_factory=list)   # continuation (dictionary) lines
    raw: str = ""

    @property
    def facility(self) -> int:
        return self.prio >> 3

    @property
    def level(self) -> int:
        return self.prio & 7


_KMSG_RE = re.compile(r"^(\d+),(\d+),(\d+),([^,;]*)(?:,[^;]*)?;(.*)$")


def parse_kmsg(text: str, after_seq: int | None = None,
               kernel_only: bool = True) -> list[KmsgRecord]:
    """Records as /dev/kmsg gives them (``prio,seq,ts_usec,flags[,...];text``), one per line;
    lines starting with a space continue the previous record. Keeps facility 0 (kernel) records
    only (user-space writes to /dev/kmsg carry another facility) and, with ``after_seq``, only
    records with seq > after_seq. Unparsable lines are ignored."""
    records: list[KmsgRecord] = []
    cur: KmsgRecord | None = None
    for line in text.splitlines():
        if line.startswith(" "):
            if cur is not None:
                cur.extra.append(line[1:])
            continue
        m = _KMSG_RE.match(line)
        if not m:
            cur = None
            continue
        cur = KmsgRecord(int(m[1]), int(m[2]), int(m[3]), m[4], m[5], raw=line)
        records.append(cur)
    return [r for r in records
            if (not kernel_only or r.facility == FACILITY_KERNEL)
            and (after_seq is None or r.seq > after_seq)]


# ---------------------------------------------------------------- the module's records
# "[KIND] key=value ..." with %px addresses: lab 1's COPY1/COPY4, lab 2's TX, RX and COPYBREAK too
RECORD_KINDS = ("COPY1", "COPY4", "TX", "RX", "COPYBREAK")
COPY_KINDS = ("COPY1", "COPY4")
ADDRESS_KEYS = ("src", "dest", "data", "pa")


@dataclass
class ModuleRecord:
    kind: str                 # one of RECORD_KINDS
    src: int | None
    dest: int | None
    len: int
    text: str                 # the record's whole text
    seq: int | None = None
    data: int | None = None   # TX/RX: the frame's kernel virtual address
    pa: int | None = None     # TX/RX: its physical address

    @property
    def user_addr(self) -> int | None:
        return self.src if self.kind == "COPY1" else self.dest

    @property
    def kernel_addr(self) -> int | None:
        return self.dest if self.kind == "COPY1" else self.src

    @property
    def milestone_form(self) -> bool:
        """First-milestone record: only the kernel side (no user address)."""
        return self.user_addr is None


_RECORD_RE = re.compile(r"\[(" + "|".join(RECORD_KINDS) + r")\]((?:\s+[a-z]+=\S+)+)")
_HEX_VALUE = re.compile(r"(?:0x)?([0-9a-fA-F]{1,16})")
_LEN_VALUE = re.compile(r"(\d+)")


def _record_fields(pairs: str) -> dict | None:
    """key=value pairs -> {key: int}; None when an address or the length does not parse, or no len."""
    fields: dict[str, int] = {}
    for pair in pairs.split():
        key, _, value = pair.partition("=")
        pattern = _LEN_VALUE if key == "len" else _HEX_VALUE if key in ADDRESS_KEYS else None
        if pattern is None:
            continue          # keys of no contract are ignored
        m = pattern.match(value)
        if not m:
            return None
        fields[key] = int(m[1], 10 if key == "len" else 16)
    return fields if "len" in fields else None


def parse_records(records: list[KmsgRecord] | str, kinds: tuple[str, ...] = RECORD_KINDS) -> list[ModuleRecord]:
    """The module's records of these kinds found anywhere in kernel records' text. A COPY record may
    be in its first-milestone form (COPY1 "dest=.. len=..", COPY4 "src=.. len=.."); checks judge it."""
    if isinstance(records, str):
        records = parse_kmsg(records)
    out: list[ModuleRecord] = []
    for r in records:
        for m in _RECORD_RE.finditer(r.text):
            fields = _record_fields(m.group(2))
            if m.group(1) not in kinds or fields is None:
                continue
            out.append(ModuleRecord(m.group(1), fields.get("src"), fields.get("dest"), fields["len"],
                                    r.text, r.seq, fields.get("data"), fields.get("pa")))
    return out


def parse_copy_records(records: list[KmsgRecord] | str) -> list[ModuleRecord]:
    """COPY1/COPY4 records (full and milestone forms)."""
    return parse_records(records, COPY_KINDS)


# ---------------------------------------------------------------- program output
_ADDR = r"(0x[0-9a-fA-F]+|\(nil\))"


def _addr(s: str) -> int:
    return 0 if s == "(nil)" else int(s, 16)


@dataclass
class SenderReport:
    buffer: int | None = None
    sent_len: int | None = None
    sent_text: str | None = None
    addr: str | None = None
    port: int | None = None
    lines: list[str] = field(default_factory=list)


@dataclass
class ReceiverReport:
    listening_addr: str | None = None
    listening_port: int | None = None
    buffer: int | None = None
    received_len: int | None = None
    received_text: str | None = None
    lines: list[str] = field(default_factory=list)


_S_BUF = re.compile(r"^sender: buffer at " + _ADDR + r"\s*$")
_IPV4 = r"(\d{1,3}(?:\.\d{1,3}){3})"
_S_SENT = re.compile(r'^sender: sent (-?\d+) bytes "(.*)" to ' + _IPV4 + r":(\d+)\s*$")
_R_LISTEN = re.compile(r"^receiver: listening on " + _IPV4 + r":(\d+)\s*$")
_R_BUF = re.compile(r"^receiver: buffer at " + _ADDR + r"\s*$")
_R_RECV = re.compile(r'^receiver: received (-?\d+) bytes "(.*)"\s*$')


def parse_sender(text: str) -> SenderReport:
    rep = SenderReport()
    for line in text.splitlines():
        if m := _S_BUF.match(line):
            rep.buffer = _addr(m[1])
        elif m := _S_SENT.match(line):
            rep.sent_len, rep.sent_text, rep.addr, rep.port = int(m[1]), m[2], m[3], int(m[4])
        else:
            continue
        rep.lines.append(line)
    return rep


def parse_receiver(text: str) -> ReceiverReport:
    rep = ReceiverReport()
    for line in text.splitlines():
        if m := _R_LISTEN.match(line):
            rep.listening_addr, rep.listening_port = m[1], int(m[2])
        elif m := _R_BUF.match(line):
            rep.buffer = _addr(m[1])
        elif m := _R_RECV.match(line):
            rep.received_len, rep.received_text = int(m[1]), m[2]
        else:
            continue
        rep.lines.append(line)
    return rep


# ---------------------------------------------------------------- tracefs
@dataclass
class TraceEvent:
    comm: str
    pid: int
    cpu: int
    flags: str
    timestamp: float
    event: str
    location: str
    args: dict[str, str]
    line: str = ""

    def num(self, key: str) -> int | None:
        v = self.args.get(key)
        if v is None:
            return None
        try:
            return int(v, 0) if not v.lstrip("-").isdigit() else int(v)
        except ValueError:
            return None

    @property
    def user_addr(self) -> int | None:
        base, off = self.num("ubase"), self.num("uoff")
        if base is None:
            return None
        return base + (off or 0)

    def payload(self) -> bytes | None:
        w0, w1 = self.num("w0"), self.num("w1")
        if w0 is None or w1 is None:
            return None
        return decode_words(w0, w1, self.num("len"))


_TRACE_RE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s\d][^\s]*)\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>[\w.]+):\s+"
    r"(?:\((?P<loc>[^)]*)\))?\s*(?P<args>.*)$")
_ARG_RE = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_trace(text: str) -> list[TraceEvent]:
    """Lines of a tracefs ``trace`` file; '#' comment lines and unparsable lines are skipped."""
    out: list[TraceEvent] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _TRACE_RE.match(line)
        if not m:
            continue
        args = {}
        for k, v in _ARG_RE.findall(m["args"]):
            args[k] = v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v
        out.append(TraceEvent(
            comm=args.get("comm", m["task"]), pid=int(m["pid"]), cpu=int(m["cpu"]),
            flags=m["flags"] or "", timestamp=float(m["ts"]), event=m["event"],
            location=m["loc"] or "", args=args, line=line))
    return out


def decode_words(w0: int, w1: int, length: int | None = None) -> bytes:
    """Two little-endian 64-bit words -> the first 16 payload bytes (cut to ``length``)."""
    data = (w0 & (2**64 - 1)).to_bytes(8, "little") + (w1 & (2**64 - 1)).to_bytes(8, "little")
    if length is not None and 0 <= length < 16:
        data = data[:length]
    return data


# ---------------------------------------------------------------- crashes and taint
# "WARNING:" alone is too loose (user text, firmware notes); the kernel's WARN() splat is
# "WARNING: CPU: n PID: n at ...", and it counts as a fault (it also sets TAINT_WARN).
CRASH_PATTERNS = [
    re.compile(r"\bBUG:"),
    re.compile(r"\bkernel BUG at\b"),
    re.compile(r"\bOops\b"),
    re.compile(r"\bKernel panic\b"),
    re.compile(r"\bgeneral protection fault\b"),
    re.compile(r"\bUnable to handle kernel\b"),
    re.compile(r"\bWARNING: CPU: \d+ PID: \d+"),
]


def crash_lines(text_or_records: str | list[KmsgRecord]) -> list[str]:
    if isinstance(text_or_records, str):
        lines = text_or_records.splitlines()
    else:
        lines = [r.text for r in text_or_records]
    return [ln for ln in lines if any(p.search(ln) for p in CRASH_PATTERNS)]


TAINT_FLAGS = {
    0: ("PROPRIETARY_MODULE", False), 1: ("FORCED_MODULE", False), 2: ("CPU_OUT_OF_SPEC", True),
    3: ("FORCED_RMMOD", False), 4: ("MACHINE_CHECK", True), 5: ("BAD_PAGE", True),
    6: ("USER", False), 7: ("DIE", True), 8: ("OVERRIDDEN_ACPI_TABLE", False),
    9: ("WARN", True), 10: ("CRAP", False), 11: ("FIRMWARE_WORKAROUND", False),
    12: ("OOT_MODULE", False), 13: ("UNSIGNED_MODULE", False), 14: ("SOFTLOCKUP", True),
    15: ("LIVEPATCH", False), 16: ("AUX", False), 17: ("RANDSTRUCT", False), 18: ("TEST", False),
}
FATAL_TAINT_MASK = sum(1 << b for b, (_, fatal) in TAINT_FLAGS.items() if fatal)


def parse_taint(text: str | None) -> int | None:
    if text is None:
        return None
    s = text.strip().split()
    if not s:
        return None
    try:
        return int(s[0], 0)
    except ValueError:
        return None


def taint_names(mask: int) -> list[str]:
    return [TAINT_FLAGS.get(b, (f"bit{b}", True))[0] for b in range(64) if mask >> b & 1]


def new_fatal_taint(before: int | None, after: int | None) -> int:
    """Fatal taint bits set during the run (OOT_MODULE 4096 and UNSIGNED_MODULE 8192, expected for
    the lab's module, never count). Unknown bits above the table count as fatal."""
    if after is None:
        return 0
    new = after & ~(before or 0)
    unknown = new & ~sum(1 << b for b in TAINT_FLAGS)
    return (new & FATAL_TAINT_MASK) | unknown


# ---------------------------------------------------------------- the answers file
# A student's `key: value` file: untrusted text, so every limit is explicit and nothing in it is
# ever interpreted beyond a number where a check asks for one.
ANSWER_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
ANSWER_MAX_CHARS = 2000          # one answer, continuation lines included
ANSWER_MAX_KEYS = 100
_NUMBER_RE = re.compile(r"^\s*([-+]?)\s*(0x[0-9a-fA-F]+|\d+)\b")


@dataclass
class AnswersFile:
    values: dict[str, str] = field(default_factory=dict)   # key -> answer (empty: not answered)
    problems: list[str] = field(default_factory=list)      # lines that were not understood

    def answered(self, key: str) -> str | None:
        v = self.values.get(key, "").strip()
        return v or None


def parse_answers(text: str) -> AnswersFile:
    """``key: value`` lines; ``#`` starts a comment line; a line that begins with a space or a tab
    continues the previous answer. Keys are lower-case identifiers. A repeated key, a line without
    a colon, or an answer over ANSWER_MAX_CHARS is named in ``problems`` (its first value is kept)."""
    out = AnswersFile()
    key: str | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            key = None
            continue
        if line[0] in " \t":
            if key is None:
                out.problems.append(f"line {n}: an indented line continues no answer")
            elif len(out.values[key]) + len(line) >= ANSWER_MAX_CHARS:
                out.problems.append(f"line {n}: the answer to {key} is longer than "
                                    f"{ANSWER_MAX_CHARS} characters (cut there)")
                key = None
            else:
                out.values[key] = (out.values[key] + " " + line.strip()).strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not ANSWER_KEY_RE.fullmatch(name):
            out.problems.append(f"line {n}: not a `key: value` line: {line[:60]!r}")
            key = None
        elif name in out.values:
            out.problems.append(f"line {n}: {name} is answered twice (the first answer counts)")
            key = None
        elif len(out.values) >= ANSWER_MAX_KEYS:
            out.problems.append(f"line {n}: more than {ANSWER_MAX_KEYS} answers; the rest is ignored")
            break
        else:
            out.values[name] = value.strip()[:ANSWER_MAX_CHARS]
            key = name
    return out


def answer_number(text: str | None) -> int | None:
    """The integer an answer starts with (decimal or 0x hex, optionally signed): "0", "44 bytes",
    "-0x2c". None when the answer does not start with a number."""
    m = _NUMBER_RE.match(text or "")
    if not m:
        return None
    v = int(m[2], 0)
    return -v if m[1] == "-" else v
