"""Lab 2's records and checks on realistic run data: the addresses of a measured run in a lab VM
(direct map base 0xffff889dc0000000, frame 58 bytes at 0x4a32202, received at 0x992e040), the guest
trace of the driver probes and the nic-trace source's observations."""
from __future__ import annotations

from support.engine_runs import MSG, PORT, RBUF, SBUF, good_run, words

from grader.engine import evidence as ev
from grader.engine.checkrun import run_checks
from grader.engine.hostevidence import HostEvidence, Observation
from grader.engine.labspec import load_lab

LAB = load_lab("lab2")
BASE = 0xFFFF889DC0000000
TX_PA = 0x4A32202
RX_PA = 0x992E040
COPY_PA = 0x8FE1440              # the copybreak skb's frame
ADDR = "169.254.10.2"


def frame_bytes(msg=MSG) -> bytes:
    return bytes(42) + msg.encode() + bytes(2)


def lab2_run(copybreak=256, tx_pa=TX_PA, rx_pa=RX_PA, card=True, frames=True, **over):
    copies = 60 < copybreak
    tx_data, rx_data = BASE + TX_PA, BASE + RX_PA
    handed_up = BASE + COPY_PA if copies else rx_data
    c1_dest, c4_src = tx_data + 42, handed_up + 42
    records = [f"wiretrace: [COPY1] src={SBUF:016x} dest={c1_dest:016x} len=16",
               f"wiretrace: [TX] data={tx_data:016x} pa={tx_pa:016x} len=58",
               f"wiretrace: [RX] data={rx_data:016x} pa={rx_pa:016x} len=60"]
    if copies:
        records.append(f"wiretrace: [COPYBREAK] src={rx_data:016x} dest={handed_up:016x} len=60")
    records.append(f"wiretrace: [COPY4] src={c4_src:016x} dest={RBUF:016x} len=16")
    w0, w1 = words(MSG)
    trace = "\n".join([
        f'          sender-1234    [001] d..1.   12.1: copylab_tx: (ip_generic_getfrag+0x0/0x140) '
        f'to=0x{c1_dest:x} len=16 ubase=0x{SBUF:x} uoff=0x0 comm="sender"',
        f'          sender-1234    [001] b..1.   12.2: copylab_nic_tx: (e1000_xmit_frame+0x0/0xeb0 [e1000e]) '
        f'data=0x{BASE + 0x7bbb0402:x} len=42 w0=0x0 w1=0x0 comm="sender"',
        f'          sender-1234    [001] b..1.   12.3: copylab_nic_tx: (e1000_xmit_frame+0x0/0xeb0 [e1000e]) '
        f'data=0x{tx_data:x} len=58 w0={w0} w1={w1} comm="sender"',
        f'          <idle>-0       [000] ..s1.   12.4: copylab_nic_rx: (e1000_receive_skb+0x0/0x130 [e1000e]) '
        f'data=0x{handed_up:x} len=60 w0={w0} w1={w1} comm="swapper/0"',
        f'        receiver-1230    [000] .....   12.0: copylab_rxmsg: (udp_recvmsg+0x0/0x5a0) '
        f'ubase=0x{RBUF:x} uoff=0x0 comm="receiver"',
        f'        receiver-1230    [000] ..s1.   12.5: copylab_rx: (skb_consume_udp+0x0/0x90) '
        f'data=0x{c4_src:x} len=16 w0={w0} w1={w1} comm="receiver"']) + "\n"
    observations = [Observation("nic_tx", {"addr": 0x7BBB0402, "len": 42}),
                    Observation("nic_rx", {"addr": 0x992A840, "len": 60, "bytes": bytes(60)})]
    if frames:
        observations += [Observation("nic_tx", {"addr": TX_PA, "len": 58}),
                         Observation("nic_rx", {"addr": RX_PA, "len": 60, "bytes": frame_bytes()})]
    observations.append(Observation("direct_map", {"base": BASE}))
    run = good_run(
        lab_id="lab2", receiver_addr=ADDR, copybreak=copybreak,
        sender_out=f'sender: buffer at 0x{SBUF:x}\nsender: sent 16 bytes "{MSG}" to {ADDR}:{PORT}\n',
        receiver_out=(f"receiver: listening on {ADDR}:{PORT}\nreceiver: buffer at 0x{RBUF:x}\n"
                      f'receiver: received 16 bytes "{MSG}"\n'),
        kmsg_text="".join(f"6,{1001 + i},5200000,-;{t}\n" for i, t in enumerate(records)),
        trace_text=trace)
    if card:
        run.host_evidence["nic-trace"] = HostEvidence("nic-trace", "QEMU", "ok", "", observations)
    for k, v in over.items():
        setattr(run, k, v)
    return run


def results(run):
    return {r.name: r for r in run_checks(LAB.checks, run)}


def texts(r):
    return "\n".join(f"{e.mark}: {e.text}" for e in r.evidence)


def failed(res):
    return {n: texts(r) for n, r in res.items() if not r.passed}


def test_records_of_lab2_parse_with_lab1s_forms_unchanged():
    recs = ev.parse_records(lab2_run().kmsg_text)
    assert [r.kind for r in recs] == ["COPY1", "TX", "RX", "COPYBREAK", "COPY4"]
    tx = recs[1]
    assert (tx.data, tx.pa, tx.len) == (BASE + TX_PA, TX_PA, 58)
    assert [r.kind for r in ev.parse_copy_records(lab2_run().kmsg_text)] == ["COPY1", "COPY4"]
    assert ev.parse_records("6,1,1,-;wiretrace: [TX] data=(null) pa=0 len=58\n") == []
    assert ev.parse_records("6,1,1,-;wiretrace: [RX] data=ffff889dc992e040 pa=992e040\n") == []


def test_full_marks_with_copybreak_on_and_off():
    for cb in (256, 0):
        res = results(lab2_run(copybreak=cb))
        assert not failed(res), (cb, failed(res))
        assert sum(r.points for r in res.values()) == 100
    on = texts(results(lab2_run(copybreak=256))["copy4_source"])
    assert "copies it into a fresh skb" in on and "COPY4's source is not in the buffer the card wrote" in on
    off = texts(results(lab2_run(copybreak=0))["copy4_source"])
    assert "hands the card's buffer up" in off and "COPY4's source is in the buffer the card wrote" in off


def test_a_made_up_physical_address_fails_the_hypervisor_check_naming_the_cards_address():
    res = results(lab2_run(tx_pa=0x1234000))
    assert res["tx_record"].passed and not res["tx_card_read"].passed
    assert "pa=0x1234000 is not where the card read the 58-byte frame: QEMU saw 0x4a32202" in texts(res["tx_card_read"])
    res = results(lab2_run(rx_pa=0x5555000))
    assert not res["rx_card_write"].passed and "QEMU saw 0x992e040" in texts(res["rx_card_write"])


def test_the_virtual_address_where_the_physical_one_is_asked_fails_with_a_hint():
    res = results(lab2_run(tx_pa=BASE + TX_PA))
    assert not res["tx_record"].passed and res["tx_card_read"].skipped_because == "tx_record"
    assert "is a kernel virtual address (the same as data=)" in texts(res["tx_record"])
    assert "virt_to_phys" in texts(res["tx_record"])


def test_records_consistent_but_invented_fail_against_the_trace_and_the_card():
    run = lab2_run()
    shift = 0x100000
    run.kmsg_text = run.kmsg_text.replace(f"{BASE + TX_PA:016x}", f"{BASE + TX_PA + shift:016x}") \
        .replace(f"pa={TX_PA:016x}", f"pa={TX_PA + shift:016x}")
    run.__dict__.pop("kmsg", None)
    run.__dict__.pop("records", None)
    res = results(run)
    assert not res["tx_record"].passed and "the independent trace saw skb->data" in texts(res["tx_record"])


def test_no_frame_through_the_card_says_so():
    res = results(lab2_run(frames=False))
    assert "no datagram went through the card" in texts(res["tx_card_read"])
    assert "the card wrote no frame holding this run's message" in texts(res["rx_card_write"])


def test_without_the_hypervisors_view_the_card_checks_say_who_has_it():
    res = results(lab2_run(card=False))
    assert res["tx_record"].passed and res["copy4_source"].passed
    assert "copylab_nic_tx (e1000_xmit_frame) skb->data" in texts(res["tx_record"])
    for name in ("tx_card_read", "rx_card_write"):
        assert not res[name].passed and "only the official grader has it" in texts(res[name])


def test_copybreak_records_that_contradict_the_driver_fail():
    run = lab2_run(copybreak=256)
    run.copybreak = 0         # the driver did not copy, yet the module says it did
    res = results(run)
    assert not res["copy4_source"].passed
    assert "a [COPYBREAK] record, but the driver did not copy this frame" in texts(res["copy4_source"])


def test_arp_frames_logged_as_tx_are_not_the_lab_frame():
    run = lab2_run()
    run.kmsg_text += f"6,2000,5300000,-;wiretrace: [TX] data={BASE + 0x7bbb0402:016x} pa=7bbb0402 len=42\n"
    assert results(run)["tx_record"].passed


def test_the_journey_shows_the_guests_and_the_cards_side_with_this_runs_addresses():
    from grader.engine.result import build_result, render_text

    for cb, copies in ((256, 5), (0, 4)):
        run = lab2_run(copybreak=cb)
        result = build_result(run, run_checks(LAB.checks, run), max_score=100)
        rows = {r["step"]: r for r in result["trace_table"]}
        assert rows[3]["location"] == f"skb->data 0x{BASE + TX_PA:x} (pa 0x{TX_PA:x})"
        assert rows[4]["card"] == f"read 0x{TX_PA:x}" and rows[4]["data"] == "len=58"
        assert rows[5]["card"] == f"wrote 0x{RX_PA:x}" and f'"{MSG}" at +42' in rows[5]["data"]
        assert rows[7]["card"] == f"reads {'outside' if cb else 'inside'} the buffer the card wrote"
        assert result["copies"] == copies and result["bytes_held"] == 16 * copies
        text = render_text(result)
        assert "card" in text.splitlines()[-10] and f"wrote 0x{RX_PA:x}" in text
    run = lab2_run(card=False)
    rows = build_result(run, [], max_score=100)["trace_table"]
    assert rows[3]["card"] == "?"           # no hypervisor view: unknown, not absent


def test_the_journey_picture_draws_the_frames_buffers_with_their_physical_addresses():
    """make check's picture of a correct lab 2 run: every buffer in its half, nothing named as
    unexpected, the copybreak skb only when the driver copied."""
    from grader.engine.journey import journey_from_result
    from grader.engine.journey import render_text as picture
    from grader.engine.result import build_result

    for cb in (256, 0):
        run = lab2_run(copybreak=cb)
        j = journey_from_result(build_result(run, run_checks(LAB.checks, run), max_score=100))
        assert not j.wrong and not j.missing, (j.wrong, j.missing)
        by_key = {p.key: p for p in j.places}
        assert by_key["tx"].physical == TX_PA and by_key["rx"].physical == RX_PA
        assert by_key["tx"].address == BASE + TX_PA and by_key["rx"].region == "kernel"
        assert by_key["sender"].address == SBUF and by_key["receiver"].address == RBUF
        assert ("copy" in by_key) == bool(cb)
        names = [c.name for c in j.copies]
        assert names == ["copy #1", "copy #2", "copy #3"] + (["copybreak"] if cb else []) + ["copy #4"]
        text = picture(j)
        assert f"0x{TX_PA:016x}" in text and "unexpected" not in text
        assert ("copybreak: receive buffer -> copybreak skb, 60 bytes" in text) == bool(cb)


def test_a_card_buffer_freed_before_the_hypervisor_read_it_is_found_through_the_guest_trace():
    run = lab2_run(copybreak=0)
    rx = run.card.of("nic_rx")[-1]
    rx.values["bytes"] = bytes(60)          # the stack freed the skb, the page was reused
    res = results(run)
    assert not failed(res), failed(res)
    assert "reused before the hypervisor read it" in texts(res["rx_card_write"])
    run = lab2_run(copybreak=256)
    run.card.of("nic_rx")[-1].values["bytes"] = bytes(60)   # with copybreak the trace saw the copy
    assert "the card wrote no frame holding this run's message" in texts(results(run)["rx_card_write"])


def test_make_check_names_the_card_checks_only_the_official_grader_runs():
    """In the student's VM the two hypervisor checks cannot pass: make check names them and they do
    not make it fail; with the card's view they count like any other check."""
    from grader.engine.check import official_only
    from grader.engine.labspec import load_lab

    lab = load_lab("lab2")
    result = {"host_evidence": {"nic-trace": {"status": "unavailable"}},
              "checks": [{"name": "tx_card_read", "passed": False, "max_points": 15},
                         {"name": "rx_card_write", "passed": False, "max_points": 15},
                         {"name": "tx_record", "passed": False, "max_points": 10}]}
    assert [c["name"] for c in official_only(lab, result)] == ["tx_card_read", "rx_card_write"]
    result["host_evidence"]["nic-trace"]["status"] = "ok"
    assert official_only(lab, result) == []


def test_make_check_shows_the_grader_only_checks_as_such_without_a_hint():
    """A check only the official grader can run is not the student's fault: make check's text says
    GRADER ONLY and leaves out the hint, which would send them looking for a bug in their pa=."""
    from grader.engine.result import build_result, render_text

    run = lab2_run(card=False)
    result = build_result(run, run_checks(LAB.checks, run), max_score=100)
    text = render_text(result, frozenset({"tx_card_read", "rx_card_write"}))
    assert "[GRADER ONLY] tx_card_read (0/15)" in text and "[GRADER ONLY] rx_card_write (0/15)" in text
    assert "[FAIL]" not in text and "hint: pa=" not in text
    assert "[FAIL] tx_card_read" in render_text(result) and "hint: pa=" in render_text(result)
