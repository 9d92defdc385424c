"""The grader engine on the real, shared lab VM: the solution, the skeleton, correct variants and
hostile submissions, each graded by a real run (build, load, trace, check) from the clean snapshot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from support.lab1_submissions import make_submission  # noqa: E402

from grader.engine.journey import journey_from_result  # noqa: E402
from grader.engine.labspec import load_lab  # noqa: E402
from grader.engine.run import grade  # noqa: E402
from grader.vm.qemu import DEFAULT_QEMU_USER  # noqa: E402


@pytest.fixture(scope="module")
def lab():
    return load_lab("lab1")


def run_kind(lab, lab_vm, tmp_path, kind):
    sub = make_submission(kind, tmp_path / kind)
    outcome = grade(lab, lab_vm, sub, tmp_path / f"{kind}-out")
    return outcome.result


def checks(result) -> dict:
    return {c["name"]: c for c in result["checks"]}


def evidence_text(check) -> str:
    return "\n".join(f"{e['mark']}: {e['text']}" for e in check["evidence"])


def phases(result) -> dict:
    return {p["name"]: p for p in result["phases"]}


def assert_full_marks(result):
    failed = {n: evidence_text(c) for n, c in checks(result).items() if not c["passed"]}
    assert result["score"] == result["max_score"] == 100, f"failed checks: {failed}\nphases: {result['phases']}"
    assert result["verdict"] is None


def test_solution_full_marks(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "solution")
    assert_full_marks(result)
    # the narrative's claim, measured: copy #4's kernel source is copy #1's kernel destination
    rows = result["trace_table"]
    assert len(rows) == 7
    assert result["copies"] == 2 and result["bytes_held"] == 48
    assert result["environment"]["kernel_release"] == "6.1.0-50-amd64"
    # the journey picture finds all three buffers, each in its half of the address space
    journey = journey_from_result(result)
    assert [p.region for p in journey.places] == ["user", "kernel", "user"]
    assert journey.missing == [] and journey.wrong == [] and journey.split_from == "6.1.0-50-amd64"
    assert result["environment"]["qemu"]["sandbox"] is True   # graded under the seccomp sandbox
    if os.geteuid() == 0:
        assert result["environment"]["qemu"]["user"] == os.environ.get("COPYLAB_QEMU_USER", DEFAULT_QEMU_USER)
    assert len(result["environment"]["module_sha256"]) == 64
    for p in result["phases"]:
        assert p["status"] == "ok", p
        assert p["duration_s"] >= 0
    assert result["outcome"] == {"kind": "graded", "phase": None, "reason": None}
    for name in ("build.log", "kmsg.txt", "sender.out", "receiver.out", "trace.txt"):
        assert name in result["artifacts"]
    trace = (tmp_path / "solution-out" / "trace.txt").read_text()
    assert "copylab_tx" in trace and "copylab_rx" in trace


def test_skeleton_fails_exactly_its_todos(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "skeleton")
    c = checks(result)
    assert c["build_ok"]["passed"] and c["module_loads"]["passed"] and c["module_unloads"]["passed"]
    assert c["no_kernel_fault"]["passed"]
    for open_todo in ("programs_report", "copy1_kernel_side", "copy4_kernel_side"):
        assert not c[open_todo]["passed"], open_todo
        assert c[open_todo]["evidence"], f"{open_todo} failed without evidence"
        assert c[open_todo]["hint"]
    for dependent in ("copy1_record", "copy4_record", "agrees_with_trace"):
        assert not c[dependent]["passed"] and c[dependent]["skipped_because"], dependent
    assert 0 < result["score"] < result["max_score"]


@pytest.mark.parametrize("kind", ["payload_filter", "regs_di", "recvfrom"])
def test_plausible_correct_variants_pass(lab, lab_vm, tmp_path, kind):
    assert_full_marks(run_kind(lab, lab_vm, tmp_path, kind))


@pytest.mark.parametrize("kind", ["iovec_only", "raw_iov"])
def test_modules_written_for_6_1_iovec_iterators_get_full_marks_on_6_1(lab, lab_vm, tmp_path, kind):
    """On 6.1 a single-buffer sendto()/recv() builds ITER_IOVEC, so these pass here; on 6.12 (ITER_UBUF)
    the same sources lose the user addresses or crash the kernel (tests/vm/test_kernel_6_12.py)."""
    assert_full_marks(run_kind(lab, lab_vm, tmp_path, kind))


def test_panicking_module_then_next_submission_gets_full_marks(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "panic")
    assert result["verdict"] and result["verdict"].startswith("kernel crashed during "), result["verdict"]
    crash = (tmp_path / "panic-out" / "crash.txt").read_text()
    assert "BUG" in crash or "Oops" in crash or "Kernel panic" in crash
    assert not checks(result)["no_kernel_fault"]["passed"]
    # the VM was restored: the next correct submission on the same VM gets full marks
    assert_full_marks(run_kind(lab, lab_vm, tmp_path, "solution"))


@pytest.mark.parametrize("kind", ["hang_sender", "hang_receiver"])
def test_hanging_program_times_out_and_keeps_partial_results(lab, lab_vm, tmp_path, kind):
    result = run_kind(lab, lab_vm, tmp_path, kind)
    ph = phases(result)
    assert ph["run"]["status"] == "timeout", ph["run"]
    assert ph["build"]["status"] == "ok" and ph["load"]["status"] == "ok"
    out = (tmp_path / f"{kind}-out" / "receiver.out").read_text()
    assert "receiver: listening on 127.0.0.1:" in out or kind == "hang_receiver"
    assert "sender.out" in result["artifacts"] or "receiver.out" in result["artifacts"]
    assert not checks(result)["programs_report"]["passed"]
    assert checks(result)["build_ok"]["passed"]


@pytest.mark.parametrize("kind", ["forgery", "replay"])
def test_forged_records_fail_the_agreement_with_the_independent_trace(lab, lab_vm, tmp_path, kind):
    result = run_kind(lab, lab_vm, tmp_path, kind)
    c = checks(result)
    assert not c["agrees_with_trace"]["passed"]
    assert result["score"] < result["max_score"]
    # the kernel addresses are not the ones the grader's own trace saw in this run
    for name in ("copy1_kernel_side", "copy4_kernel_side"):
        assert not c[name]["passed"], name
        assert any(e["mark"] == "bad" and "does not describe this run" in e["text"]
                   for e in c[name]["evidence"]), evidence_text(c[name])
    if kind == "replay":
        # the replayed numbers agree with what the programs printed: only the trace can tell
        assert c["programs_report"]["passed"]


def test_compile_error_shows_the_build_log(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "compile_error")
    c = checks(result)
    assert not c["build_ok"]["passed"]
    assert "error" in evidence_text(c["build_ok"]).lower()
    assert phases(result)["load"]["status"] != "ok"
    assert result["score"] == 0


def test_huge_output_is_capped(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "huge_output")
    out = tmp_path / "huge_output-out" / "sender.out"
    assert out.exists()
    assert out.stat().st_size <= 2_000_000, "the sender's output was not capped"
    assert checks(result)["build_ok"]["passed"]


def test_missing_copy1_names_the_path_that_copied_instead(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "missing_copy1")
    c = checks(result)
    assert not c["copy1_kernel_side"]["passed"]
    text = evidence_text(c["copy1_kernel_side"])
    assert "csum_and_copy_from_iter" in text, text


def test_the_answers_file_is_graded_apart_against_this_run(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "answers")
    assert_full_marks(result)
    assert result["questions"] == {"score": 10, "max_score": 10}, \
        {n: evidence_text(c) for n, c in checks(result).items() if c["part"] == "questions"}
    # the distance was checked against this run's own trace, not taken on trust
    assert "the independent trace: skb->data" in evidence_text(checks(result)["answer_copy_distance"])
    assert result["answers"]["values"]["copy_distance"] == "0"
    assert "answers.txt" in result["submission"]["files"]


@pytest.mark.parametrize("kind, check, named", [
    ("swapped_copy1", "copy1_kernel_side", "mistake: dest and src are swapped in [COPY1]"),
    ("percent_p", "copy1_kernel_side", "like what %p prints"),
    ("handout_numbers", "copy1_kernel_side", "are example addresses from the handout"),
])
def test_a_common_mistake_is_named_next_to_its_symptoms(lab, lab_vm, tmp_path, kind, check, named):
    result = run_kind(lab, lab_vm, tmp_path, kind)
    c = checks(result)[check]
    text = evidence_text(c)
    assert not c["passed"] and named in text, text
    # the symptom lines stay
    assert any(e["mark"] == "bad" and "mistake:" not in e["text"] for e in c["evidence"]), text
    assert result["questions"]["score"] == 0


def test_a_sender_that_never_exits_is_not_blamed_on_the_receiver(lab, lab_vm, tmp_path):
    result = run_kind(lab, lab_vm, tmp_path, "sender_lingers")
    run = phases(result)["run"]
    assert run["status"] == "timeout" and "the sender did not finish in time" in run["detail"], run
    assert "the receiver did not finish" not in run["detail"], run
    pr = evidence_text(checks(result)["programs_report"])
    assert "the sender did not exit after it sent the message" in pr, pr
    assert "payload arrived intact" in pr and "receiver timed out" not in pr, pr
    # the module's side of the run is unaffected (the records' checks need programs_report)
    assert checks(result)["copy1_kernel_side"]["passed"] and checks(result)["copy4_kernel_side"]["passed"]


def test_qemu_killed_from_outside_mid_build_is_the_hosts_failure(lab, lab_vm, tmp_path):
    """SIGKILL of QEMU during the module build (an operator, the OOM killer): no crash verdict for
    the student, the VM says why (the service retries on that), and the next job runs normally."""
    import os
    import signal
    import threading
    import time

    from grader.engine.run import GradingRun

    # the build in the VM: a sandbox build on the host is over before the kill
    g = GradingRun(lab, lab_vm, make_submission("solution", tmp_path / "killed"), tmp_path / "killed-out",
                   build_place="vm")
    t = threading.Thread(target=g.execute)
    t.start()
    deadline = time.monotonic() + 240       # the VM may be busy restoring under a loaded host
    while time.monotonic() < deadline and g.run.phase_status("upload") != "ok" and t.is_alive():
        time.sleep(0.2)
    assert g.run.phase_status("upload") == "ok", g.run.phases
    time.sleep(5)                           # well inside the ~60 s build
    assert t.is_alive() and lab_vm.vm.running()
    os.kill(lab_vm.vm._proc.pid, signal.SIGKILL)
    t.join(300)
    assert g.run.verdict is None, g.run.verdict
    assert g.run.phase_status("build") == "failed", g.run.phases["build"]
    assert "killed by signal 9" in (lab_vm.infrastructure_fault() or "")
    assert_full_marks(run_kind(lab, lab_vm, tmp_path, "solution"))   # reset from the snapshot
    assert lab_vm.infrastructure_fault() is None
