"""Host evidence source "gdbstub": the hypervisor as witness of copies #1 and #4.

A QEMU lab VM runs with its gdbstub on a 127.0.0.1 socket the runner bound (QemuVM.gdbstub). Around
the run phase, gdb (``gdb -batch -nx -x gdb_witness_script.py``) attaches there and breaks on the UDP
callers of the copies, the kernel profile's [witness] points: ip_generic_getfrag (copy #1 about to
run: user source, kernel destination, length, the bytes at the source), udp_recvmsg (the receiver's
user buffer) and skb_consume_udp (copy #4 done: skb->data, length, the bytes at both ends). Each stop
reads registers and guest memory and lets the guest go on at once; only the lab's datagram stops it
in practice (2-3 stops per run). Under TCG the breakpoints live in QEMU's translator, not in guest
memory; under KVM they are hardware breakpoints (hbreak; a code path this machine cannot test).

The running kernel's addresses (KASLR) are read with the VM's root helper (``copylab-helper
kallsyms``) in the verify phase, before any student code runs; after that nothing comes from the guest.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from grader.engine.hostevidence import HostEvidence, HostEvidenceUnavailable, Observation
from grader.engine.run import HELPER
from grader.errors import LabSpecError

NAME = "gdbstub"
WHERE = "QEMU's gdbstub, read from the grader host (outside the guest)"
SCRIPT = Path(__file__).with_name("gdb_witness_script.py")
# gdb architecture names of the host's own gdb; others need Debian's gdb-multiarch
NATIVE_GDB_ARCH = {"x86_64": "i386:x86-64", "aarch64": "aarch64"}
LINE_RE = re.compile(r"^WITNESS (\w+)(?: (.*))?$")
FIELD_RE = re.compile(r"(\w+)=(\S+)")
ARM_TIMEOUT = 30.0      # gdb start, attach and breakpoints, on a loaded 2-core host
END_TIMEOUT = 20.0      # interrupt, detach and exit
MAX_STOPS = 200         # breakpoint stops per window before the witness disarms (a flood)
MAX_OTHER = 20          # stops of other lengths listed in the record
MAX_WINDOW = 600        # the script's own deadline, should the grader never end the window


def offer(lab_vm, lab, profile):
    """(source, "") for a QEMU lab VM with its gdbstub, else (None, why)."""
    qemu = getattr(lab_vm, "vm", None)
    if qemu is None or not getattr(qemu, "gdbstub", False):
        return None, "this VM runs without QEMU's gdbstub"
    try:
        plan = profile.witness_plan()
    except LabSpecError as e:
        return None, str(e)
    gdb = gdb_binary(plan["gdb_arch"])
    if gdb is None:
        return None, (f"no gdb for {plan['gdb_arch']} on the grader host (Debian package "
                      f"{'gdb' if plan['gdb_arch'] == NATIVE_GDB_ARCH.get(platform.machine()) else 'gdb-multiarch'})")
    return GdbWitness(qemu, plan, gdb, getattr(lab_vm, "snapshot_facts", None)), ""


def gdb_binary(gdb_arch: str) -> str | None:
    if gdb_arch == NATIVE_GDB_ARCH.get(platform.machine()):
        return shutil.which("gdb")
    return shutil.which("gdb-multiarch")


def parse_addresses(text: str, symbols: list[str]) -> dict[str, int]:
    """``copylab-helper kallsyms`` output ("SYM 0xADDR" lines) -> {symbol: address}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in symbols and re.fullmatch(r"0x[0-9a-f]{1,16}", parts[1]):
            out[parts[0]] = int(parts[1], 16)
    return out


def _value(key: str, raw: str):
    if raw == "-":
        return None
    if key in ("bytes", "dest_bytes"):
        try:
            return bytes.fromhex(raw)
        except ValueError:
            return None
    if key == "point":
        return raw
    try:
        return int(raw, 0)
    except ValueError:
        return raw


def parse_output(text: str) -> tuple[list[Observation], dict]:
    """gdb's output -> (observations "copy1", "copy4", "other"; facts: attached, armed, end reason,
    stops, other, errors). Lines that are not the script's own are ignored."""
    obs: list[Observation] = []
    facts = {"attached": False, "armed": False, "end": None, "stops": None, "other": None, "errors": [],
             "repeats": 0}
    for line in text.splitlines():
        m = LINE_RE.match(line.strip())
        if not m:
            continue
        word, rest = m.group(1), m.group(2) or ""
        if word == "attached":
            facts["attached"] = True
        elif word == "armed":
            facts["armed"] = True
        elif word in ("copy1", "copy4"):
            o = Observation(word, {k: _value(k, v) for k, v in FIELD_RE.findall(rest)})
            # the same call seen twice (the vCPU re-ran the breakpoint's instruction, e.g. after an
            # interrupt during gdb's step over it): one copy
            if o in obs:
                facts["repeats"] += 1
            else:
                obs.append(o)
        elif word == "other":
            point, _, tail = rest.partition(" ")
            obs.append(Observation("other", {"point": point, **{k: _value(k, v) for k, v in FIELD_RE.findall(tail)}}))
        elif word == "error":
            facts["errors"].append(rest)
        elif word == "end":
            fields = dict(FIELD_RE.findall(rest))
            facts["end"] = fields.get("reason", "?")
            facts["end_detail"] = rest.split("detail=", 1)[1] if "detail=" in rest else ""
            for k in ("stops", "other"):
                facts[k] = int(fields[k]) if fields.get(k, "").isdigit() else None
    return obs, facts


def evidence_from(text: str, length: int, gdb_status: str = "") -> HostEvidence:
    """The HostEvidence of one window from gdb's output."""
    obs, facts = parse_output(text)
    copies = [o for o in obs if o.kind in ("copy1", "copy4")]
    summary = (f"{sum(o.kind == 'copy1' for o in obs)} copy #1 and {sum(o.kind == 'copy4' for o in obs)} "
               f"copy #4 stops of {length} bytes, {facts['stops'] if facts['stops'] is not None else '?'} "
               f"stops in all, {facts['other'] or 0} of other lengths")
    if facts["repeats"]:
        summary += f" ({facts['repeats']} repeated stops of the same call counted once)"
    if facts["errors"]:
        summary += "; errors: " + "; ".join(facts["errors"][:3])
    if facts["end"] in ("stopped", "deadline"):
        status = "ok"
        detail = summary + ("" if copies else "; none of this run's length seen (did the sender send?)")
        if facts["end"] == "deadline":
            detail += "; the window ended at the script's deadline"
    elif not facts["attached"]:
        status, detail = "unavailable", f"gdb could not attach to the gdbstub: {facts.get('end_detail') or gdb_status or 'no output'}"
    else:
        status = "failed"
        detail = (f"the witness lost the VM during the run ({facts.get('end_detail') or gdb_status or 'gdb ended early'}: "
                  f"QEMU ended, e.g. a kernel panic); before that: {summary}")
    return HostEvidence(NAME, WHERE, status, detail, obs, text)


class GdbWitness:
    """One lab VM's witness: prepare (addresses, before student code), arm (gdb attached, breakpoints
    set), collect (interrupt, detach, parse)."""

    name = NAME
    where = WHERE

    def __init__(self, qemu, plan: dict, gdb: str, snapshot_facts: dict | None = None):
        self.qemu, self.plan, self.gdb = qemu, plan, gdb
        self.snapshot_facts = snapshot_facts if snapshot_facts is not None else {}
        self.addresses: dict[str, int] = {}
        self.addresses_from = ""
        self._proc: subprocess.Popen | None = None
        self._control: int | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._armed = threading.Event()

    # ------------------------------------------------------------- prepare
    def prepare(self, ex, run) -> None:
        if not self.qemu.running() or self.qemu.gdb_port is None:
            raise HostEvidenceUnavailable("QEMU is not running with its gdbstub")
        symbols = {p: spec["symbol"] for p, spec in self.plan["points"].items()}
        names = sorted(set(symbols.values()))
        key = ("kallsyms", *names)
        found = self.snapshot_facts.get(key)
        self.addresses_from = "read by copylab-helper kallsyms from this VM's clean snapshot"
        if found is None:
            # each kallsyms read costs seconds under TCG: once per snapshot, before any student code
            r = ex.run(f"sudo -n {HELPER} kallsyms {' '.join(names)}", timeout=30)
            found = parse_addresses(r.stdout, names)
            lacking = [s for s in names if s not in found]
            if lacking:
                raise HostEvidenceUnavailable(
                    f"the running kernel's addresses of {', '.join(lacking)} could not be read "
                    f"(copylab-helper kallsyms exited {r.exit_code}: {(r.stderr or r.stdout).strip()[:200]})")
            self.snapshot_facts[key] = found
            self.addresses_from += " in this run's verify phase"
        else:
            self.addresses_from += " in an earlier run's verify phase (the same kernel memory)"
        self.addresses = {p: found[s] for p, s in symbols.items()}

    # ----------------------------------------------------------------- arm
    def script_config(self, run, control_fd: int) -> dict:
        accel = getattr(self.qemu.accel, "accel", "tcg")
        return {**self.plan, "port": self.qemu.gdb_port, "addresses": self.addresses,
                "length": run.payload_len, "hardware": accel == "kvm", "control_fd": control_fd,
                "max_seconds": MAX_WINDOW, "max_stops": MAX_STOPS, "max_other": MAX_OTHER,
                "remote_timeout": 10}

    def arm(self, run) -> None:
        self._lines, self._armed = [], threading.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix="copylab-witness-")
        read_end, self._control = os.pipe()
        config = Path(self._tmp.name) / "witness.json"
        try:
            config.write_text(json.dumps(self.script_config(run, read_end)))
            self._proc = subprocess.Popen(
                [self.gdb, "-batch", "-nx", "-q", "-x", str(SCRIPT)], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(read_end,), text=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self._tmp.name,
                     "COPYLAB_WITNESS_CONFIG": str(config)}, start_new_session=True)
        except BaseException:
            self._stop(0)
            raise
        finally:
            os.close(read_end)
        self._reader = threading.Thread(target=self._read, daemon=True, name="witness-gdb")
        self._reader.start()
        if not self._armed.wait(ARM_TIMEOUT) or "WITNESS armed" not in "".join(self._lines):
            text = "".join(self._lines).strip()
            self._stop(0)
            raise HostEvidenceUnavailable(f"gdb did not arm its breakpoints within {ARM_TIMEOUT:.0f}s: "
                                          f"{text[-300:] or 'no output'}")

    def _read(self) -> None:
        for line in self._proc.stdout:
            self._lines.append(line)
            if line.startswith(("WITNESS armed", "WITNESS end")):
                self._armed.set()
        self._armed.set()

    # ------------------------------------------------------------- collect
    def collect(self, run) -> HostEvidence:
        status = self._stop(END_TIMEOUT)
        self._resume_guest()
        evidence = evidence_from("".join(self._lines), run.payload_len, status)
        evidence.detail += f"; breakpoint addresses {self.addresses_from}"
        return evidence

    def _stop(self, grace: float) -> str:
        """Tell the script to end the window (close the control pipe), wait ``grace`` seconds, then kill
        gdb. Returns what happened to gdb when it did not end by itself."""
        what = ""
        if self._control is not None:
            os.close(self._control)
            self._control = None
        if self._proc is not None:
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                what = f"gdb did not end within {grace:.0f}s and was killed"
                self._proc.kill()
                self._proc.wait(10)
            if self._reader is not None:
                self._reader.join(5)
            self._proc.stdout.close()
            if self._proc.returncode and not what:
                what = f"gdb exited {self._proc.returncode}"
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return what

    def _resume_guest(self) -> None:
        """A gdb killed while it held the guest leaves QEMU paused: the guest must run on."""
        if not self.qemu.running():
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                status = self.qemu.monitor("info status", timeout=5)
            except OSError:
                return
            if "paused" not in status and "debug" not in status:
                return
            self.qemu.monitor("cont", timeout=5)
            time.sleep(0.2)
