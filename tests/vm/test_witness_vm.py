"""The hypervisor witness on the real, shared lab VM: gdb on QEMU's gdbstub reads copies #1 and #4
from the grader host while real grading runs go on (grader/vm/gdbwitness.py)."""
from __future__ import annotations

# `lab` is test_grading's module-scoped fixture
from test_grading import checks, lab  # noqa: F401
from test_grading import evidence_text as text

from support.lab1_submissions import FORGED_KERNEL, make_submission  # noqa: E402

from grader.engine.run import grade


def graded(lab, lab_vm, tmp_path, kind):
    outcome = grade(lab, lab_vm, make_submission(kind, tmp_path / kind), tmp_path / f"{kind}-out")
    return outcome.result, outcome.run


def witness_of(result) -> dict:
    return result["host_evidence"]["gdbstub"]


def assert_witnessed(result, run, tmp_path, kind):
    w = witness_of(result)
    assert w["status"] == "ok", w
    assert "gdbstub" in w["where"] and "outside the guest" in w["where"]
    message = run.message.encode()
    c1 = [o for o in run.host_evidence["gdbstub"].of("copy1") if o.values.get("bytes") == message]
    c4 = [o for o in run.host_evidence["gdbstub"].of("copy4") if o.values.get("bytes") == message]
    assert len(c1) == 1 and len(c4) == 1, w
    # the same skb on loopback, the message at both user buffers, read from outside the guest
    assert c1[0].num("dest") == c4[0].num("src")
    assert c4[0].values["dest_bytes"] == message
    assert c1[0].num("len") == c4[0].num("len") == 16
    raw = (tmp_path / f"{kind}-out" / "host-gdbstub.txt").read_text()
    assert "WITNESS armed" in raw and "reason=stopped" in raw
    return c1[0], c4[0]


def test_solution_gets_full_marks_with_the_witness(lab, lab_vm, tmp_path):
    result, run = graded(lab, lab_vm, tmp_path, "solution")
    c = checks(result)
    assert result["score"] == 100, {n: text(x) for n, x in c.items() if not x["passed"]}
    c1, c4 = assert_witnessed(result, run, tmp_path, "solution")
    assert "watched from outside by gdbstub" in next(p for p in result["phases"] if p["name"] == "verify")["detail"]
    agree = text(c["agrees_with_witness"])
    assert "QEMU's gdbstub" in agree and f"0x{c1.num('dest'):x}" in agree and "hypervisor" in agree
    assert f'"{run.message}" at the skb' in text(c["message_witnessed"])
    # the sender's records and the hypervisor agree on the user source too
    assert c1.num("src") == run.module_records("COPY1")[0].src


def test_a_module_that_forges_the_guest_trace_fails_on_the_witness(lab, lab_vm, tmp_path):
    result, run = graded(lab, lab_vm, tmp_path, "trace_forgery")
    c = checks(result)
    # inside the guest the forgery works: the trace holds only its invented events, which agree
    assert f"to={FORGED_KERNEL}" in run.trace_text, run.trace_text[-2000:]
    assert c["agrees_with_trace"]["passed"], text(c["agrees_with_trace"])
    assert c["copy1_kernel_side"]["passed"] and c["copy4_kernel_side"]["passed"]
    # the hypervisor saw the real copies
    c1, _ = assert_witnessed(result, run, tmp_path, "trace_forgery")
    assert c1.num("dest") != int(FORGED_KERNEL, 16)
    agree = c["agrees_with_witness"]
    assert not agree["passed"]
    assert agree["evidence"][0]["mark"] == "bad" and "hypervisor (QEMU's gdbstub" in agree["evidence"][0]["text"]
    assert "COPY1 dest" in agree["evidence"][0]["text"] and "COPY4 src" in agree["evidence"][0]["text"]
    there = c["message_witnessed"]
    assert not there["passed"] and FORGED_KERNEL in text(there)
    assert result["score"] <= 90


def test_the_witness_watches_again_after_a_kernel_crash(lab, lab_vm, tmp_path):
    result, _ = graded(lab, lab_vm, tmp_path, "panic")
    assert result["verdict"] and result["verdict"].startswith("kernel crashed")
    w = witness_of(result)
    # QEMU ended with the panic: the window closed without hanging, saying what happened
    assert w["status"] in ("failed", "ok"), w
    if w["status"] == "failed":
        assert "lost the VM" in w["detail"]
    # the next job: QEMU restored from the clean snapshot, a new gdbstub socket, the witness works
    result, run = graded(lab, lab_vm, tmp_path, "solution")
    assert result["score"] == 100
    assert_witnessed(result, run, tmp_path, "solution")


def test_a_run_that_never_sends_gives_none_seen_not_a_crash(lab, lab_vm, tmp_path):
    result, run = graded(lab, lab_vm, tmp_path, "skeleton")
    w = witness_of(result)
    assert w["status"] == "ok" and "none of this run's length seen" in w["detail"], w
    assert not run.host_evidence["gdbstub"].of("copy1") and not run.host_evidence["gdbstub"].of("copy4")
    assert result["verdict"] is None
    assert checks(result)["agrees_with_witness"]["skipped_because"]
