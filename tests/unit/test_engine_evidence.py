from support.engine_runs import KADDR, MSG, RBUF, SBUF, START_SEQ, kmsg_text, trace_text, words

from grader.engine import evidence as ev


def test_kmsg_records_filtering_and_continuations():
    recs = ev.parse_kmsg(kmsg_text(), after_seq=START_SEQ)
    assert [r.seq for r in recs] == [START_SEQ + 1, START_SEQ + 3, START_SEQ + 4]
    assert recs[0].extra == ["SUBSYSTEM=module", "DEVICE=+module:copytrace"]
    assert recs[0].facility == 0 and recs[0].level == 6
    # user-facility records (prio 14 = facility 1) are dropped unless asked for
    allrecs = ev.parse_kmsg(kmsg_text(), kernel_only=False)
    assert any(r.facility == 1 for r in allrecs)
    assert ev.parse_kmsg("6,5,1,-,caller=T12;hello\ngarbage\n")[0].text == "hello"


def test_copy_records_full_and_milestone_forms():
    recs = ev.parse_copy_records(ev.parse_kmsg(kmsg_text(), after_seq=START_SEQ))
    c1, c4 = recs
    assert (c1.kind, c1.src, c1.dest, c1.len) == ("COPY1", SBUF, KADDR, 16)
    assert (c4.kind, c4.src, c4.dest, c4.len) == ("COPY4", KADDR, RBUF, 16)
    assert not c1.milestone_form and c4.user_addr == RBUF and c4.kernel_addr == KADDR
    m = ev.parse_copy_records("6,1,1,-;copytrace: [COPY1] dest=ff49648bc2a4da2c len=16\n"
                              "6,2,1,-;x [COPY4] src=0xff49648bc2a4da2c len=16 trailing\n")
    assert m[0].src is None and m[0].dest == KADDR and m[0].milestone_form
    assert m[1].src == KADDR and m[1].dest is None and m[1].milestone_form


def test_program_output():
    s = ev.parse_sender('noise\nsender: buffer at 0x559c785ba060\n'
                        'sender: sent 16 bytes "HELLO_SEND_TRACE" to 127.0.0.1:4000\n')
    assert (s.buffer, s.sent_len, s.sent_text, s.port) == (SBUF, 16, MSG, 4000)
    r = ev.parse_receiver('receiver: listening on 127.0.0.1:4000\nreceiver: buffer at (nil)\n'
                          'receiver: received 8 bytes "HELLO_SE"\n')
    assert (r.listening_port, r.buffer, r.received_len, r.received_text) == (4000, 0, 8, "HELLO_SE")


def test_trace_lines():
    evs = ev.parse_trace(trace_text())
    assert [e.event for e in evs] == ["copylab_tx", "copylab_rxmsg", "copylab_rx", "copylab_tx"]
    tx, rxmsg, rx, noise = evs
    assert (tx.comm, tx.pid, tx.cpu, tx.flags) == ("sender", 1234, 1, "d..1.")
    assert tx.location == "ip_generic_getfrag+0x0/0x140"
    assert tx.num("to") == KADDR and tx.num("len") == 16 and tx.user_addr == SBUF
    assert rxmsg.user_addr == RBUF
    assert rx.num("data") == KADDR and rx.payload() == MSG.encode()
    assert noise.comm == "bash"


def test_trace_comm_with_dashes_and_no_flags_column():
    line = ("   my-recv-er-77  [000]  5.000001: copylab_rx: (skb_consume_udp+0x0/0x80) "
            "data=0xff49648bc2a4da2c len=-11 w0=0x0 w1=0x0 comm=\"my-recv-er\"")
    (e,) = ev.parse_trace(line)
    assert e.comm == "my-recv-er" and e.pid == 77 and e.flags == "" and e.num("len") == -11


def test_decode_words():
    w0, w1 = words("ABCDEFGHIJKLMNOP")
    assert ev.decode_words(int(w0, 16), int(w1, 16)) == b"ABCDEFGHIJKLMNOP"
    assert ev.decode_words(0x4241, 0, 2) == b"AB"


def test_crash_markers_and_taint():
    text = ("ok line\nBUG: kernel NULL pointer dereference, address: 0000000000000000\n"
            "Oops: 0000 [#1] PREEMPT SMP NOPTI\nKernel panic - not syncing: Fatal exception\n"
            "general protection fault, probably for non-canonical address\n"
            "WARNING: CPU: 1 PID: 42 at kernel/kprobes.c:1234 foo\n"
            "usb 1-1: WARNING: firmware is old\n")
    found = ev.crash_lines(text)
    assert len(found) == 5 and not any("firmware" in f for f in found)
    assert ev.new_fatal_taint(0, 4096 | 8192) == 0
    assert ev.new_fatal_taint(4096, 4096 | 8192 | 128) == 128
    assert ev.new_fatal_taint(128, 128 | 4096) == 0      # already set before the run
    assert "DIE" in ev.taint_names(128) and ev.parse_taint("12288\n") == 12288
    assert ev.parse_taint("") is None
