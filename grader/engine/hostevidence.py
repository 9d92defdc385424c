"""Evidence from outside the guest: sources on the grader host that watch a lab VM from the
hypervisor (QEMU's gdbstub reading copies #1 and #4, QEMU's trace events of an emulated network
card). A student's module can rewrite anything inside the guest (the kernel log, tracefs, the taint
mask); it cannot reach these.

A lab asks for sources by name in its spec (``[evidence] host = [...]``, ``host_required = [...]``).
The VM object offers them (``vm.host_evidence(name, lab, profile) -> (source | None, why)``, like
``host_builder``); the run drives each offered source through three calls:

    prepare(ex, run)   verify phase, before any student code runs: read what the source needs from the
                       clean guest (the running kernel's addresses), check the hypervisor can deliver;
                       raises HostEvidenceUnavailable
    arm(run)           just before the student's programs run
    collect(run)       after the programs ended (also after a crash): disarm, return a HostEvidence;
                       never raises

A source that cannot run leaves a HostEvidence with status "unavailable" and the reason, so checks
fall back to the guest's own evidence and say so; a source the lab requires fails the verify phase
instead (the grader's failure, never the student's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import GraderError

STATUSES = ("ok", "unavailable", "failed")


class HostEvidenceUnavailable(GraderError):
    """This source cannot watch this VM (no gdbstub, another QEMU build, an inventory host, ...)."""


@dataclass(frozen=True)
class Observation:
    """One thing a source saw, e.g. kind "copy1" with {"src": .., "dest": .., "len": .., "bytes": ..}."""
    kind: str
    values: dict = field(default_factory=dict)

    def num(self, key: str) -> int | None:
        v = self.values.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def as_dict(self) -> dict:
        out = {}
        for k, v in self.values.items():
            out[k] = v.hex() if isinstance(v, (bytes, bytearray)) else v
        return {"kind": self.kind, "values": out}


@dataclass
class HostEvidence:
    source: str                    # the name the lab spec uses: "gdbstub", "nic-trace"
    where: str                     # said in results: "QEMU's gdbstub, from the grader host"
    status: str = "unavailable"    # ok | unavailable | failed
    detail: str = ""
    observations: list[Observation] = field(default_factory=list)
    text: str = ""                 # the source's raw record, kept as artifact host-<source>.txt

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"bad host evidence status {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def of(self, kind: str) -> list[Observation]:
        return [o for o in self.observations if o.kind == kind]

    @property
    def artifact_name(self) -> str:
        return f"host-{self.source}.txt"

    def as_dict(self) -> dict:
        return {"source": self.source, "where": self.where, "status": self.status,
                "detail": self.detail, "observations": [o.as_dict() for o in self.observations]}


@runtime_checkable
class HostEvidenceSource(Protocol):
    name: str
    where: str

    def prepare(self, ex, run) -> None: ...

    def arm(self, run) -> None: ...

    def collect(self, run) -> HostEvidence: ...


def unavailable(name: str, why: str, where: str = "outside the guest") -> HostEvidence:
    return HostEvidence(source=name, where=where, status="unavailable", detail=why)


def failed(name: str, why: str, where: str = "outside the guest") -> HostEvidence:
    return HostEvidence(source=name, where=where, status="failed", detail=why)
