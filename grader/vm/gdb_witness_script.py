"""Runs inside gdb (``gdb -batch -nx -x gdb_witness_script.py``), driven by grader/vm/gdbwitness.py.

Attaches to a lab VM's gdbstub, puts a breakpoint on each witness point (the running kernel's
addresses, read before any student code ran), and on every stop reads the argument registers and the
guest memory they point to, prints one ``WITNESS`` line and lets the guest continue at once. The
window ends when the grader writes to (or closes) the control pipe, or at the deadline: then the
guest is interrupted, gdb detaches (the guest keeps running) and exits.

Configuration: a JSON file named by $COPYLAB_WITNESS_CONFIG (see gdbwitness.script_config). Output
lines (numbers in hex, bytes as hex, "-" for what could not be read):

    WITNESS attached
    WITNESS armed copy1=0x.. rxmsg=0x.. copy4=0x..
    WITNESS copy1 src=0x.. dest=0x.. len=16 bytes=..                  (bytes: at the user source)
    WITNESS copy4 src=0x.. dest=0x.. len=16 bytes=.. dest_bytes=..    (bytes: at the kernel source)
    WITNESS other copy1|copy4 len=N                                   (other lengths, bounded)
    WITNESS end reason=stopped|deadline|lost|unattached stops=N other=N [detail=...]
"""
import json
import os
import select
import struct
import threading

import gdb  # noqa: F401 - provided by gdb's embedded Python

CFG = json.load(open(os.environ["COPYLAB_WITNESS_CONFIG"]))
MASK = (1 << 64) - 1
STATE = {"stops": 0, "other": 0, "receives": {}, "ended": None}


def say(line):
    # straight to the descriptor: gdb's own stream is captured while `continue` runs (to_string)
    os.write(1, ("WITNESS " + line + "\n").encode())


def hx(v):
    return "-" if v is None else "0x%x" % v


def reg(name):
    return int(gdb.selected_frame().read_register(name).cast(gdb.lookup_type("unsigned long"))) & MASK


def mem(addr, n):
    if addr is None or n <= 0:
        return None
    try:
        return bytes(gdb.selected_inferior().read_memory(addr, n))
    except (gdb.MemoryError, gdb.error, OverflowError):
        return None


def u64(addr):
    b = mem(addr, 8)
    return None if b is None else struct.unpack("<Q", b)[0]


def user_address(msghdr):
    """iov_base + iov_offset of msghdr->msg_iter (ITER_IOVEC on 6.1)."""
    off = CFG["offsets"]
    iov = u64(msghdr + off["msghdr_iov"])
    base = None if iov is None else u64(iov)
    offset = u64(msghdr + off["msghdr_iov_offset"])
    return None if base is None or offset is None else (base + offset) & MASK


def other(point, length):
    STATE["other"] += 1
    if STATE["other"] <= CFG["max_other"]:
        say("other %s len=%d" % (point, length))


def stack_key():
    # one kernel stack per task (THREAD_SIZE 16 KiB, aligned): the receive's two stops share it even
    # when the receiver moved to another vCPU while it slept
    return reg(CFG["stack_register"]) >> 14


def on_copy1(p):
    length = reg(p["len"]) & 0xFFFFFFFF
    if length != CFG["length"]:
        return other("copy1", length)
    src = user_address(reg(p["msghdr"]))
    say("copy1 src=%s dest=%s len=%d bytes=%s" % (hx(src), hx(reg(p["dest"])), length,
                                                  (mem(src, length) or b"").hex() or "-"))


def on_rxmsg(p):
    receives = STATE["receives"]
    if len(receives) > 64:
        receives.clear()
    receives[stack_key()] = user_address(reg(p["msghdr"]))


def on_copy4(p):
    length = reg(p["len"]) & 0xFFFFFFFF
    if length != CFG["length"]:
        return other("copy4", length)
    data = u64(reg(p["skb"]) + CFG["offsets"]["skb_data"])
    dest = STATE["receives"].get(stack_key())
    say("copy4 src=%s dest=%s len=%d bytes=%s dest_bytes=%s" % (
        hx(data), hx(dest), length, (mem(data, length) or b"").hex() or "-",
        (mem(dest, length) or b"").hex() or "-"))


HANDLERS = {"copy1": on_copy1, "rxmsg": on_rxmsg, "copy4": on_copy4}


class Witness(gdb.Breakpoint):
    def __init__(self, point, address):
        kind = gdb.BP_HARDWARE_BREAKPOINT if CFG["hardware"] else gdb.BP_BREAKPOINT
        super().__init__("*0x%x" % address, type=kind, internal=True)
        self.point = point

    def stop(self):
        STATE["stops"] += 1
        if STATE["stops"] > CFG["max_stops"]:
            self.enabled = False      # a flood of calls must not stall the guest
            return False
        try:
            HANDLERS[self.point](CFG["points"][self.point])
        except Exception as e:  # noqa: BLE001 - reported, the guest continues
            say("error %s %s" % (self.point, str(e).replace("\n", " ")[:200]))
        return False


def watch_control():
    """Wait for the grader's word (or its pipe's end) or the deadline, then interrupt the guest."""
    ready, _, _ = select.select([CFG["control_fd"]], [], [], CFG["max_seconds"])
    STATE["ended"] = "stopped" if ready else "deadline"
    gdb.post_event(lambda: gdb.execute("interrupt"))


def main():
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    gdb.execute("set architecture " + CFG["gdb_arch"])
    gdb.execute("set remotetimeout %d" % CFG["remote_timeout"])
    try:
        gdb.execute("target remote 127.0.0.1:%d" % CFG["port"], to_string=True)
    except gdb.error as e:
        say("end reason=unattached stops=0 other=0 detail=%s" % str(e).replace("\n", " ")[:200])
        return
    say("attached")
    for point, address in CFG["addresses"].items():
        Witness(point, address)
    say("armed " + " ".join("%s=0x%x" % kv for kv in CFG["addresses"].items()))
    threading.Thread(target=watch_control, daemon=True).start()
    reason, detail = None, ""
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error as e:    # QEMU ended (kernel panic with -no-reboot, killed) or the link broke
        reason, detail = "lost", str(e)
    if reason is None and gdb.selected_inferior().pid == 0:
        reason, detail = "lost", "QEMU ended (the guest powered off or panicked)"
    if reason is None:
        try:
            gdb.execute("detach", to_string=True)
        except gdb.error as e:
            reason, detail = "lost", str(e)
    say("end reason=%s stops=%d other=%d%s" % (
        reason or STATE["ended"] or "stopped", STATE["stops"], STATE["other"],
        " detail=" + detail.replace("\n", " ")[:200] if detail else ""))


main()
