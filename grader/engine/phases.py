"""The phases of one grading run: the one table the lab spec (timeouts), the run (order and flow) and
the worker (whose failure is it) read, and the typed outcome a run's phases add up to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Phase:
    name: str
    timeout: float        # default seconds; a lab spec's [timeouts] may change it
    student_code: bool    # the submission's code is built, runs in the kernel or as programs in it
    grader_fault: bool    # it ends before the submission is touched: its failure is the grader's
    cleanup: bool         # it runs after an earlier phase failed too (whenever it has something to do)


PHASES = (
    Phase("acquire", 180, student_code=False, grader_fault=True, cleanup=False),
    Phase("verify", 30, student_code=False, grader_fault=True, cleanup=False),
    Phase("upload", 60, student_code=False, grader_fault=False, cleanup=False),
    Phase("build", 300, student_code=True, grader_fault=False, cleanup=False),
    Phase("trace_start", 30, student_code=False, grader_fault=False, cleanup=False),
    Phase("load", 30, student_code=True, grader_fault=False, cleanup=False),
    Phase("run", 30, student_code=True, grader_fault=False, cleanup=False),
    Phase("collect", 60, student_code=False, grader_fault=False, cleanup=True),
    Phase("unload", 30, student_code=True, grader_fault=False, cleanup=True),
    Phase("release", 60, student_code=False, grader_fault=False, cleanup=True),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
BY_NAME = {p.name: p for p in PHASES}
DEFAULT_TIMEOUTS = {p.name: p.timeout for p in PHASES}
# the phases that handle the submission, one after the other until one fails
SUBMISSION_PHASES = tuple(p.name for p in PHASES if not p.grader_fault and not p.cleanup)


class Outcome(str, Enum):
    GRADED = "graded"                  # the result is the submission's, whatever its score
    INFRASTRUCTURE = "infrastructure"  # the grader failed: the run says nothing about the submission


@dataclass(frozen=True)
class RunOutcome:
    kind: Outcome
    phase: str | None = None   # the phase that failed (INFRASTRUCTURE)
    reason: str | None = None

    @property
    def graded(self) -> bool:
        return self.kind is Outcome.GRADED

    @property
    def grader_failure(self) -> str | None:
        """Why the grader failed (INFRASTRUCTURE), or None for a graded run."""
        return None if self.graded else self.reason

    def as_dict(self) -> dict:
        return {"kind": self.kind.value, "phase": self.phase, "reason": self.reason}

    @classmethod
    def of_phases(cls, phases) -> RunOutcome:
        """From the phase records (dicts with name, status, detail) of a result, in order."""
        for p in phases:
            spec = BY_NAME.get(p["name"])
            if spec is not None and spec.grader_fault and p["status"] != "ok":
                return cls(Outcome.INFRASTRUCTURE, p["name"],
                           f"phase {p['name']} {p['status']}: {p.get('detail') or 'no detail'}")
        return cls(Outcome.GRADED)

    @classmethod
    def of_result(cls, result: dict) -> RunOutcome:
        """The outcome a result document carries; results written before it had one are judged by
        their phases, as the engine judges them."""
        rec = result.get("outcome")
        if isinstance(rec, dict) and rec.get("kind") in {o.value for o in Outcome}:
            return cls(Outcome(rec["kind"]), rec.get("phase"), rec.get("reason"))
        return cls.of_phases(result.get("phases", []))
