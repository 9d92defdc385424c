"""Lab 2's solution on a lab VM with the two e1000e cards: it builds, loads, and one datagram from the
first card to the second gives all five records, whose addresses agree with each other, with the
programs' own lines and with QEMU's view of the emulated cards (its trace events, read on this host).
With copybreak on the driver copies the 60-byte frame ([COPYBREAK], COPY4 reads the copy); with
copybreak=0 it hands up the card's buffer (no [COPYBREAK], COPY4 reads the card's buffer)."""
from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

# one worker runs every lab 2 test: they share the one VM of lab 2's shape (nic_lab_vm)
pytestmark = pytest.mark.xdist_group("lab2")

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "labs" / "lab2"
HEADERS = 14 + 20 + 8  # Ethernet + IPv4 + UDP in front of the payload
PORT = 9999

# the lab network as the handout describes it, by hand: idempotent, run as root
NET_UP = """
set -e
ns=copylab-rx
nic() { for d in /sys/class/net/*; do [ "$(cat $d/address)" = "$1" ] && basename $d && return; done; true; }
ip netns list | grep -qw $ns || ip netns add $ns
a=$(nic 52:54:00:00:0a:01)
b=$(nic 52:54:00:00:0b:01)
[ -n "$b" ] && ip link set "$b" netns $ns
b=$(ip netns exec $ns sh -c 'for d in /sys/class/net/*; do [ "$(cat $d/address)" = 52:54:00:00:0b:01 ] && basename $d; done; true')
ip addr replace 169.254.10.1/24 dev "$a"; ip link set "$a" up
ip netns exec $ns ip addr replace 169.254.10.2/24 dev "$b"
ip netns exec $ns ip link set "$b" up; ip netns exec $ns ip link set lo up
"""

RUN = """
set -e
cd ~/lab2
sudo dmesg -C
sudo insmod wiretrace.ko port={port} msg_len={n}
rm -f recv.out
sudo ip netns exec copylab-rx sudo -u "$USER" ./receiver 169.254.10.2 {port} > recv.out 2>&1 &
for i in $(seq 100); do grep -q listening recv.out 2>/dev/null && break; sleep 0.2; done
./sender {message} 169.254.10.2 {port}
wait
cat recv.out
sudo rmmod wiretrace
sudo dmesg
"""


@pytest.fixture(scope="module")
def lab_vm(nic_lab_vm):
    """The shared VM of lab 2's shape (overrides the plain one), from its clean snapshot; these tests
    change it by hand, so the next acquire restores the snapshot again."""
    nic_lab_vm.acquire()
    yield nic_lab_vm
    nic_lab_vm.fresh = False


def build(admin_ssh, sources: str) -> None:
    """~/lab2 in the VM: the lab's Makefile and Kbuild with its solution or skeleton sources, built
    without a compiler warning."""
    for name in ("sender.c", "receiver.c", "wiretrace.c", "Makefile", "Kbuild"):
        src = LAB / (sources if name.endswith(".c") else "") / name
        admin_ssh(f"mkdir -p ~/lab2 && cat > ~/lab2/{name} <<'COPYLAB_EOF'\n{src.read_text()}\nCOPYLAB_EOF")
    r = admin_ssh("cd ~/lab2 && make 2>&1", timeout=900)
    assert "warning" not in r.stdout, r.stdout


def records(dmesg: str) -> dict[str, list[dict[str, int]]]:
    out: dict[str, list[dict[str, int]]] = {}
    for kind, fields in re.findall(r"wiretrace: \[(\w+)\] (.*)", dmesg):
        out.setdefault(kind, []).append({k: int(v, 16) if k != "len" else int(v)
                                         for k, v in re.findall(r"(\w+)=(\S+)", fields)})
    return out


def qemu_trace(lab_vm, since: int) -> str:
    """QEMU's trace lines (log backend: its stderr) written after byte offset `since`."""
    err = lab_vm.workdir / f"{lab_vm.vm.name}.qemu.err"
    deadline = time.monotonic() + 10
    while True:  # QEMU writes the lines from its own threads: give them a moment
        text = err.read_bytes()[since:].decode(errors="replace")
        if "e1000e_rx_desc_buff_write" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_solution_traces_one_datagram_through_both_cards(lab_vm, admin_ssh):
    lab_vm.acquire()
    try:
        build(admin_ssh, "solution")
        admin_ssh(f"sudo sh -c {shlex.quote(NET_UP)}")
        admin_ssh(f"sudo sh -c {shlex.quote(NET_UP)}")  # idempotent
        for event in ("e1000e_tx_descr", "e1000e_rx_desc_buff_write"):
            lab_vm.vm.monitor(f"trace-event {event} on")
        err = lab_vm.workdir / f"{lab_vm.vm.name}.qemu.err"

        for copybreak in (256, 0):
            admin_ssh(f"echo {copybreak} | sudo tee /sys/module/e1000e/parameters/copybreak")
            since = err.stat().st_size
            message = "HELLO_SEND_TRACE"
            r = admin_ssh(RUN.format(port=PORT, n=len(message), message=message), timeout=180)
            out, rec = r.stdout, records(r.stdout)
            context = f"copybreak={copybreak}\n{out[-3000:]}"
            assert f'receiver: received 16 bytes "{message}"' in out, context
            assert re.search(r"wiretrace: probes removed: \d+ frames sent and \d+ received", out)
            want = {"COPY1", "TX", "RX", "COPY4"} | ({"COPYBREAK"} if copybreak else set())
            assert set(rec) == want and all(len(v) == 1 for v in rec.values()), context
            c1, tx, rx, c4 = rec["COPY1"][0], rec["TX"][0], rec["RX"][0], rec["COPY4"][0]
            sbuf = int(re.search(r"sender: buffer at 0x([0-9a-f]+)", out).group(1), 16)
            rbuf = int(re.search(r"receiver: buffer at 0x([0-9a-f]+)", out).group(1), 16)

            # the sender's skb is the frame the driver hands to the first card
            assert c1["src"] == sbuf and c1["len"] == 16, context
            assert tx["data"] + HEADERS == c1["dest"] and tx["len"] == HEADERS + 16, context
            # the second card's buffer: a 60-byte frame (padded to Ethernet's minimum)
            assert rx["len"] == 60, context
            for r_ in (tx, rx):  # a physical address keeps the offset in its page
                assert r_["pa"] and r_["pa"] % 4096 == r_["data"] % 4096, context
            if copybreak:
                cb = rec["COPYBREAK"][0]
                assert cb["src"] == rx["data"] and cb["len"] == rx["len"], context
                assert cb["dest"] != rx["data"] and cb["dest"] + HEADERS == c4["src"], context
            else:
                assert rx["data"] + HEADERS == c4["src"], context
            assert c4["dest"] == rbuf and c4["len"] == 16, context

            # the hypervisor's view: where the emulated cards read and wrote the frame
            trace = qemu_trace(lab_vm, since)
            assert re.search(rf"e1000e_tx_descr 0x{tx['pa']:x} : [0-9a-f]*003a\b", trace), trace[-2000:]
            assert re.search(rf"e1000e_rx_desc_buff_write buffer #0, addr: 0x{rx['pa']:x}, "
                             r"offset: 0, from: \S+, length: 60", trace), trace[-2000:]
    finally:
        lab_vm.release(dirty=True)


def test_skeleton_builds_without_warnings_loads_and_records_nothing(lab_vm, admin_ssh):
    """The unchanged skeleton (milestone 0 not done either) compiles cleanly, registers its five probes
    and logs no record: every record is the student's to write."""
    lab_vm.acquire()
    try:
        build(admin_ssh, "skeleton")
        r = admin_ssh("sudo dmesg -C && sudo insmod ~/lab2/wiretrace.ko port=9999 && sudo rmmod wiretrace "
                      "&& sudo dmesg")
        assert ("wiretrace: probes on _copy_from_iter e1000_xmit_frame dma_unmap_page_attrs eth_type_trans "
                "_copy_to_iter registered") in r.stdout, r.stdout
        assert "wiretrace: probes removed:" in r.stdout and "wiretrace: [" not in r.stdout, r.stdout
    finally:
        lab_vm.release(dirty=True)
