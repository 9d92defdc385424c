"""Helpers for the lab handout tests (test_lab1_handout.py, test_lab2_handout.py): a handout's code
blocks and TODO map, a module's pr_info formats as regexes over the printed lines."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

TODO_BLOCK = re.compile(r"TODO\((\d+)\):(.*?)\*/", re.S)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)


def pr_info_formats(path: Path) -> list[str]:
    """The format strings of the module's pr_info calls (C escapes kept)."""
    return re.findall(r'pr_info\("((?:[^"\\]|\\.)*)"', path.read_text())


def format_regex(fmt: str, prefix: str) -> re.Pattern:
    """A printk format as a regex over the printed line (the conversions the lab modules use)."""
    fmt = fmt.removesuffix("\\n")
    parts = re.split(r"(%px|%016llx|%zu|%ld|%u|%s)", fmt)
    conv = {"%px": "[0-9a-f]{16}", "%016llx": "[0-9a-f]{16}", "%zu": r"\d+", "%ld": r"\d+",
            "%u": r"\d+", "%s": r"\S+"}
    body = "".join(conv.get(p, re.escape(p)) for p in parts)
    return re.compile(prefix + body)


def skeleton_todos(skeleton: Path, names) -> dict[tuple[str, int], set[str]]:
    """(file, n) -> the milestones its TODO comment names, from the generated skeleton; every file's
    TODOs are numbered 1..n in order."""
    out: dict[tuple[str, int], set[str]] = {}
    for name in names:
        text = (skeleton / name).read_text()
        numbers = []
        for m in TODO_BLOCK.finditer(text):
            n = int(m.group(1))
            numbers.append(n)
            out[(name, n)] = set(re.findall(r"\[milestone ([\d.]+)\]", m.group(2)))
            assert out[(name, n)], f"{name} TODO({n}) names no milestone"
        assert numbers == list(range(1, len(numbers) + 1)), f"{name}: TODOs not numbered 1..n"
    return out


def handout_todos(text: str) -> dict[tuple[str, int], set[str]]:
    """The handout's TODO map: rows `| `file.c` | TODO(n) | milestones |`."""
    rows = re.findall(r"^\| `(\w+\.c)` \| TODO\((\d+)\) \| ([\d., ]+) \|", text, flags=re.M)
    return {(f, int(n)): {m.strip() for m in ms.split(",")} for f, n, ms in rows}
