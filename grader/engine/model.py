"""The per-run object: everything a grading run collected and everything the checks read.
No module globals: one RunData per run."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from . import evidence as ev
from .hostevidence import HostEvidence
from .profile import KernelProfile

# bytes in front of a UDP payload in an Ethernet frame: 14 Ethernet + 20 IPv4 + 8 UDP
FRAME_HEADERS = 42
# a shorter frame is padded to Ethernet's minimum (without the checksum) before a card receives it
ETH_MIN_FRAME = 60
NIC_SOURCE = "nic-trace"


@dataclass
class PhaseRecord:
    name: str
    status: str = "skipped"          # ok | failed | timeout | skipped
    duration_s: float = 0.0
    detail: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status,
                "duration_s": round(self.duration_s, 3), "detail": self.detail}


@dataclass
class RunData:
    lab_id: str
    runid: str
    message: str
    port: int
    profile: KernelProfile | None = None
    send_comm: str = "sender"
    recv_comm: str = "receiver"
    receiver_addr: str = "127.0.0.1"
    net_status: dict | None = None        # the helper's net-status after the lab network was set up
    copybreak: int | None = None          # the e1000e driver's copybreak during the run
    phases: dict[str, PhaseRecord] = field(default_factory=dict)
    submission_sha256: str = ""
    submission_files: dict[str, str] = field(default_factory=dict)   # name -> sha256
    build_log: str = ""
    build_exit: int | None = None
    build_outputs_missing: list[str] = field(default_factory=list)
    module_sha256: str | None = None
    load_exit: int | None = None
    load_output: str = ""
    unload_exit: int | None = None
    unload_output: str = ""
    sender_out: str = ""
    sender_exit: int | None = None
    sender_timed_out: bool = False
    receiver_out: str = ""
    receiver_exit: int | None = None
    receiver_listening: bool = False
    receiver_timed_out: bool = False
    disk_free_bytes: int | None = None    # on the run folder's file system, after the programs ran
    kmsg_start_seq: int | None = None
    kmsg_text: str | None = None          # None: never collected
    trace_text: str | None = None
    taint_before: int | None = None
    taint_after: int | None = None
    crash_excerpt: str | None = None
    crash_phase: str | None = None
    verdict: str | None = None
    environment: dict = field(default_factory=dict)
    # evidence from outside the guest, by source name (grader/engine/hostevidence.py)
    host_evidence: dict[str, HostEvidence] = field(default_factory=dict)
    # the lab's answers file as handed in (None: not handed in); read on the grader, never run
    answers_text: str | None = None
    # addresses printed as examples in the handout and the course narrative (lab.toml [feedback])
    example_addresses: frozenset[int] = frozenset()

    def phase(self, name: str) -> PhaseRecord:
        if name not in self.phases:
            self.phases[name] = PhaseRecord(name)
        return self.phases[name]

    def phase_status(self, name: str) -> str:
        return self.phases[name].status if name in self.phases else "skipped"

    # ---- parsed evidence (computed once, after collection) ----
    @cached_property
    def kmsg(self) -> list[ev.KmsgRecord]:
        if self.kmsg_text is None:
            return []
        return ev.parse_kmsg(self.kmsg_text, after_seq=self.kmsg_start_seq)

    @cached_property
    def records(self) -> list[ev.ModuleRecord]:
        return ev.parse_records(self.kmsg)

    def module_records(self, kind: str) -> list[ev.ModuleRecord]:
        return [c for c in self.records if c.kind == kind]

    def frame_records(self, kind: str) -> list[ev.ModuleRecord]:
        """[TX]/[RX] records of this run's frame: TX records of another length (ARP) are left out
        when one has the frame's length."""
        recs = self.module_records(kind)
        if kind == "TX":
            recs = [r for r in recs if r.len == self.frame_len] or recs
        return recs

    @cached_property
    def sender(self) -> ev.SenderReport:
        return ev.parse_sender(self.sender_out)

    @cached_property
    def receiver(self) -> ev.ReceiverReport:
        return ev.parse_receiver(self.receiver_out)

    @cached_property
    def trace(self) -> list[ev.TraceEvent]:
        return ev.parse_trace(self.trace_text or "")

    def trace_events(self, event: str, comm: str | None = None) -> list[ev.TraceEvent]:
        return [e for e in self.trace if e.event == event and (comm is None or e.comm == comm)]

    @cached_property
    def answers(self) -> ev.AnswersFile | None:
        return None if self.answers_text is None else ev.parse_answers(self.answers_text)

    @property
    def payload_len(self) -> int:
        return len(self.message.encode())

    def tx_event(self) -> ev.TraceEvent | None:
        """The sender's copylab_tx event carrying the payload (len == payload length)."""
        evs = [e for e in self.trace_events("copylab_tx", self.send_comm)
               if e.num("len") == self.payload_len]
        return evs[-1] if evs else None

    def rx_event(self) -> ev.TraceEvent | None:
        evs = [e for e in self.trace_events("copylab_rx", self.recv_comm)
               if e.num("len") == self.payload_len]
        for e in evs:
            if e.payload() == self.message.encode():
                return e
        return evs[-1] if evs else None

    def rxmsg_event(self) -> ev.TraceEvent | None:
        evs = self.trace_events("copylab_rxmsg", self.recv_comm)
        return evs[-1] if evs else None

    # ---- lab 2: the frame on the network cards ----
    @property
    def frame_len(self) -> int:
        return self.payload_len + FRAME_HEADERS

    def _carrying_message(self, event: str) -> ev.TraceEvent | None:
        """The guest trace's event of a driver probe whose frame carries this run's message."""
        for e in self.trace_events(event):
            if e.num("len") is not None and e.num("len") >= self.frame_len and e.payload() == self.message.encode():
                return e
        return None

    def nic_tx_event(self) -> ev.TraceEvent | None:
        """e1000_xmit_frame with the message's frame (the guest's own view of the TX skb)."""
        return self._carrying_message("copylab_nic_tx")

    def nic_rx_event(self) -> ev.TraceEvent | None:
        """e1000_receive_skb with the message's frame (the skb the driver hands the stack)."""
        return self._carrying_message("copylab_nic_rx")

    @property
    def card(self) -> HostEvidence | None:
        """The cards seen from the hypervisor, when that source ran."""
        e = self.host_evidence.get(NIC_SOURCE)
        return e if e is not None and e.ok else None

    def card_reads(self) -> list[dict]:
        """The buffers the card read a frame of this run's frame length from (copy #2)."""
        c = self.card
        return [o.values for o in c.of("nic_tx") if o.values.get("len") == self.frame_len] if c else []

    def card_write(self) -> dict | None:
        """The buffer the card wrote this run's frame into (copy #3): the one the hypervisor read the
        message in at its payload offset ("seen": True); else, when the driver handed that buffer up
        itself and the stack freed it before the hypervisor looked, the one at the physical address
        of the skb the guest trace saw at e1000_receive_skb ("seen": False)."""
        c = self.card
        if c is None:
            return None
        want = self.message.encode()
        writes = [o.values for o in c.of("nic_rx")]
        for w in writes:
            if (w.get("bytes") or b"")[FRAME_HEADERS:FRAME_HEADERS + len(want)] == want:
                return dict(w, seen=True)
        handed_up, base = self.nic_rx_event(), self.direct_map_base
        if handed_up is not None and base is not None and handed_up.num("data") is not None:
            for w in writes:
                if w["addr"] == handed_up.num("data") - base and w["len"] >= self.frame_len:
                    return dict(w, seen=False)
        return None

    def received_len(self) -> int:
        """The length of the frame the driver received: the card's write, else the [RX] record's."""
        wrote = self.card_write()
        if wrote is not None:
            return wrote["len"]
        rx = self.module_records("RX")
        return rx[0].len if len(rx) == 1 else max(self.frame_len, ETH_MIN_FRAME)

    def driver_copies(self) -> bool | None:
        """Whether the e1000e driver copied the frame into a fresh skb (shorter than copybreak)."""
        return None if self.copybreak is None else self.received_len() < self.copybreak

    @property
    def direct_map_base(self) -> int | None:
        c = self.card
        found = c.of("direct_map") if c else []
        return found[0].num("base") if found else None
