"""Check kinds that rest on the hypervisor's witness (host evidence source "gdbstub",
grader/vm/gdbwitness.py): QEMU's gdbstub read copy #1 and copy #4 from outside the guest, where a
student's module cannot reach. When the witness did not watch this run (``make check`` in the
student's VM, an inventory host, a grader without gdb), each check judges by the guest's own trace
instead and its first evidence line says so. Every line names where its numbers came from.

Registered in the check registry on import (grader/engine/checkrun.py imports this module).
"""

from __future__ import annotations

from .checks import Evidence, bad, check_kind, check_agrees_with_trace, good, hx, info, missing
from .hostevidence import HostEvidence, Observation
from .model import RunData

SOURCE = "gdbstub"
WITNESS = "the hypervisor (QEMU's gdbstub, read from the grader host)"
TRACE = "the guest's own trace (tracefs, inside the kernel the module runs in)"


def witness(run: RunData) -> HostEvidence | None:
    """The witness's evidence when it watched this run, else None."""
    e = run.host_evidence.get(SOURCE)
    return e if e is not None and e.ok else None


def fallback_note(run: RunData) -> Evidence:
    e = run.host_evidence.get(SOURCE)
    why = "the lab did not ask for it" if e is None else f"{e.status}: {e.detail or 'no reason given'}"
    return info(f"no hypervisor witness for this run ({why}); judged by {TRACE}")


def seen(w: HostEvidence, kind: str, message: bytes) -> tuple[Observation | None, list[Observation]]:
    """The witness's observation of this run's datagram (the one whose bytes are the message, else the
    only one of the message's length), and all of them."""
    obs = w.of(kind)
    mine = [o for o in obs if o.values.get("bytes") == message]
    if mine:
        return mine[0], obs
    return (obs[0] if len(obs) == 1 else None), obs


def _single(run: RunData, kind: str):
    recs = run.module_records(kind)
    return recs[0] if len(recs) == 1 else None


@check_kind("agrees_with_witness")
def check_agrees_with_witness(run: RunData, opts: dict):
    """The student's [COPY1] and [COPY4] (user and kernel addresses, length) against what the
    hypervisor read at ip_generic_getfrag, udp_recvmsg and skb_consume_udp."""
    w = witness(run)
    if w is None:
        ok, evid = check_agrees_with_trace(run, opts)
        return ok, [fallback_note(run)] + evid
    message = run.message.encode()
    evid: list[Evidence] = []
    ok = True
    wrong: list[str] = []
    for kind, point in (("COPY1", "copy1"), ("COPY4", "copy4")):
        rec = _single(run, kind)
        obs, every = seen(w, point, message)
        if obs is None:
            ok = False
            evid.append(missing(f"{WITNESS} saw {len(every)} {point} stops of {run.payload_len} bytes; "
                                f"expected this run's one"))
            continue
        if rec is None:
            ok = False
            evid.append(missing(f"need exactly one [{kind}] record to compare with {WITNESS}"))
            continue
        for field in ("src", "dest", "len"):
            mine, theirs = getattr(rec, field), obs.num(field)
            fmt = str if field == "len" else hx
            label = f"{kind} {field}: module {fmt(mine)}, hypervisor {fmt(theirs)}"
            if mine is not None and mine == theirs:
                evid.append(good(label.replace(", hypervisor", " == hypervisor")))
            else:
                ok = False
                wrong.append(f"{kind} {field}")
                evid.append(bad(label) if mine is not None and theirs is not None else missing(label))
    if wrong:
        evid.insert(0, bad(f"disagrees with {WITNESS} on: {', '.join(wrong)}; the guest's trace and "
                           f"log cannot overrule it"))
    else:
        evid.insert(0, info(f"numbers from {WITNESS}, outside the guest"))
    return ok, evid


@check_kind("message_witnessed")
def check_message_witnessed(run: RunData, opts: dict):
    """This run's random message was really at the kernel address the records name: read there by the
    hypervisor (skb->data at skb_consume_udp, the address copy #1 wrote), and at both user buffers."""
    message = run.message.encode()
    c1, c4 = _single(run, "COPY1"), _single(run, "COPY4")
    w = witness(run)
    if w is None:
        return _message_in_trace(run, c4, message)
    evid: list[Evidence] = [info(f"bytes read by {WITNESS} from guest memory")]
    ok = True
    o1, _ = seen(w, "copy1", message)
    o4, _ = seen(w, "copy4", message)
    for obs, label, key, addr_key in ((o1, "the sender's buffer (copy #1's source)", "bytes", "src"),
                                      (o4, "the skb (copy #4's source)", "bytes", "src"),
                                      (o4, "the receiver's buffer (copy #4's destination)", "dest_bytes", "dest")):
        got = obs.values.get(key) if obs is not None else None
        where = hx(obs.num(addr_key)) if obs is not None else "?"
        if got == message:
            evid.append(good(f'"{run.message}" at {label} {where}'))
        else:
            ok = False
            shown = "nothing readable" if got is None else repr(got)
            evid.append(bad(f"{label} {where} held {shown}, not this run's message {run.message!r}"))
    if o1 is not None and o4 is not None:
        if o1.num("dest") == o4.num("src"):
            evid.append(good(f"copy #1 wrote the skb at {hx(o1.num('dest'))} that copy #4 read"))
        else:
            ok = False
            evid.append(bad(f"copy #1 wrote {hx(o1.num('dest'))} but copy #4 read {hx(o4.num('src'))}"))
    kaddr = c4.src if c4 is not None else (c1.dest if c1 is not None else None)
    if o4 is None or kaddr is None:
        ok = False
        evid.append(missing("no [COPY4] src (or [COPY1] dest) and hypervisor reading to compare"))
    elif kaddr == o4.num("src"):
        evid.append(good(f"the records' kernel address {hx(kaddr)} is where the hypervisor read the message"))
    else:
        ok = False
        evid.append(bad(f"the records name kernel address {hx(kaddr)}; the hypervisor read the message at "
                        f"{hx(o4.num('src'))}"))
    return ok, evid


def _message_in_trace(run: RunData, c4, message: bytes):
    evid = [fallback_note(run)]
    rx = run.rx_event() if run.trace_text is not None else None
    if rx is None:
        return False, evid + [missing(f"{TRACE} has no skb_consume_udp event of {run.payload_len} bytes")]
    payload = rx.payload()
    ok = payload == message
    evid.append(good(f'"{run.message}" at skb->data {hx(rx.num("data"))}, per {TRACE}') if ok else
                bad(f"{TRACE} read {payload!r} at skb->data {hx(rx.num('data'))}, not {run.message!r}"))
    if c4 is None or c4.src != rx.num("data"):
        ok = False
        evid.append(bad(f"the records' kernel address {hx(c4.src if c4 else None)} is not that skb->data"))
    return ok, evid
