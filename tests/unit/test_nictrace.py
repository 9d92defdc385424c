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
