"""Lab 2 on a real lab VM with the two e1000e cards (one booted VM shared by these tests, every run
from its clean snapshot): the solution gets full marks with the driver's copybreak on (the CPU copies
the 58-byte frame) and off (copy #4 reads the card's buffer); a module whose physical addresses are
made up fails the hypervisor's checks. The card's view comes from QEMU's own trace events. The VM
is conftest's nic_lab_vm."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from support.lab2_submissions import make_submission  # noqa: E402

from grader.engine.labspec import load_lab  # noqa: E402
from grader.engine.run import grade  # noqa: E402

# one worker runs every lab 2 test: they share the one VM of lab 2's shape (nic_lab_vm)
pytestmark = pytest.mark.xdist_group("lab2")


@pytest.fixture(scope="module")
def lab():
    return load_lab("lab2")


def graded(lab, vm, tmp_path, kind, **kw):
    sub = make_submission(kind, tmp_path / kind)
    return grade(lab, vm, sub, tmp_path / f"{kind}-out", **kw).result


def explain(result) -> str:
    return "\n".join(f"{c['name']}: " + "; ".join(f"{e['mark']}: {e['text']}" for e in c["evidence"])
                     for c in result["checks"] if not c["passed"]) + f"\nphases: {result['phases']}"


def check(result, name) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


@pytest.mark.parametrize("copybreak, path", [(256, "copies it into a fresh skb"),
                                             (0, "hands the card's buffer up")])
def test_solution_full_marks_with_copybreak_on_and_off(lab, nic_lab_vm, tmp_path, copybreak, path):
    result = graded(lab, nic_lab_vm, tmp_path, "solution", copybreak=copybreak)
    assert result["score"] == result["max_score"] == 100, explain(result)
    card = result["host_evidence"]["nic-trace"]
    assert card["status"] == "ok", card
    kinds = {o["kind"] for o in card["observations"]}
    assert {"nic_tx", "nic_rx", "direct_map"} <= kinds
    evidence = "\n".join(e["text"] for e in check(result, "copy4_source")["evidence"])
    assert f"copybreak={copybreak}" in evidence and path in evidence
    rows = {r["step"]: r for r in result["trace_table"]}
    assert rows[4]["card"].startswith("read 0x") and rows[5]["card"].startswith("wrote 0x")
    assert result["copies"] == (5 if copybreak else 4)
    assert "host-nic-trace.txt" in result["artifacts"]
    log = (tmp_path / "solution-out" / "host-nic-trace.txt").read_text()
    assert "e1000e_tx_descr" in log and "e1000e_rx_desc_buff_write" in log


def test_a_made_up_physical_address_fails_the_hypervisor_checks_with_a_hint(lab, nic_lab_vm, tmp_path):
    result = graded(lab, nic_lab_vm, tmp_path, "made_up_pa")
    for name in ("tx_record", "rx_record", "copy4_source", "programs_report"):
        assert check(result, name)["passed"], explain(result)
    for name in ("tx_card_read", "rx_card_write"):
        c = check(result, name)
        assert not c["passed"] and c["hint"]
        assert any("is not where the card" in e["text"] and "QEMU saw 0x" in e["text"] for e in c["evidence"]), c
    assert result["score"] == 70
