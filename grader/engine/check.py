"""`make check` inside the lab VM: the official grader's phases and checks, run locally.

    python3 -m grader.engine.check [LAB_FOLDER]

The lab folder holds lab.toml, the lab's Makefile and Kbuild and the student's three source files.
Everything runs through a LocalExecutor as the student; the root steps go through the same sudo helper
the grader uses. The grader's own run differs only in its executor (SSH) and its clean VM.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import GraderError
from ..executor import LocalExecutor
from .labspec import load_lab
from .result import render_text
from .run import grade


def official_only(lab, result: dict) -> list[dict]:
    """The checks that failed only because this VM has no view from outside it: their lab.toml entry
    names a host evidence source (option host_evidence) that this run could not have."""
    seen = {name for name, e in (result.get("host_evidence") or {}).items() if e.get("status") == "ok"}
    needs = {c.name: c.options.get("host_evidence") for c in lab.checks}
    return [c for c in result["checks"]
            if not c["passed"] and needs.get(c["name"]) and needs[c["name"]] not in seen]


class LocalVM:
    """This machine as the grading VM: nothing to acquire or reset."""

    @contextmanager
    def executor(self):
        yield LocalExecutor()

    def acquire(self) -> None:
        pass

    def crash_excerpt(self) -> str | None:
        return None  # an oops here ends the student's session; the taint check still reports it

    def alive(self) -> bool:
        return True

    def release(self, dirty: bool) -> None:
        if dirty:
            print("check: the run left the module loaded or timed out; `sudo rmmod` your lab's module "
                  "and try again (reboot the VM if it hangs)", file=sys.stderr)

    def environment(self) -> dict:
        return {"accel": None, "arch": os.uname().machine, "image": "local"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="copylab-check", description=__doc__.split("\n\n")[0])
    ap.add_argument("lab_dir", nargs="?", default=".")
    ap.add_argument("--json", action="store_true", help="print the result JSON")
    args = ap.parse_args(argv)
    lab_dir = Path(args.lab_dir).resolve()
    try:
        lab = load_lab(lab_dir)
    except GraderError as e:
        print(f"check: {e}", file=sys.stderr)
        return 2
    runs = Path.home() / ".copylab" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="check-", dir=runs.parent))
    # the programs run as the student: the VM is the student's own; no hypervisor watches it, so the
    # checks that need one say that only the official grader runs them
    outcome = grade(lab, LocalVM(), lab_dir, out, runs_dir=str(runs), program_user=None,
                    host_evidence_required=False)
    result = outcome.result
    elsewhere = official_only(lab, result)
    if args.json:
        import json

        print(json.dumps(result, indent=2))
    else:
        print(render_text(result, frozenset(c["name"] for c in elsewhere)))
        if elsewhere:
            points = sum(c["max_points"] for c in elsewhere)
            print(f"\nonly the official grader runs {', '.join(c['name'] for c in elsewhere)} ({points} "
                  f"points): they need the hypervisor's view, which no VM has of itself; every other "
                  f"check counts here")
        print(f"\nresult and artifacts: {out}")
    reachable = result["max_score"] - sum(c["max_points"] for c in elsewhere)
    return 0 if result["score"] == reachable else 1


if __name__ == "__main__":
    sys.exit(main())
