from support.engine_runs import KADDR, MSG, RBUF, SBUF, good_run, kmsg_text, receiver_out, trace_text

from grader.engine.checkrun import REGISTRY, run_checks
from grader.engine.labspec import load_lab
from grader.engine.model import PhaseRecord

LAB = load_lab("lab1")


def results(run):
    return {r.name: r for r in run_checks(LAB.checks, run)}


def marks(r):
    return [e.mark for e in r.evidence]


def lab_points(res) -> int:
    """The lab's score: the questions (answers file) are scored apart."""
    return sum(r.points for r in res.values() if r.part == "lab")


def test_good_run_scores_100():
    res = results(good_run())   # no answers file: the lab's full score all the same
    lab = {n: r for n, r in res.items() if r.part == "lab"}
    assert all(r.passed for r in lab.values()), {n: r.evidence for n, r in lab.items() if not r.passed}
    assert lab_points(res) == 100
    assert "bad" not in sum((marks(r) for r in res.values()), [])


def test_build_failure_skips_dependents():
    run = good_run(build_exit=2, build_log="copytrace.c:10:1: error: expected ';'\n")
    run.phases["build"] = PhaseRecord("build", "failed")
    res = results(run)
    assert not res["build_ok"].passed and "bad" in marks(res["build_ok"])
    assert any("expected ';'" in e.text for e in res["build_ok"].evidence)
    for name in ("module_loads", "programs_report"):
        assert res[name].skipped_because == "build_ok" and res[name].points == 0
        assert "build_ok" in res[name].evidence[0].text
    assert res["copy1_kernel_side"].skipped_because == "module_loads"
    assert lab_points(res) == 0
    assert res["build_ok"].as_dict()["hint"]


def test_load_failure():
    run = good_run(load_exit=1, load_output="insmod: ERROR: could not insert module: Unknown symbol",
                   kmsg_text=kmsg_text(copy1="", copy4="",
                                       extra=["copytrace: register_kprobe(_copy_fron_iter) failed: -2"]))
    run.phases["load"] = PhaseRecord("load", "failed")
    r = results(run)["module_loads"]
    assert not r.passed and any("register_kprobe" in e.text and e.mark == "bad" for e in r.evidence)


def test_unload_failure():
    run = good_run(unload_exit=1, unload_output="rmmod: ERROR: Module copytrace is in use")
    run.phases["unload"] = PhaseRecord("unload", "failed")
    r = results(run)["module_unloads"]
    assert not r.passed and "in use" in r.evidence[0].text


def test_programs_truncation_is_not_a_pass():
    run = good_run(receiver_out=receiver_out(n=8))
    r = REGISTRY["programs_report"](run, {})
    assert not r[0] and any(e.mark == "bad" and "truncated" in e.text and "8 of the 16" in e.text
                            for e in r[1])


def test_programs_missing_lines():
    run = good_run(sender_out="hello\n")
    ok, evid = REGISTRY["programs_report"](run, {})
    assert not ok and sum(e.mark == "missing" for e in evid) == 2


def test_milestone_form_gets_kernel_side_only():
    run = good_run(kmsg_text=kmsg_text(copy1=f"copytrace: [COPY1] dest={KADDR:016x} len=16",
                                       copy4=f"copytrace: [COPY4] src={KADDR:016x} len=16"))
    res = results(run)
    assert res["copy1_kernel_side"].passed and res["copy4_kernel_side"].passed
    assert not res["copy1_record"].passed and "missing" in marks(res["copy1_record"])
    assert not res["copy4_record"].passed
    assert res["agrees_with_trace"].skipped_because in ("copy1_record", "copy4_record")
    assert lab_points(res) == 65


def test_copy1_wrong_user_address_and_len():
    run = good_run(kmsg_text=kmsg_text(
        copy1=f"copytrace: [COPY1] src={SBUF + 8:016x} dest={KADDR:016x} len=16"))
    res = results(run)
    assert res["copy1_kernel_side"].passed and not res["copy1_record"].passed
    assert any(e.mark == "bad" and "sender's buffer is at 0x559c785ba060" in e.text
               for e in res["copy1_record"].evidence)
    run = good_run(kmsg_text=kmsg_text(
        copy1=f"copytrace: [COPY1] src={SBUF:016x} dest={KADDR:016x} len=15"))
    assert any(e.mark == "bad" and "len=15" in e.text
               for e in results(run)["copy1_kernel_side"].evidence)


def test_copy1_not_kernel_address():
    run = good_run(kmsg_text=kmsg_text(
        copy1=f"copytrace: [COPY1] src={SBUF:016x} dest={SBUF:016x} len=16"))
    r = results(run)["copy1_kernel_side"]
    assert not r.passed and any("not a kernel address" in e.text for e in r.evidence)


def test_copy1_duplicates_fail():
    c1 = f"copytrace: [COPY1] src={SBUF:016x} dest={KADDR:016x} len=16"
    run = good_run(kmsg_text=kmsg_text(extra=[c1]))
    r = results(run)["copy1_kernel_side"]
    assert not r.passed and "2 [COPY1] records" in r.evidence[0].text


def test_copy1_missing_names_the_checksum_path():
    run = good_run(kmsg_text=kmsg_text(copy1=""), trace_text=trace_text(with_csum=True))
    r = results(run)["copy1_kernel_side"]
    assert not r.passed and r.evidence[0].mark == "missing"
    assert any(e.mark == "info" and "csum_and_copy_from_user" in e.text
               and "csum_and_copy_from_iter_full" in e.text and "MSG_MORE" in e.text
               for e in r.evidence)
    # no checksumming copy in the trace: the filter is the suspect, not the path
    run = good_run(kmsg_text=kmsg_text(copy1=""))
    assert any(e.mark == "info" and "filter" in e.text and "ip_generic_getfrag" in e.text
               for e in results(run)["copy1_kernel_side"].evidence)
    run = good_run(kmsg_text=kmsg_text(copy1=""), trace_text=trace_text(with_tx=False))
    assert any("saw no ip_generic_getfrag" in e.text or "none from 'sender'" in e.text
               for e in results(run)["copy1_kernel_side"].evidence)


def test_copy4_src_must_equal_copy1_dest():
    run = good_run(kmsg_text=kmsg_text(
        copy4=f"copytrace: [COPY4] src={KADDR + 64:016x} dest={RBUF:016x} len=16"))
    res = results(run)
    assert not res["copy4_kernel_side"].passed
    assert any(e.mark == "bad" and "differs from COPY1" in e.text
               for e in res["copy4_kernel_side"].evidence)
    assert res["copy4_record"].skipped_because == "copy4_kernel_side"


def test_copy4_wrong_receiver_buffer():
    run = good_run(kmsg_text=kmsg_text(
        copy4=f"copytrace: [COPY4] src={KADDR:016x} dest={RBUF + 16:016x} len=16"))
    r = results(run)["copy4_record"]
    assert not r.passed and "bad" in marks(r)


def test_kernel_addresses_the_trace_did_not_see_fail_the_kernel_side_checks():
    run = good_run(trace_text=trace_text(to=KADDR + 0x100, data=KADDR + 0x100))
    res = results(run)
    for name, where in (("copy1_kernel_side", "ip_generic_getfrag to"),
                        ("copy4_kernel_side", "skb_consume_udp skb->data")):
        assert not res[name].passed
        assert any(e.mark == "bad" and where in e.text and "does not describe this run" in e.text
                   for e in res[name].evidence), name
    assert res["agrees_with_trace"].skipped_because


def test_trace_disagreement_names_the_numbers():
    # the user addresses disagree with the trace (the programs and the module agree with each other)
    run = good_run(trace_text=trace_text(s_ubase=SBUF + 0x40, r_ubase=RBUF + 0x40))
    r = results(run)["agrees_with_trace"]
    assert not r.passed
    assert r.evidence[0].mark == "bad"
    assert "COPY1 src vs tx ubase+uoff" in r.evidence[0].text
    assert "COPY4 dest vs rxmsg ubase+uoff" in r.evidence[0].text
    assert "COPY1 dest" not in r.evidence[0].text
    assert any(e.mark == "good" and "COPY1 dest vs tx to" in e.text for e in r.evidence)


def test_trace_payload_mismatch_and_missing_trace():
    run = good_run(trace_text=trace_text(msg="XXXXXXXXXXXXXXXX"))
    # the rx event still matches on len; the payload differs
    r = REGISTRY["agrees_with_trace"](run, {})
    assert not r[0] and any(e.mark == "bad" and "payload" in e.text for e in r[1])
    run = good_run(trace_text=None)
    ok, evid = REGISTRY["agrees_with_trace"](run, {})
    assert not ok and evid[0].mark == "missing"


def test_no_kernel_fault():
    assert REGISTRY["no_kernel_fault"](good_run(), {})[0]
    run = good_run(kmsg_text=kmsg_text(extra=["BUG: kernel NULL pointer dereference, address: 0"]),
                   taint_after=4096 | 8192 | 128)
    ok, evid = REGISTRY["no_kernel_fault"](run, {})
    assert not ok and sum(e.mark == "bad" for e in evid) == 2
    assert any("DIE" in e.text for e in evid)
    run = good_run(crash_excerpt="Oops: 0000 [#1]\nKernel panic - not syncing", crash_phase="run",
                   kmsg_text=None, taint_after=None)
    ok, evid = REGISTRY["no_kernel_fault"](run, {})
    assert not ok and "during run" in evid[0].text and any("Kernel panic" in e.text for e in evid)


def test_check_exception_is_contained():
    from grader.engine.labspec import CheckSpec
    def boom(run, o):
        raise RuntimeError("x")
    (r,) = run_checks([CheckSpec("b", "boom", 5)], good_run(), registry={"boom": boom})
    assert not r.passed and "internal error" in r.evidence[0].text
