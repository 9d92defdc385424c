#!/usr/bin/env python3
"""Write a real `make check` run of the solution into a lab's handout, and compare the handout's
sample with another real run.

    samplecheck.py LAB_DIR --from FILE         the sample becomes FILE's text (`-`: stdin)
    samplecheck.py LAB_DIR --run FOLDER        run `make check` in FOLDER (a lab folder in the lab
                                               VM holding the solution) and write its output
    samplecheck.py LAB_DIR --check --from FILE exit 1 when FILE's run and the handout's sample
                                               differ in more than what changes per run

The sample replaces what lies between the marker lines BEGIN and END below in LAB_DIR/README.md,
as a fenced block that starts with the command. What changes from run to run (the run id, the
message, the port, addresses and other hex values, process ids, CPUs, trace timestamps, phase
durations, the taint mask, the result folder and column padding) is masked by `normalize` before
comparing, so a check fails only when a line was added, removed or reworded. Exit status 2: no
markers, or nothing to read.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import argparse
import re
import os
import subprocess
import sys
from pathlib import Path

BEGIN = ("<!-- BEGIN sample make check: a real run of the solution, written by "
         "labs/tools/samplecheck.py -->")
END = "<!-- END sample make check -->"
COMMAND = "$ make check"
FENCE = "```"
RUN_TIMEOUT = 900


class SampleError(Exception):
    """No (or malformed) marked section, or no run output."""


def split(text: str, where: str) -> tuple[str, str, str]:
    """(before and BEGIN line, current block, END line and after)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SampleError(f"{where}: needs exactly one line {BEGIN!r} and one {END!r}")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    return head + BEGIN + "\n", body.lstrip("\n"), END + tail


def block(output: str) -> str:
    return f"{FENCE}\n{COMMAND}\n{output.rstrip()}\n{FENCE}\n"


def sample_of(readme_text: str, where: str) -> str:
    """The run output held in the handout's sample block."""
    body = split(readme_text, where)[1].strip()
    lines = body.splitlines()
    if len(lines) < 3 or lines[0] != FENCE or lines[1] != COMMAND or lines[-1] != FENCE:
        raise SampleError(f"{where}: the sample is not a fenced block starting with {COMMAND!r}")
    return "\n".join(lines[2:-1]) + "\n"


_RUN_ID = re.compile(r"^(copylab \S+ run )\S+:", re.M)
_MESSAGE = re.compile(r"\(payload=([A-Za-z0-9_]+)\)")
_PORT = re.compile(r"listening on [0-9.]+:(\d+)")   # lab 1: loopback, lab 2: the second card
_MASKS = [
    # make check's own folder for the run's result (a fresh temporary name per run)
    (re.compile(r"(/\.copylab/check-)\S+"), r"\1TMP"),
    # a tracefs line: task-PID [CPU] flags timestamp:
    (re.compile(r"^(\s*\S+)-\d+\s+\[\d+\]\s+\S+\s+\d+\.\d+:", re.M), r"\1-PID [CPU] FLAGS TIME:"),
    (re.compile(r"0x[0-9a-fA-F]+"), "0xHEX"),
    (re.compile(r"\b[0-9a-fA-F]{16}\b"), "HEX"),
    (re.compile(r"\b\d+\.\d+s\b"), "Ns"),
    (re.compile(r"\b(before|after) \d+\b"), r"\1 N"),
    # lab 2's net-status: the cards' packet counters grow with every frame since boot
    (re.compile(r'("[rt]x_packets": )\d+'), r"\1N"),
    (re.compile(r"-{2,}"), "--"),
    (re.compile(r"[ \t]+"), " "),
]


def normalize(output: str) -> list[str]:
    """The run's lines with what changes per run masked (see the module's docstring)."""
    text = _RUN_ID.sub(r"\1RUNID:", output)
    for pattern, name in ((_MESSAGE, "MESSAGE"), (_PORT, "PORT")):
        m = pattern.search(text)
        if m:
            text = re.sub(rf"\b{re.escape(m[1])}\b", name, text)
    for pattern, repl in _MASKS:
        text = pattern.sub(repl, text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def differences(sample: str, real: str) -> list[str]:
    """Lines in which the handout's sample and the real run differ (after normalize)."""
    a, b = normalize(sample), normalize(real)
    out = [f"  sample line {i + 1}: {x!r}\n  real run line {i + 1}: {y!r}"
           for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b):
        out.append(f"  the sample has {len(a)} lines, the real run {len(b)}")
    return out


def run_make_check(folder: Path) -> str:
    """`make check` of the solution in FOLDER; its output, which must show every check passing."""
    # a make above this one (make test) would make it print "make[1]: Entering directory" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    r = subprocess.run(["make", "check"], cwd=folder, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, env=env)
    if r.returncode != 0:
        raise SampleError(f"make check in {folder} exited {r.returncode}: not the solution's "
                          f"full marks, so not a sample\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.stdout


def read_output(source: str) -> str:
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    if not text.strip():
        raise SampleError(f"{source}: no make check output to read")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lab_dir", type=Path, help="folder with the handout README.md")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="source", metavar="FILE", help="a saved make check output (- for stdin)")
    src.add_argument("--run", type=Path, metavar="FOLDER", help="run make check in this lab folder")
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    readme = args.lab_dir / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
        head, _, tail = split(text, str(readme))
        real = run_make_check(args.run) if args.run else read_output(args.source)
        if args.check:
            diff = differences(sample_of(text, str(readme)), real)
            if diff:
                print(f"samplecheck: {readme}: the sample differs from the real run:", file=sys.stderr)
                print("\n".join(diff), file=sys.stderr)
                return 1
            print(f"samplecheck: {readme}: the sample matches the real run")
            return 0
    except (SampleError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"samplecheck: {exc}", file=sys.stderr)
        return 2
    new = head + "\n" + block(real) + "\n" + tail
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"samplecheck: {readme}: sample written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
