"""Lab 2's handout (labs/lab2/README.md) and sources checked against each other and the lead's record
contract: the skeleton generated from the solution, the TODO map by milestone, the record formats
(handout = contract = the solution's pr_info formats), the example runs' addresses agreeing with each
other, the points table against lab.toml, the commands against the sudo rules. No VM needed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB = REPO / "labs" / "lab2"
TOOLS = REPO / "labs" / "tools"
HANDOUT = (LAB / "README.md").read_text(encoding="utf-8")
SOURCES = ("sender.c", "receiver.c", "wiretrace.c")
HEADERS = 42  # Ethernet 14 + IPv4 20 + UDP 8

# the record contract, exactly as the lead fixed it (kinds, keys, order of keys)
CONTRACT = [
    "wiretrace: [COPY1] src=<user VA> dest=<kernel VA> len=<payload bytes>",
    "wiretrace: [TX] data=<kernel VA> pa=<physical address> len=<frame bytes>",
    "wiretrace: [RX] data=<kernel VA> pa=<physical address> len=<frame bytes>",
    "wiretrace: [COPYBREAK] src=<kernel VA> dest=<kernel VA> len=<frame bytes>",
    "wiretrace: [COPY4] src=<kernel VA> dest=<user VA> len=<payload bytes>",
]

from handouts import code_blocks, format_regex, handout_todos, pr_info_formats, run  # noqa: E402
from handouts import skeleton_todos  # noqa: E402
from test_lab1_handout import FULL_PATH, sudo_allows, sudo_rules  # noqa: E402


def solution_formats(kind: str = "") -> list[re.Pattern]:
    return [format_regex(f, "wiretrace: ") for f in pr_info_formats(LAB / "solution" / "wiretrace.c")
            if f"[{kind}" in f]


# --- one source for solution and skeleton ---------------------------------------------------------


def test_skeleton_is_generated_from_the_solution():
    r = run([sys.executable, str(TOOLS / "mkskeleton.py"), "--check", "lab2"])
    assert r.returncode == 0, r.stderr
    skeleton = (LAB / "skeleton" / "wiretrace.c").read_text()
    # the skeleton records nothing: every pr_info of a record is the student's to write
    assert not re.search(r'pr_info\("\[', skeleton)
    assert "BEGIN SOLUTION" not in skeleton and "phys_to_virt" not in skeleton.split("TODO(5)")[1].split("*/")[1]


def test_every_todo_is_mapped_to_its_milestone_in_skeleton_and_handout():
    todos = skeleton_todos(LAB / "skeleton", SOURCES)
    assert handout_todos(HANDOUT) == todos
    # kernel side first, then physical addresses, then copybreak
    kernel = {n for (f, n), ms in todos.items() if f == "wiretrace.c" and "1" in ms}
    physical = {n for (f, n), ms in todos.items() if f == "wiretrace.c" and "2" in ms}
    copybreak = {n for (f, n), ms in todos.items() if f == "wiretrace.c" and "3" in ms}
    assert kernel and physical and copybreak and not copybreak & (kernel | physical)
    m2 = HANDOUT.split("### Milestone 2:", 1)[1].split("###", 1)[0]
    m3 = HANDOUT.split("### Milestone 3:", 1)[1].split("###", 1)[0]
    assert all(f"TODO({n})" in m2 for n in physical)
    assert all(f"TODO({n})" in m3 for n in copybreak)


# --- records --------------------------------------------------------------------------------------


def test_the_handout_gives_the_record_contract_and_the_solution_prints_it():
    section = HANDOUT.split("### The exact records", 1)[1]
    block = code_blocks(section)[0].splitlines()
    assert block == CONTRACT
    for line in CONTRACT:
        kind = re.match(r"wiretrace: \[(\w+)\]", line).group(1)
        [fmt] = [f for f in pr_info_formats(LAB / "solution" / "wiretrace.c") if f.startswith(f"[{kind}]")]
        keys = re.findall(r"(\w+)=", line)
        assert re.findall(r"(\w+)=", fmt) == keys, (kind, fmt)


def example_records(text: str) -> list[tuple[str, dict[str, int]]]:
    out = []
    for kind, fields in re.findall(r"^\[\s*[\d.]+\] wiretrace: \[(\w+)\] (.*)$", text, flags=re.M):
        out.append((kind, {k: int(v, 16) if k != "len" else int(v) for k, v in
                           re.findall(r"(\w+)=(\S+)", fields)}))
    return out


def test_example_runs_match_the_solution_and_their_addresses_agree():
    lines = re.findall(r"^\[\s*[\d.]+\] (wiretrace: .*)$", HANDOUT, flags=re.M)
    assert len(lines) >= 8
    for line in lines:
        assert any(r.fullmatch(line) for r in solution_formats()), line
    on, off = [example_records(b) for b in code_blocks(HANDOUT) if "] wiretrace: [" in b][:2]
    rec = dict(on)
    assert [k for k, _ in on] == ["COPY1", "TX", "RX", "COPYBREAK", "COPY4"]
    assert rec["TX"]["data"] + HEADERS == rec["COPY1"]["dest"] and rec["TX"]["len"] == 58
    assert rec["COPYBREAK"]["src"] == rec["RX"]["data"] and rec["RX"]["len"] == 60
    assert rec["COPYBREAK"]["dest"] + HEADERS == rec["COPY4"]["src"]
    for r in (rec["TX"], rec["RX"]):
        assert r["pa"] % 4096 == r["data"] % 4096
    # the hypervisor lines quoted with that run: where the cards read and wrote
    assert f"e1000e_tx_descr {rec['TX']['pa']:#x} : ab10003a" in HANDOUT
    assert f"addr: {rec['RX']['pa']:#x}, offset: 0," in HANDOUT
    # copybreak 0: no copy, COPY4 reads the card's buffer
    rec0 = dict(off)
    assert "COPYBREAK" not in rec0 and rec0["RX"]["data"] + HEADERS == rec0["COPY4"]["src"]


def test_module_log_lines_name_every_probe_and_parameter():
    src = (LAB / "solution" / "wiretrace.c").read_text()
    for sym in ("_copy_from_iter", "e1000_xmit_frame", "dma_unmap_page_attrs", "eth_type_trans",
                "_copy_to_iter"):
        assert f'= "{sym}";' in src, sym  # a module parameter's default
        assert f"`{sym}`" in HANDOUT, sym
    assert '#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt' in src
    assert 'pr_err("register_kprobe(%s) failed: %d\\n"' in src
    assert "module_param(port," in src and "port={port}" in (LAB / "lab.toml").read_text()


# --- points table ---------------------------------------------------------------------------------


def test_points_table_matches_lab_toml():
    r = run([sys.executable, str(TOOLS / "pointstable.py"), "--check", str(LAB)])
    assert r.returncode == 0, r.stderr


def test_the_checks_only_the_official_grader_runs_are_named():
    from grader.engine.labspec import load_lab

    kinds = {c.name: c.kind for c in load_lab(LAB / "lab.toml").checks}
    section = HANDOUT.split("## 11. What the grader checks", 1)[1].split("<!-- BEGIN points", 1)[0]
    for name in ("tx_card_read", "rx_card_write"):
        assert name in kinds and f"`{name}`" in section


# --- commands as written --------------------------------------------------------------------------


def test_student_sudo_commands_are_allowed_by_the_sudo_rules():
    rules = sudo_rules()
    commands = [m.group(1).strip() for block in code_blocks(HANDOUT)
                for m in re.finditer(r"\bsudo ((?:insmod|rmmod|dmesg)\b[^#|&\n]*)", block)]
    assert any(c.startswith("insmod ") and "wiretrace.ko" in c for c in commands)
    for cmd in commands:
        prog, _, args = cmd.partition(" ")
        line = " ".join([FULL_PATH[prog], *args.split()])
        assert any(sudo_allows(rule, line) for rule in rules), f"`sudo {cmd}`: no rule in {rules}"


def test_the_pagemap_snippet_is_lab_one_s():
    lab1 = (REPO / "labs" / "lab1" / "README.md").read_text()
    [mine] = [b for b in code_blocks(HANDOUT) if "/pagemap" in b]
    assert mine in code_blocks(lab1)


def test_makefile_sets_the_network_up_through_the_helper():
    mk = (LAB / "Makefile").read_text()
    assert re.search(r"^net:\n\tsudo \$\(COPYLAB_HELPER\) net-up$", mk, flags=re.M)
    assert re.search(r"^check: net$", mk, flags=re.M)
    assert "obj-m := wiretrace.o" in (LAB / "Kbuild").read_text()


@pytest.mark.parametrize("needle", [
    "58 bytes", "**60**", "descriptor", "DMA", "physical", "copybreak=0", "ARP", "0x0806",
    "copylab-rx", "169.254.10.1", "169.254.10.2", "52:54:00:00:0a:01", "52:54:00:00:0b:01",
    "make net", "net-run", "hypervisor", "QEMU copying guest RAM", "/proc/PID/pagemap",
    "virt_to_phys", "page_offset_base", "lab doctor",
])
def test_handout_covers(needle):
    assert needle in HANDOUT
