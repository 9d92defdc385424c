"""Host evidence source "nic-trace": QEMU's own trace events of lab 2's emulated e1000e cards.

The card's side of copies #2 and #3 is seen only by the hypervisor: the guest-physical address and
length of every buffer the card reads a frame from (``e1000e_tx_descr``) and writes a frame into
(``e1000e_rx_desc_buff_write``). The events are switched on through the HMP monitor just before the
student's programs run and off right after; QEMU 7.2's ``log`` trace backend writes them to QEMU's
stderr, which the runner keeps in ``<name>.qemu.err`` (only this run's part is read, by offset).

Besides the events the source reads, through the monitor and never through guest code:
- the direct map's base (``page_offset_base``, randomised per boot by KASLR; its address from
  /proc/kallsyms, read as root before any student code runs), so kernel virtual addresses of the
  direct map translate to guest-physical ones: PA = VA - base;
- the first bytes of each frame the card wrote (``xp``), so "the message was there" is observed.

Observations: ``nic_tx`` {addr, len}, ``nic_rx`` {addr, len, bytes}, ``direct_map`` {base}.
"""

from __future__ import annotations

import re
import shlex

from grader.engine.hostevidence import HostEvidence, HostEvidenceUnavailable, Observation
from grader.engine.run import HELPER

NAME = "nic-trace"
WHERE = "QEMU's trace events of the emulated e1000e cards, read on the grader host"
TX_EVENT = "e1000e_tx_descr"
RX_EVENT = "e1000e_rx_desc_buff_write"
EVENTS = (TX_EVENT, RX_EVENT)
DIRECT_MAP_SYMBOL = "page_offset_base"
# bounds: a module that floods the cards cannot make collect read or probe without end
MAX_LOG_BYTES = 4_000_000
MAX_FRAME_READS = 24
FRAME_READ_BYTES = 96

# TX descriptor command bits (82574L datasheet 7.2.10): DEXT marks an extended descriptor, whose type
# DTYP_D is a data descriptor (else a context descriptor that carries no buffer); the length field is
# 20 bits in a data descriptor, 16 in a legacy one
DEXT = 1 << 29
DTYP_D = 1 << 20

# optional "PID@SECONDS.USEC:" prefix (QEMU's -msg timestamp=on)
_PREFIX = r"^(?:\d+@\d+\.\d+:)?"
_TX_RE = re.compile(_PREFIX + TX_EVENT + r" (?:0x)?([0-9a-fA-F]+|\(nil\)) : ([0-9a-fA-F]+) ([0-9a-fA-F]+)\s*$")
_RX_RE = re.compile(_PREFIX + RX_EVENT + r" buffer #(\d+), addr: 0x([0-9a-fA-F]+), offset: (\d+), "
                    r"from: \S+, length: (\d+)\s*$")
_XP_RE = re.compile(r"^[0-9a-fA-F]+:((?:\s+0x[0-9a-fA-F]{2})+)\s*$")


def tx_length(lower: int) -> int | None:
    """The buffer length of a TX descriptor, None for a context descriptor (no buffer)."""
    if lower & DEXT:
        return lower & 0xFFFFF if lower & DTYP_D else None
    return lower & 0xFFFF


def parse_nic_log(text: str) -> list[Observation]:
    """The card's reads (nic_tx) and writes (nic_rx) in order. A frame the card writes in pieces
    (offset > 0 into the same buffer) is one nic_rx whose length is the pieces' sum."""
    out: list[Observation] = []
    for line in text.splitlines():
        if m := _TX_RE.match(line):
            if m[1] == "(nil)":
                continue
            length = tx_length(int(m[2], 16))
            if length is not None:
                out.append(Observation("nic_tx", {"addr": int(m[1], 16), "len": length}))
        elif m := _RX_RE.match(line):
            addr, offset, length = int(m[2], 16), int(m[3]), int(m[4])
            last = out[-1] if out and out[-1].kind == "nic_rx" else None
            if offset and last is not None and last.values["addr"] == addr and last.values["len"] == offset:
                last.values["len"] += length
            elif offset == 0:
                out.append(Observation("nic_rx", {"addr": addr, "len": length}))
    return out


def parse_xp(text: str) -> bytes:
    """The bytes of an HMP ``xp /Nxb ADDR`` answer ("ADDR: 0x48 0x45 ...", 8 per line)."""
    data = bytearray()
    for line in text.splitlines():
        if m := _XP_RE.match(line.strip()):
            data += bytes(int(b, 16) for b in m[1].split())
    return bytes(data)


class NicTrace:
    """One lab VM's card trace (the source protocol in grader/engine/hostevidence.py)."""

    name = NAME
    where = WHERE

    def __init__(self, qemu_vm, helper: str = HELPER, sudo: str = "sudo -n"):
        self.qemu = qemu_vm
        self.helper, self.sudo = helper, sudo
        self.base: int | None = None
        self.offset = 0
        self.notes: list[str] = []

    def _monitor(self, command: str) -> str:
        return self.qemu.monitor(command, timeout=30)

    def prepare(self, ex, run) -> None:
        for event in EVENTS:
            try:
                listed = self._monitor(f"info trace-events {event}")
            except OSError as e:
                raise HostEvidenceUnavailable(f"QEMU's monitor does not answer: {e}") from e
            if not re.search(rf"^{event} : state [01]$", listed, re.M):
                raise HostEvidenceUnavailable(f"this QEMU has no trace event {event} (another QEMU build?): "
                                              f"{listed or 'no answer'}")
        r = ex.run(f"{self.sudo} {shlex.quote(self.helper)} kallsyms {DIRECT_MAP_SYMBOL}", timeout=60)
        m = re.match("^" + DIRECT_MAP_SYMBOL + r" 0x([0-9a-f]+)$", r.stdout.strip())
        if not r.ok or not m:
            raise HostEvidenceUnavailable(f"cannot read the address of {DIRECT_MAP_SYMBOL} in the clean guest: "
                                          f"{(r.stderr or r.stdout).strip()[:200]}")
        # the variable's value, read by the hypervisor through the vCPU's page tables
        answer = self._monitor(f"x /1gx 0x{m[1]}")
        value = re.search(r":\s+0x([0-9a-f]+)\s*$", answer)
        if not value:
            raise HostEvidenceUnavailable(f"QEMU could not read {DIRECT_MAP_SYMBOL}: {answer[:200]}")
        self.base = int(value[1], 16)
        self.notes.append(f"direct map base ({DIRECT_MAP_SYMBOL} at 0x{m[1]}): 0x{self.base:x}")

    def arm(self, run) -> None:
        path = self.qemu.stderr_path
        self.offset = path.stat().st_size if path.exists() else 0
        for event in EVENTS:
            self._monitor(f"trace-event {event} on")

    def _disarm(self) -> list[str]:
        problems = []
        for event in EVENTS:
            try:
                self._monitor(f"trace-event {event} off")
            except OSError as e:
                problems.append(f"trace-event {event} off: {e}")
        return problems

    def _log(self) -> str:
        path = self.qemu.stderr_path
        try:
            size = path.stat().st_size
        except OSError:
            return ""
        # a QEMU started again since arm (after a crash) has a new, shorter stderr
        start = self.offset if size >= self.offset else 0
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(MAX_LOG_BYTES)
        return data.decode(errors="replace")

    def collect(self, run) -> HostEvidence:
        problems = self._disarm() if self.qemu.running() else ["QEMU is not running"]
        text = self._log()
        lines = [ln for ln in text.splitlines() if ln.startswith(EVENTS) or re.match(r"^\d+@", ln)]
        observations = parse_nic_log("\n".join(lines))
        reads = []
        if self.qemu.running():
            for o in [o for o in observations if o.kind == "nic_rx"][:MAX_FRAME_READS]:
                try:
                    answer = self._monitor(f"xp /{FRAME_READ_BYTES}xb 0x{o.values['addr']:x}")
                except OSError as e:
                    problems.append(f"xp 0x{o.values['addr']:x}: {e}")
                    continue
                o.values["bytes"] = parse_xp(answer)[:min(FRAME_READ_BYTES, o.values["len"])]
                reads.append(f"xp 0x{o.values['addr']:x}: {o.values['bytes'].hex()}")
        if self.base is not None:
            observations.append(Observation("direct_map", {"base": self.base}))
        n_tx = sum(o.kind == "nic_tx" for o in observations)
        n_rx = sum(o.kind == "nic_rx" for o in observations)
        detail = (f"the cards read {n_tx} and wrote {n_rx} frame buffers while the programs ran" if n_tx or n_rx
                  else "no frame went through the lab cards while the programs ran (QEMU logged no e1000e "
                       "TX or RX event): was the lab network up?")
        if problems:
            detail += "; " + "; ".join(problems)
        raw = "\n".join(self.notes + lines + reads) + "\n"
        return HostEvidence(self.name, self.where, "failed" if problems else "ok", detail, observations, raw)


def offer(lab_vm, lab, profile):
    """(source, why) for a QemuLabVM: only one with lab 2's cards (nic_pair)."""
    qemu = getattr(lab_vm, "vm", None)
    if qemu is None or not getattr(qemu, "nic_pair", False):
        return None, "this VM has no e1000e lab cards (QemuLabVM(nic_pair=True))"
    return NicTrace(qemu), ""
