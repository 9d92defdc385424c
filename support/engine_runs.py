"""Realistic run data for engine tests (numbers from the measured run in lab-vm-facts.md)."""

from grader.engine.model import PhaseRecord, RunData
from grader.engine.phases import PHASE_NAMES
from grader.engine.profile import load_profile

MSG = "HELLO_SEND_TRACE"
PORT = 40123
SBUF = 0x559C785BA060
RBUF = 0x55ED07068070
KADDR = 0xFF49648BC2A4DA2C
START_SEQ = 1000


def words(msg: str) -> tuple[str, str]:
    b = msg.encode().ljust(16, b"\0")
    return (f"0x{int.from_bytes(b[:8], 'little'):x}", f"0x{int.from_bytes(b[8:16], 'little'):x}")


def kmsg_text(copy1=None, copy4=None, extra=()):
    c1 = copy1 if copy1 is not None else \
        f"copytrace: [COPY1] src={SBUF:016x} dest={KADDR:016x} len=16"
    c4 = copy4 if copy4 is not None else \
        f"copytrace: [COPY4] src={KADDR:016x} dest={RBUF:016x} len=16"
    lines = [
        f"6,{START_SEQ - 1},5000000,-;copytrace: [COPY1] src=0000559c785ba000 dest={KADDR:016x} len=16",  # old run
        f"6,{START_SEQ + 1},5100000,-;copytrace: probes on _copy_from_iter and _copy_to_iter registered (send_comm=sender recv_comm=receiver msg_len=16)",
        " SUBSYSTEM=module",
        " DEVICE=+module:copytrace",
        f"14,{START_SEQ + 2},5100100,-;copytrace: [COPY1] src=0000000000000bad dest=ffff000000000000 len=16 (user facility: ignored)",
    ]
    seq = START_SEQ + 3
    for t in ([c1] if c1 else []) + ([c4] if c4 else []) + list(extra):
        lines.append(f"6,{seq},5200000,-;{t}")
        seq += 1
    return "\n".join(lines) + "\n"


def trace_text(msg=MSG, to=KADDR, data=KADDR, s_ubase=SBUF, r_ubase=RBUF, with_tx=True,
               with_csum=False):
    w0, w1 = words(msg)
    lines = ["# tracer: nop", "#", "#                                _-----=> irqs-off/BH-disabled",
             "#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION"]
    if with_tx:
        lines.append(f"          sender-1234    [001] d..1.   123.456789: copylab_tx: "
                     f"(ip_generic_getfrag+0x0/0x140) to=0x{to:x} len=16 ubase=0x{s_ubase:x} "
                     f"uoff=0x0 comm=\"sender\"")
    if with_csum:
        lines.append(f"          sender-1234    [001] d..1.   123.456790: copylab_tx_csum: "
                     f"(csum_and_copy_from_user+0x0/0x80) src=0x{s_ubase:x} dst=0x{to:x} len=16 "
                     f"comm=\"sender\"")
    lines.append(f"        receiver-1230    [000] .....   123.450001: copylab_rxmsg: "
                 f"(udp_recvmsg+0x0/0x5a0) ubase=0x{r_ubase:x} uoff=0x0 comm=\"receiver\"")
    lines.append(f"        receiver-1230    [000] ..s1.   123.457001: copylab_rx: "
                 f"(skb_consume_udp+0x0/0x90) data=0x{data:x} len=16 w0={w0} w1={w1} "
                 f"comm=\"receiver\"")
    lines.append("            bash-99      [001] d..1.   124.0: copylab_tx: "
                 "(ip_generic_getfrag+0x0/0x140) to=0xffff888000001000 len=52 ubase=0x1 uoff=0x0 comm=\"bash\"")
    return "\n".join(lines) + "\n"


def sender_out(msg=MSG, buf=SBUF, port=PORT):
    return f'sender: buffer at 0x{buf:x}\nsender: sent {len(msg)} bytes "{msg}" to 127.0.0.1:{port}\n'


def receiver_out(msg=MSG, buf=RBUF, port=PORT, n=None):
    n = len(msg) if n is None else n
    return (f"receiver: listening on 127.0.0.1:{port}\nreceiver: buffer at 0x{buf:x}\n"
            f'receiver: received {n} bytes "{msg[:n]}"\n')


def good_run(**over) -> RunData:
    run = RunData(lab_id="lab1", runid="t1", message=MSG, port=PORT,
                  profile=load_profile("6.1.0-50-amd64"))
    for name in PHASE_NAMES:
        run.phases[name] = PhaseRecord(name, "ok", 0.1)
    run.build_exit = 0
    run.build_log = "cc -o sender sender.c\n"
    run.load_exit = 0
    run.unload_exit = 0
    run.sender_out, run.sender_exit = sender_out(), 0
    run.receiver_out, run.receiver_exit = receiver_out(), 0
    run.kmsg_start_seq = START_SEQ
    run.kmsg_text = kmsg_text()
    run.trace_text = trace_text()
    run.taint_before = 0
    run.taint_after = 4096 | 8192
    run.environment.update(kernel_release=run.profile.release, arch=run.profile.arch)  # as verify records them
    for k, v in over.items():
        setattr(run, k, v)
    return run
