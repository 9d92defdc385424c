#!/usr/bin/env python3
"""Generate a lab's student skeleton from its instructor solution.

    mkskeleton.py [--labs-dir DIR] [--check] [LAB ...]

Reads every regular file in labs/<lab>/solution/ and writes labs/<lab>/skeleton/ (same names) plus
labs/<lab>/skeleton/SHA256SUMS (sha256sum format: "<hex>  <name>") that `handin.py` uses to refuse
unchanged skeleton files. Without LAB arguments every lab with a solution/ folder is processed.
With --check nothing is written: files whose committed skeleton differs from a fresh generation
(or is missing, or is stale) are listed and the exit status is 1.

Marker syntax (C comments, each marker alone on its line, indentation free):

    /* TODO(n): what the student has to do (may continue over several comment lines) */
    /* BEGIN SOLUTION */
    ... instructor code, removed from the skeleton ...
    /* END SOLUTION */
    /* SKELETON: placeholder code */

- TODO comments stay in the skeleton.
- Lines from BEGIN SOLUTION to END SOLUTION (inclusive) are dropped.
- A `/* SKELETON: code */` line becomes `code` (same indentation) in the skeleton, so the skeleton
  compiles and does nothing harmful; in the solution it is an ordinary comment. The code must not
  contain `*/`.
- Every SOLUTION block must be preceded by a TODO(n) comment since the previous block; blocks do
  not nest. Violations are errors (exit status 2).

A solution file named `*.txt` is an answers file instead (`key: value` lines, `#` comments, lines
starting with a space or tab continue an answer; grader/engine/evidence.py parse_answers): the
skeleton keeps its comments and keys and drops every answer, so it is the students' template.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

BEGIN_RE = re.compile(r"^\s*/\*\s*BEGIN SOLUTION\s*\*/\s*$")
END_RE = re.compile(r"^\s*/\*\s*END SOLUTION\s*\*/\s*$")
SKELETON_RE = re.compile(r"^(?P<indent>\s*)/\*\s*SKELETON:\s?(?P<code>.*?)\s*\*/\s*$")
TODO_RE = re.compile(r"/\*\s*TODO\(\d+\):|^\s*\*?\s*TODO\(\d+\):")

SUMS_NAME = "SHA256SUMS"


class MarkerError(Exception):
    """A solution file's markers are malformed."""


def skeletonize(text: str, name: str = "<text>") -> str:
    """Return the skeleton text of one solution file."""
    out: list[str] = []
    in_solution = False
    begin_line = 0
    todo_seen = False
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        if BEGIN_RE.match(line):
            if in_solution:
                raise MarkerError(
                    f"{name}:{lineno}: BEGIN SOLUTION inside a solution block "
                    f"(opened at line {begin_line})"
                )
            if not todo_seen:
                raise MarkerError(
                    f"{name}:{lineno}: BEGIN SOLUTION without a TODO(n) comment before it"
                )
            in_solution, begin_line, todo_seen = True, lineno, False
            continue
        if END_RE.match(line):
            if not in_solution:
                raise MarkerError(f"{name}:{lineno}: END SOLUTION without BEGIN SOLUTION")
            in_solution = False
            continue
        if in_solution:
            continue
        if TODO_RE.search(line):
            todo_seen = True
        m = SKELETON_RE.match(line)
        if m:
            newline = line[len(line.rstrip("\r\n")) :]
            out.append(m.group("indent") + m.group("code") + newline)
            continue
        out.append(line)
    if in_solution:
        raise MarkerError(f"{name}:{begin_line}: BEGIN SOLUTION is never closed")
    return "".join(out)


ANSWER_LINE_RE = re.compile(r"^(?P<key>[a-z][a-z0-9_]*):")


def blank_answers(text: str, name: str = "<text>") -> str:
    """The template of an answers file: comments, blank lines and keys stay, answers go."""
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            out.append(line)
        elif line[0] in " \t":
            continue                      # the continuation of an answer
        elif m := ANSWER_LINE_RE.match(line):
            out.append(m.group("key") + ":\n")
        else:
            raise MarkerError(f"{name}:{lineno}: not a comment or a `key: value` line")
    return "".join(out)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generate(lab_dir: Path) -> dict[str, bytes]:
    """Map skeleton file name -> content for one lab (including SHA256SUMS)."""
    solution = lab_dir / "solution"
    if not solution.is_dir():
        raise FileNotFoundError(f"{solution}: no solution folder")
    files: dict[str, bytes] = {}
    for path in sorted(solution.iterdir()):
        if not path.is_file() or path.is_symlink() or path.name.startswith("."):
            continue
        text = path.read_text(encoding="utf-8")
        make = blank_answers if path.suffix == ".txt" else skeletonize
        files[path.name] = make(text, str(path)).encode("utf-8")
    if SUMS_NAME in files:
        raise MarkerError(f"{solution / SUMS_NAME}: reserved name")
    sums = "".join(f"{sha256_hex(data)}  {name}\n" for name, data in sorted(files.items()))
    files[SUMS_NAME] = sums.encode("ascii")
    return files


def differences(lab_dir: Path, files: dict[str, bytes]) -> list[str]:
    """Paths (relative to lab_dir) whose committed skeleton differs from `files`."""
    skeleton = lab_dir / "skeleton"
    diff: list[str] = []
    for name, data in sorted(files.items()):
        target = skeleton / name
        if not target.is_file() or target.read_bytes() != data:
            diff.append(f"skeleton/{name}")
    if skeleton.is_dir():
        for path in sorted(skeleton.iterdir()):
            if path.name not in files:
                diff.append(f"skeleton/{path.name} (stale)")
    return diff


def write(lab_dir: Path, files: dict[str, bytes]) -> list[str]:
    skeleton = lab_dir / "skeleton"
    skeleton.mkdir(exist_ok=True)
    changed = differences(lab_dir, files)
    for path in skeleton.iterdir():
        if path.name not in files and path.is_file():
            path.unlink()
    for name, data in files.items():
        target = skeleton / name
        if not target.is_file() or target.read_bytes() != data:
            target.write_bytes(data)
    return changed


def main(argv: list[str] | None = None) -> int:
    default_labs = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(
        description="Generate labs/<lab>/skeleton/ from labs/<lab>/solution/."
    )
    ap.add_argument(
        "labs", nargs="*", metavar="LAB", help="lab ids (default: every lab with solution/)"
    )
    ap.add_argument("--labs-dir", type=Path, default=default_labs, help=f"default: {default_labs}")
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list files whose skeleton is out of date",
    )
    args = ap.parse_args(argv)

    labs = args.labs or sorted(p.name for p in args.labs_dir.iterdir() if (p / "solution").is_dir())
    if not labs:
        print(f"mkskeleton: no lab with a solution/ folder under {args.labs_dir}", file=sys.stderr)
        return 2
    out_of_date: list[str] = []
    for lab in labs:
        lab_dir = args.labs_dir / lab
        try:
            files = generate(lab_dir)
        except (MarkerError, FileNotFoundError, UnicodeDecodeError) as exc:
            print(f"mkskeleton: {exc}", file=sys.stderr)
            return 2
        if args.check:
            out_of_date += [f"{lab}/{d}" for d in differences(lab_dir, files)]
        else:
            for d in write(lab_dir, files):
                print(f"mkskeleton: wrote {lab}/{d}")
    if args.check:
        if out_of_date:
            print(
                "mkskeleton: skeleton out of date (run labs/tools/mkskeleton.py):", file=sys.stderr
            )
            for d in out_of_date:
                print(f"  {d}", file=sys.stderr)
            return 1
        print(f"mkskeleton: skeletons up to date ({', '.join(labs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
