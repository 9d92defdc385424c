"""The per-run object: everything a grading run collected and everything the checks read.
No module globals: one RunData per run."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from . import evidence as ev
from .hostevidence import HostEvidence
from .profile import KernelProfile

PHASE_STATUSES = ("ok", "failed", "timeout", "skipped")


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
    def copies(self) -> list[ev.CopyRecord]:
        return ev.parse_copy_records(self.kmsg)

    def copy_records(self, kind: str) -> list[ev.CopyRecord]:
        return [c for c in self.copies if c.kind == kind]

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
