"""Lab 1's handout (labs/lab1/README.md) checked against the code it describes: the points table
against lab.toml, the TODO map against the skeleton, the record and log formats against the
module's format strings and the grader's parser, the sudo commands against the provisioned sudo
rules, the tools it uses against the provisioned packages, and the pagemap snippet by running it.
No VM needed."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # ansible-core's dependency

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "labs" / "lab1"
TOOLS = REPO / "labs" / "tools"
HANDOUT = (LAB / "README.md").read_text(encoding="utf-8")
ROLES = REPO / "provision" / "roles"

from grader.engine.evidence import parse_copy_records  # noqa: E402
from grader.engine.labspec import load_lab  # noqa: E402

import handouts  # noqa: E402  (tests/unit: on sys.path as the test's own folder)
from handouts import code_blocks, handout_todos, pr_info_formats, run, skeleton_todos  # noqa: E402


# --- points table -------------------------------------------------------------------------------


def pointstable(*args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, str(TOOLS / "pointstable.py"), *args])


def test_points_table_matches_lab_toml():
    r = pointstable("--check", str(LAB))
    assert r.returncode == 0, r.stderr


def test_points_table_names_every_check_and_the_dependency_rule():
    spec = load_lab(LAB / "lab.toml")
    section = HANDOUT.split("<!-- BEGIN points table", 1)[1].split("<!-- END points table", 1)[0]
    for c in spec.checks:
        assert re.search(rf"\| `{c.name}` \| [^|]+ \| {c.points} \|", section), c.name
    assert f"**{spec.max_score}**" in section
    assert "dependency failed is not run and scores 0" in section


def test_points_table_drift_is_found_and_rewritten(tmp_path):
    lab = tmp_path / "lab1"
    lab.mkdir()
    shutil.copy(LAB / "README.md", lab / "README.md")
    toml = (LAB / "lab.toml").read_text()
    # move 5 points between two checks: the total stays valid, the table is stale
    toml = re.sub(r'(name = "build_ok"(?:.|\n)*?points = )10', r"\g<1>15", toml, count=1)
    toml = re.sub(r'(name = "module_unloads"(?:.|\n)*?points = )5', r"\g<1>0", toml, count=1)
    (lab / "lab.toml").write_text(toml)
    r = pointstable("--check", str(lab))
    assert r.returncode == 1 and "out of date" in r.stderr
    assert (lab / "README.md").read_text() == HANDOUT  # --check writes nothing
    assert pointstable(str(lab)).returncode == 0
    assert "| 1 | `build_ok` | sender, receiver and copytrace.ko build | 15 |" in (
        lab / "README.md"
    ).read_text()
    assert pointstable("--check", str(lab)).returncode == 0


def test_points_table_refuses_a_handout_without_markers(tmp_path):
    lab = tmp_path / "lab1"
    lab.mkdir()
    shutil.copy(LAB / "lab.toml", lab / "lab.toml")
    (lab / "README.md").write_text("# no table here\n")
    r = pointstable(str(lab))
    assert r.returncode == 2 and "needs exactly one line" in r.stderr


def test_milestone_one_score_in_the_handout_is_lab_toml_s():
    spec = load_lab(LAB / "lab.toml")
    # the checks that need a user address, and every check that depends on them
    user_side = {"copy1_record", "copy4_record"}
    for c in spec.checks:  # lab.toml lists checks in dependency order
        if set(c.depends) & user_side:
            user_side.add(c.name)
    m1 = sum(c.points for c in spec.checks if c.name not in user_side and c.part == "lab")
    assert f"{m1} of {spec.max_score}" in HANDOUT


# --- TODO map -----------------------------------------------------------------------------------

def test_every_todo_is_mapped_to_its_milestone_in_skeleton_and_handout():
    assert handout_todos(HANDOUT) == skeleton_todos(LAB / "skeleton",
                                                    ("sender.c", "receiver.c", "copytrace.c"))


def test_milestone_sections_name_their_todos():
    m1 = HANDOUT.split("### Milestone 1:", 1)[1].split("###", 1)[0]
    m2 = HANDOUT.split("### Milestone 2:", 1)[1].split("###", 1)[0]
    assert "TODO(1) to TODO(6)" in m1
    assert "TODO(7)" in m2


# --- formats ------------------------------------------------------------------------------------


def format_regex(fmt: str) -> re.Pattern:
    return handouts.format_regex(fmt, "copytrace: ")


def test_record_examples_match_the_solution_and_the_grader_parser():
    solution = [format_regex(f) for f in pr_info_formats(LAB / "solution" / "copytrace.c")]
    full = [r for r in solution if "COPY" in r.pattern]
    assert len(full) == 2
    examples = re.findall(r"^\[\s*[\d.]+\] (copytrace: \[COPY[14]\] .*)$", HANDOUT, flags=re.M)
    assert len(examples) >= 2
    for line in examples:
        assert any(r.fullmatch(line) for r in full), line
        [rec] = parse_copy_records(f"6,1,1000,-;{line}")
        assert rec.src is not None and rec.dest is not None and rec.len == 16
    # the record templates of both milestones, as the grader reads them
    templates = re.findall(r"^copytrace: (\[COPY[14]\] .*)$", HANDOUT, flags=re.M)
    filled = [t.replace("<kernel VA>", "ffff888004a7c62c").replace("<user VA>", "000055d0c0ffee00")
              .replace("<n>", "16") for t in templates]
    parsed = parse_copy_records("".join(f"6,{i},1000,-;copytrace: {t}\n"
                                        for i, t in enumerate(filled)))
    assert len(parsed) == len(templates) == 4
    assert [r.milestone_form for r in parsed] == [True, True, False, False]


def test_module_log_lines_in_the_handout_match_the_skeleton():
    formats = [format_regex(f) for f in pr_info_formats(LAB / "skeleton" / "copytrace.c")]
    for start in ("copytrace: probes on ", "copytrace: probes removed: "):
        [line] = [l for l in HANDOUT.splitlines() if l.startswith(start)]
        assert any(r.fullmatch(line) for r in formats), line


def test_pagemap_snippet_measures_a_physical_address():
    [snippet] = [b for b in code_blocks(HANDOUT) if "/pagemap" in b]
    script = snippet.split("<<'EOF'\n", 1)[1].rsplit("EOF", 1)[0]
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import ctypes,sys,time; b=ctypes.create_string_buffer(16); b.value=b'HELLO';"
         "print(hex(ctypes.addressof(b)), flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        va = proc.stdout.readline().strip()
        r = run([sys.executable, "-", str(proc.pid), va], input=script)
    finally:
        proc.kill()
        proc.wait()
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"present=(\d) pfn=(0x[0-9a-f]+) pa=(0x[0-9a-f]+)\n", r.stdout)
    assert m, r.stdout
    present, pfn, pa = int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16)
    assert present == 1
    if os.geteuid() == 0:
        assert pfn > 0 and pa == pfn * 4096 + (int(va, 16) & 0xFFF)
    else:  # the handout's point: only root reads real frame numbers
        assert pfn == 0


# --- commands that work as written ------------------------------------------------------------


def _defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def sudo_rules() -> list[str]:
    d = _defaults("copylab_lab")

    def expand(s: str) -> str:
        while "{{" in s:
            s = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(d[m.group(1)]), s)
        return s

    return [expand(r) for r in d["copylab_lab_student_sudo_commands"]]


FULL_PATH = {"insmod": "/usr/sbin/insmod", "rmmod": "/usr/sbin/rmmod", "dmesg": "/usr/bin/dmesg"}


def sudo_allows(rule: str, line: str) -> bool:
    """sudoers: a command named without arguments may be run with any; otherwise the whole
    line must match, with shell-style wildcards."""
    if " " not in rule:
        return line.split(" ", 1)[0] == rule
    return fnmatch.fnmatchcase(line, rule)


def test_student_sudo_commands_are_allowed_by_the_sudo_rules():
    rules = sudo_rules()
    commands = [
        m.group(1).strip()
        for block in code_blocks(HANDOUT)
        for m in re.finditer(r"\bsudo ((?:insmod|rmmod|dmesg)\b[^#|\n]*)", block)
    ]
    assert any(c.startswith("insmod ") for c in commands)
    for cmd in commands:
        prog, _, args = cmd.partition(" ")
        line = " ".join([FULL_PATH[prog], *args.split()])
        assert any(sudo_allows(rule, line) for rule in rules), (
            f"`sudo {cmd}` in the handout asks the student for a password: no rule in {rules}")
    assert "sudo insmod copytrace.ko" not in "\n".join(code_blocks(HANDOUT))


def test_the_tools_the_handout_uses_are_provisioned():
    packages = set(_defaults("copylab_toolchain")["copylab_toolchain_packages"])
    used = {"xxd": "xxd", "strace": "strace", "`man ascii`": "man-db", "addr2line": "build-essential"}
    for tool, package in used.items():
        assert tool in HANDOUT, tool
        assert package in packages, f"the handout uses {tool}: {package} is not installed"
    assert "manpages" in packages  # `man ascii`


def test_no_kernel_fault_hint_agrees_with_the_handout():
    [check] = [c for c in load_lab(LAB / "lab.toml").checks if c.name == "no_kernel_fault"]
    assert "i->iov" in check.hint and "_nofault" in check.hint
    assert "Never dereference user or kernel pointers" not in check.hint
    assert "Why may TODO(7) then read `i->iov->iov_base` directly?" in HANDOUT


@pytest.mark.parametrize("needle", [
    "lab doctor", "sudo dmesg -C", "MSG_MORE", "GOOD_COPY_LEN", "copybreak", "IOVA",
    "page-table isolation", "Count the digits", "ffff8cb08de63c00", "setarch -R",
    "pr_info_ratelimited", "/sys/kernel/debug/kprobes/list", "/proc/kallsyms", "addr2line",
    "ip_generic_getfrag", "current->comm", "nothing was submitted",
])
def test_handout_covers(needle):
    assert needle in HANDOUT
