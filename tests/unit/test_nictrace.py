"""The nic-trace source's parsing, on lines QEMU 7.2 wrote in a lab VM (ARP request and reply, the
16-byte datagram, the receiver's ICMP answer) and on its monitor's answers."""
from __future__ import annotations

from grader.vm import hostsources
from grader.vm.nictrace import parse_nic_log, parse_xp, tx_length

CAPTURED = """\
qemu-system-x86_64: warning: hub 1 is not connected to host network
e1000e_tx_descr 0x7bbb0402 : 8b00002a 0
e1000e_rx_desc_buff_write buffer #0, addr: 0x992a840, offset: 0, from: 0x7f42ed2e6a50, length: 60
e1000e_tx_descr 0x7bbb0402 : 8b00002a 0
e1000e_rx_desc_buff_write buffer #0, addr: 0x855d840, offset: 0, from: 0x7f42ed2e6a50, length: 60
e1000e_tx_descr 0x282200000000 : 20000000 0
e1000e_tx_descr 0x7ba74802 : ab10003a 200
e1000e_rx_desc_buff_write buffer #0, addr: 0x992b840, offset: 0, from: 0x7f42ecae5a50, length: 60
e1000e_tx_descr 0x7bbb0402 : 8b000056 0
e1000e_rx_desc_buff_write buffer #0, addr: 0x8558840, offset: 0, from: 0x564eed5ef190, length: 14
e1000e_rx_desc_buff_write buffer #0, addr: 0x8558840, offset: 14, from: 0x564eed5ef1a6, length: 20
e1000e_rx_desc_buff_write buffer #0, addr: 0x8558840, offset: 34, from: 0x7f429b9b0424, length: 52
"""


def test_card_reads_and_writes_in_order_context_descriptors_skipped_pieces_joined():
    obs = [(o.kind, o.values["addr"], o.values["len"]) for o in parse_nic_log(CAPTURED)]
    assert obs == [("nic_tx", 0x7bbb0402, 42), ("nic_rx", 0x992a840, 60),        # ARP request
                   ("nic_tx", 0x7bbb0402, 42), ("nic_rx", 0x855d840, 60),        # ARP reply
                   ("nic_tx", 0x7ba74802, 58), ("nic_rx", 0x992b840, 60),        # the datagram
                   ("nic_tx", 0x7bbb0402, 86), ("nic_rx", 0x8558840, 86)]        # ICMP, in 3 pieces


def test_tx_descriptor_lengths():
    assert tx_length(0xab10003a) == 58      # extended data descriptor, 20-bit length
    assert tx_length(0x8b00002a) == 42      # legacy descriptor, 16-bit length
    assert tx_length(0x20000000) is None    # context descriptor: no buffer


def test_timestamped_lines_and_garbage():
    text = ("1234@1701538000.123456:e1000e_tx_descr 0x5cf3a02 : ab10003a 200\n"
            "e1000e_tx_descr (nil) : 8b00002a 0\n"
            "e1000e_rx_desc_buff_write buffer #0, addr: 0x10, offset: 14, from: 0x1, length: 2\n"
            "e1000e_tx_descr 0x5cf3a02 : zz\n")
    assert [(o.kind, o.values) for o in parse_nic_log(text)] == [("nic_tx", {"addr": 0x5cf3a02, "len": 58})]


def test_xp_answer_bytes():
    answer = ("000000000992b840: 0x52 0x54 0x00 0x00 0x0b 0x01 0x52 0x54\n"
              "000000000992b848: 0x00 0x00 0x0a 0x01 0x08 0x00 0x45 0x00")
    assert parse_xp(answer) == bytes.fromhex("525400000b01525400000a0108004500")
    assert parse_xp("Cannot access memory") == b""


def test_offered_only_to_a_vm_with_the_lab_cards():
    class Plain:
        nic_pair = False

    class LabVM:
        def __init__(self, nic_pair):
            self.vm = Plain()
            self.vm.nic_pair = nic_pair

    source, why = hostsources.offer("nic-trace", LabVM(False), None, None)
    assert source is None and "no e1000e lab cards" in why
    source, why = hostsources.offer("nic-trace", LabVM(True), None, None)
    assert source.name == "nic-trace" and why == ""


class StandInQemu:
    """The monitor answers of a QEMU (a unit-test stand-in: tests/vm/test_lab2.py drives a real one)."""

    def __init__(self, answers, stderr):
        self.answers, self.stderr_path, self.sent = answers, stderr, []

    def monitor(self, command, timeout=30):
        self.sent.append(command)
        for prefix, answer in self.answers.items():
            if command.startswith(prefix):
                return answer
        return ""

    def running(self):
        return True


class StandInEx:
    def __init__(self, stdout, ok=True):
        self.stdout, self.ok = stdout, ok

    def run(self, cmd, timeout):
        return type("R", (), {"stdout": self.stdout, "stderr": "", "ok": self.ok})()


def test_prepare_refuses_a_qemu_without_the_card_events(tmp_path):
    import pytest

    from grader.engine.hostevidence import HostEvidenceUnavailable
    from grader.vm.nictrace import NicTrace

    qemu = StandInQemu({"info trace-events e1000e_tx_descr": ""}, tmp_path / "q.err")
    with pytest.raises(HostEvidenceUnavailable, match="no trace event e1000e_tx_descr .another QEMU build"):
        NicTrace(qemu).prepare(StandInEx(""), None)


def test_a_run_reads_only_its_part_of_qemus_stderr_and_switches_the_events_off(tmp_path):
    from grader.vm.nictrace import NicTrace

    err = tmp_path / "q.err"
    err.write_text("e1000e_tx_descr 0x1000 : ab10003a 200\n")          # an earlier run's line
    qemu = StandInQemu({"info trace-events e1000e_tx_descr": "e1000e_tx_descr : state 0",
                        "info trace-events e1000e_rx_desc_buff_write": "e1000e_rx_desc_buff_write : state 0",
                        "x /1gx": "ffffffffa2c13d60: 0xffff889dc0000000",
                        "xp ": "000000000992b840: 0x00 0x01"}, err)
    source = NicTrace(qemu)
    source.prepare(StandInEx("page_offset_base 0xffffffffa2c13d60\n"), None)
    source.arm(None)
    with open(err, "a") as f:
        f.write(CAPTURED)
    evidence = source.collect(None)
    assert evidence.status == "ok" and "read 4 and wrote 4" in evidence.detail
    assert [o.values["addr"] for o in evidence.of("nic_tx")][0] == 0x7bbb0402     # not 0x1000
    assert evidence.of("direct_map")[0].values == {"base": 0xffff889dc0000000}
    assert qemu.sent.index("trace-event e1000e_tx_descr on") < qemu.sent.index("trace-event e1000e_tx_descr off")
    empty = NicTrace(qemu)
    empty.base = 1
    empty.arm(None)
    assert "no frame went through the lab cards" in empty.collect(None).detail
