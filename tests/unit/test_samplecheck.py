"""labs/tools/samplecheck.py: the handout's sample `make check` output is written from a real run
and compared with another real run modulo what changes per run."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "labs" / "tools" / "samplecheck.py"
_spec = importlib.util.spec_from_file_location("copylab_samplecheck", TOOL)
sc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)

RUN_A = """\
copylab lab1 run 20261202-1a2b: 100/100 points

[PASS] module_loads (5/5) - the module loads
    + insmod succeeded (payload=K3Q9_ZP0A8M2XW1T)
    + receiver: listening on 127.0.0.1:41234
      copytrace: [COPY1] src=0000559c785ba060 dest=ff49648bc2a4da2c len=16
    + dest=0xff49648bc2a4da2c is a kernel address
      sender-1234    [001] d..1.   123.456789: copylab_tx: (ip_generic_getfrag+0x0/0x140) to=0xff49648bc2a4da2c
    + no fatal taint (before 0, after 12288: OOT_MODULE, UNSIGNED_MODULE)
phases: acquire ok 0.0s, build ok 21.3s
step  action        location
----  ------------  ----------------------------
3     copy #1       0x559c785ba060 -> 0xff49648bc2a4da2c
"""
RUN_B = (RUN_A.replace("20261202-1a2b", "20261202-ffff").replace("K3Q9_ZP0A8M2XW1T", "AAAABBBBCCCCDDDD")
         .replace("41234", "20001").replace("559c785ba060", "55d00000e0a0")
         .replace("ff49648bc2a4da2c", "ffff888004b1d02c").replace("sender-1234    [001]", "sender-88 [000]")
         .replace("123.456789", "9.5").replace("21.3s", "33.0s").replace("before 0", "before 12288")
         .replace("------------  ----------------------------", "--------  --------------------------------"))


def readme(tmp_path: Path, body: str = "```\n$ make check\n```\n") -> Path:
    lab = tmp_path / "lab"
    lab.mkdir(exist_ok=True)
    (lab / "README.md").write_text(f"# Lab\n\nintro\n\n{sc.BEGIN}\n{body}{sc.END}\n\nafter\n")
    return lab


def tool(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=60, **kw)


def test_two_runs_differ_only_in_what_changes_per_run():
    assert sc.differences(RUN_A, RUN_B) == []
    assert "MESSAGE" in " ".join(sc.normalize(RUN_A)) and "PORT" in " ".join(sc.normalize(RUN_A))


@pytest.mark.parametrize("change", [
    ("[PASS] module_loads (5/5)", "[FAIL] module_loads (0/5)"),      # a result
    ("is a kernel address", "is an address"),                        # a reworded line
    ("len=16\n", "len=16\n    + an extra line\n"),                   # a new line
])
def test_a_reworded_or_added_line_is_a_difference(change):
    assert sc.differences(RUN_A, RUN_B.replace(*change))


def test_the_sample_is_written_between_the_markers_and_then_matches(tmp_path):
    lab = readme(tmp_path)
    (tmp_path / "run.txt").write_text(RUN_A)
    r = tool(lab, "--from", tmp_path / "run.txt")
    assert r.returncode == 0, r.stderr
    text = (lab / "README.md").read_text()
    assert text.startswith("# Lab\n\nintro\n\n") and text.endswith(f"{sc.END}\n\nafter\n")
    assert f"```\n$ make check\n{RUN_A}```\n" in text
    assert sc.sample_of(text, "README.md") == RUN_A
    r = tool(lab, "--check", "--from", "-", input=RUN_B)
    assert r.returncode == 0 and "matches the real run" in r.stdout, r.stderr
    r = tool(lab, "--check", "--from", "-", input=RUN_B.replace("is a kernel address", "is kernel"))
    assert r.returncode == 1 and "is kernel" in r.stderr


def test_run_mode_runs_make_check_and_refuses_a_failing_run(tmp_path):
    lab = readme(tmp_path)
    folder = tmp_path / "labfolder"
    folder.mkdir()
    (tmp_path / "out.txt").write_text(RUN_A)
    (folder / "Makefile").write_text(f"check:\n\t@cat {tmp_path / 'out.txt'}\n")
    r = tool(lab, "--run", folder)
    assert r.returncode == 0, r.stderr
    assert sc.sample_of((lab / "README.md").read_text(), "README.md") == RUN_A
    (folder / "Makefile").write_text("check:\n\t@echo '[FAIL] build_ok'; exit 1\n")
    r = tool(lab, "--run", folder)
    assert r.returncode == 2 and "not the solution's full marks" in r.stderr


def test_missing_markers_or_output_are_refused(tmp_path):
    lab = tmp_path / "nolab"
    lab.mkdir()
    (lab / "README.md").write_text("# no markers\n")
    r = tool(lab, "--from", "-", input=RUN_A)
    assert r.returncode == 2 and "needs exactly one line" in r.stderr
    r = tool(readme(tmp_path), "--from", "-", input="  \n")
    assert r.returncode == 2 and "no make check output" in r.stderr



def test_the_lab1_handout_has_a_sample_block():
    text = (ROOT / "labs" / "lab1" / "README.md").read_text()
    sample = sc.sample_of(text, "labs/lab1/README.md")
    assert "\ncopylab lab1 run " in sample and "100/100 points" in sample
    assert "questions (answers file, scored apart): 0/10 points" in sample   # the template, unanswered


def test_lab2_runs_differ_only_in_what_changes_per_run_and_its_handout_has_a_sample():
    """Lab 2's receiver listens on the second card's address, and net-status counts the cards'
    packets since boot: both change per run."""
    run = ('{"nics": [{"rx_packets": 9, "tx_packets": 20}], "ready": true}\n'
           "    + receiver: listening on 169.254.10.2:51530\n"
           '    + sender: sent 16 bytes "X" to 169.254.10.2:51530\n')
    other = run.replace("51530", "39953").replace('"rx_packets": 9', '"rx_packets": 27')
    assert sc.differences(run, other) == []
    assert sc.differences(run, other.replace("ready", "up")) != []
    text = (ROOT / "labs" / "lab2" / "README.md").read_text()
    sample = sc.sample_of(text, "labs/lab2/README.md")
    assert "\ncopylab lab2 run " in sample and "70/100 points" in sample
    assert "[GRADER ONLY] tx_card_read" in sample and "unexpected" not in sample
