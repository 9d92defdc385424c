#!/usr/bin/env python3
"""Write a lab's points table into its handout, generated from the lab's checks in lab.toml.

    pointstable.py [--check] LAB_DIR ...

LAB_DIR holds lab.toml and README.md. The table replaces what lies between the two marker lines
BEGIN and END below in README.md, so the handout's points cannot drift from what the grader
scores. With --check nothing is written: a handout whose table differs from lab.toml is named
and the exit status is 1. Exit status 2: no markers, or lab.toml is not a valid lab spec.

The lab spec is read by the grader engine's own loader (grader/engine/labspec.py), which also
checks that the points add up to [grading] total and that every dependency names a check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# run by hand on the instructor's host, with any python3 and without the project installed: the
# engine is taken from this checkout
sys.path.insert(0, str(REPO))

from grader.engine.labspec import LabSpec, LabSpecError, load_lab  # noqa: E402

BEGIN = "<!-- BEGIN points table: generated from lab.toml by labs/tools/pointstable.py -->"
END = "<!-- END points table -->"


class HandoutError(Exception):
    """The handout has no (or a malformed) marked section for the table."""


def render(spec: LabSpec) -> str:
    """The markdown between the markers: one row per check, in lab.toml's order."""
    number = {c.name: n for n, c in enumerate(spec.checks, start=1)}
    rows = [
        "| # | check | what it checks | points | needs |",
        "| --- | --- | --- | --- | --- |",
    ]

    def row(c) -> str:
        needs = ", ".join(f"{number[d]} `{d}`" for d in c.depends) or "nothing"
        return f"| {number[c.name]} | `{c.name}` | {c.title or c.name} | {c.points} | {needs} |"

    rows += [row(c) for c in spec.checks if c.part == "lab"]
    rows.append(f"| | **total** | | **{spec.max_score}** | |")
    questions = [c for c in spec.checks if c.part == "questions"]
    if questions:
        rows += [row(c) for c in questions]
        rows.append(f"| | **questions, scored apart** | | **{spec.questions_max}** | |")
    rule = (
        "A check runs only when every check it needs has passed. A check whose dependency failed "
        "is not run and scores 0, and the result names the check that stopped it."
    )
    if questions:
        rule += (
            f" The questions are checked from your answers file ({spec.answers_file}) and scored "
            f"apart from the lab's {spec.max_score} points: without the file you lose only theirs."
        )
    return "\n".join(rows) + "\n\n" + rule + "\n"


def split(text: str, where: str) -> tuple[str, str, str]:
    """(before and BEGIN line, current table, END line and after)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise HandoutError(f"{where}: needs exactly one line {BEGIN!r} and one {END!r}")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    if not body.startswith("\n"):
        raise HandoutError(f"{where}: {BEGIN!r} must be alone on its line")
    return head + BEGIN + "\n", body[1:], END + tail


def update(lab_dir: Path, check: bool) -> bool:
    """Rewrite (or, with check, compare) one handout's table. True when it was up to date."""
    spec = load_lab(lab_dir / "lab.toml")
    handout = lab_dir / "README.md"
    text = handout.read_text(encoding="utf-8")
    head, body, tail = split(text, str(handout))
    table = render(spec)
    if body == table:
        return True
    if not check:
        handout.write_text(head + table + tail, encoding="utf-8")
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate a lab handout's points table from lab.toml.")
    ap.add_argument("labs", nargs="+", type=Path, metavar="LAB_DIR")
    ap.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a table is out of date"
    )
    args = ap.parse_args(argv)
    stale = False
    for lab_dir in args.labs:
        try:
            fresh = update(lab_dir, args.check)
        except (LabSpecError, HandoutError, OSError) as exc:
            print(f"pointstable: {exc}", file=sys.stderr)
            return 2
        if not fresh:
            stale = True
            verb = "out of date (run labs/tools/pointstable.py)" if args.check else "rewritten"
            print(f"pointstable: {lab_dir / 'README.md'}: points table {verb}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
