"""The hypervisor witness's cost: grading runs of the solution on ONE lab VM, alternated without and
with the witness (lab 1's spec with ``[evidence] host`` emptied, then as it is), and the phases side by
side. The witness is prepared in verify (addresses through the VM's helper), armed and collected
around the run phase (gdb attach, breakpoints, interrupt, detach), so those are the phases it can slow."""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

from grader.engine.labspec import load_lab
from grader.engine.run import grade

REPO = Path(__file__).resolve().parents[1]
PHASES = ("verify", "run")


def one_run(vm, lab, submission: Path, workdir: Path) -> dict:
    t0 = time.monotonic()
    outcome = grade(lab, vm, submission, workdir / f"grade-{time.monotonic_ns()}")
    r = outcome.result
    w = r["host_evidence"].get("gdbstub")
    return {"seconds": time.monotonic() - t0, "score": r["score"],
            "witness": w["status"] if w else None, "stops": len(w["observations"]) if w else 0,
            "phases": {p["name"]: p["duration_s"] for p in r["phases"]}}


def measure(pairs: int = 3, progress=print) -> dict:
    from grader.vm.labvm import QemuLabVM

    watched = load_lab("lab1")
    unwatched = copy.deepcopy(watched)
    unwatched.host_evidence = []
    submission = REPO / "labs" / "lab1" / "solution"
    rows = []
    with tempfile.TemporaryDirectory(prefix="copylab-bench-witness-") as tmp, \
            QemuLabVM(progress=progress, name="bench-witness") as vm:
        work = Path(tmp)
        vm.acquire()                     # first boot and the clean snapshot (not measured)
        vm.fresh = False
        for i in range(pairs):
            a = one_run(vm, unwatched, submission, work)
            b = one_run(vm, watched, submission, work)
            progress(f"witness pair {i + 1}/{pairs}: without {a['seconds']:.1f}s (score {a['score']}), with "
                     f"{b['seconds']:.1f}s (score {b['score']}, witness {b['witness']}, {b['stops']} observations)")
            rows.append({"without": a, "with": b})
        accel = vm.environment().get("accel")

    def med(side: str, key: str | None = None) -> float:
        return statistics.median(r[side]["seconds"] if key is None else r[side]["phases"][key] for r in rows)
    return {
        "accel": accel, "pairs": rows,
        "without_median_s": med("without"), "with_median_s": med("with"),
        "phases_median_s": {p: {"without": med("without", p), "with": med("with", p)} for p in PHASES},
        "witness_statuses": [r["with"]["witness"] for r in rows],
        "scores": [r["with"]["score"] for r in rows] + [r["without"]["score"] for r in rows],
    }
