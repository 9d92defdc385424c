"""Check kinds (a registry) and the check model. A check kind is a function
``fn(run: RunData, options: dict) -> (passed: bool, evidence: list[Evidence])``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import evidence as ev
from .model import FRAME_HEADERS, RunData

MARKS = ("good", "bad", "missing", "info")


@dataclass
class Evidence:
    mark: str
    text: str

    def __post_init__(self):
        if self.mark not in MARKS:
            raise ValueError(f"bad evidence mark {self.mark!r}")

    def as_dict(self) -> dict:
        return {"mark": self.mark, "text": self.text}


def good(t): return Evidence("good", t)
def bad(t): return Evidence("bad", t)
def missing(t): return Evidence("missing", t)
def info(t): return Evidence("info", t)


@dataclass
class CheckResult:
    name: str
    kind: str
    passed: bool
    points: int
    max_points: int
    evidence: list[Evidence] = field(default_factory=list)
    hint: str = ""                      # shown on failure only
    title: str = ""
    skipped_because: str | None = None  # name of the failed dependency
    part: str = "lab"                   # labspec.PARTS

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "kind": self.kind, "passed": self.passed,
                "points": self.points, "max_points": self.max_points,
                "evidence": [e.as_dict() for e in self.evidence],
                "hint": "" if self.passed else self.hint, "skipped_because": self.skipped_because,
                "part": self.part}


CheckFn = Callable[[RunData, dict], "tuple[bool, list[Evidence]]"]
REGISTRY: dict[str, CheckFn] = {}


def check_kind(name: str):
    def deco(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = fn
        return fn
    return deco


def hx(v: int | None) -> str:
    return "?" if v is None else f"0x{v:x}"


def _tail(text: str, n: int = 12) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


def _phase_not_run(run: RunData, phase: str) -> Evidence | None:
    st = run.phase_status(phase)
    if st == "skipped":
        d = run.phases[phase].detail if phase in run.phases else ""
        return missing(f"the {phase} phase did not run" + (f" ({d})" if d else ""))
    return None


# ---------------------------------------------------------------- build / load / unload
@check_kind("build_ok")
def check_build_ok(run: RunData, opts: dict):
    if e := _phase_not_run(run, "build"):
        return False, [e]
    ph = run.phases["build"]
    if ph.status == "timeout":
        return False, [bad(f"the build did not finish in time ({ph.detail})")] + \
            [info(ln) for ln in _tail(run.build_log)]
    if run.build_exit != 0:
        errs = [ln for ln in run.build_log.splitlines() if "error" in ln.lower()][:10]
        return False, [bad(f"make exited with status {run.build_exit}")] + \
            [bad(ln) for ln in errs] + [info(ln) for ln in _tail(run.build_log, 6) if ln not in errs]
    if run.build_outputs_missing:
        return False, [bad(f"make succeeded but did not produce {', '.join(run.build_outputs_missing)}")]
    warns = [ln for ln in run.build_log.splitlines() if "warning:" in ln][:5]
    return True, [good("make exited 0 and built every program and the module")] + \
        [info(ln) for ln in warns]


@check_kind("module_loads")
def check_module_loads(run: RunData, opts: dict):
    if e := _phase_not_run(run, "load"):
        return False, [e]
    ph = run.phases["load"]
    out = [ln for ln in run.load_output.splitlines() if ln.strip()]
    fails = [r.text for r in run.kmsg if "register_kprobe(" in r.text and "failed" in r.text]
    if ph.status == "ok" and run.load_exit == 0:
        regs = [r.text for r in run.kmsg if "copytrace:" in r.text and "registered" in r.text]
        return True, [good(f"insmod succeeded (payload={run.message})")] + [good(t) for t in regs[:2]]
    evid = [bad(f"loading the module failed ({ph.status}"
                + (f", exit {run.load_exit}" if run.load_exit is not None else "") + ")")]
    evid += [bad(ln) for ln in out[:8]] + [bad(t) for t in fails]
    return False, evid


@check_kind("module_unloads")
def check_module_unloads(run: RunData, opts: dict):
    if e := _phase_not_run(run, "unload"):
        return False, [e]
    if run.phases["unload"].status == "ok" and run.unload_exit == 0:
        return True, [good("rmmod succeeded")]
    return False, [bad(f"unloading the module failed ({run.phases['unload'].status}): "
                       f"{run.unload_output.strip() or run.phases['unload'].detail}")]


# ---------------------------------------------------------------- the programs
@check_kind("programs_report")
def check_programs_report(run: RunData, opts: dict):
    if e := _phase_not_run(run, "run"):
        return False, [e]
    s, r, msg = run.sender, run.receiver, run.message
    n = run.payload_len
    evid: list[Evidence] = []
    ok = True

    def need(cond, good_text, bad_text, mark="bad"):
        nonlocal ok
        evid.append(good(good_text) if cond else Evidence(mark, bad_text))
        ok = ok and bool(cond)

    at = f"{run.receiver_addr}:{run.port}"
    need(r.listening_port == run.port and r.listening_addr == run.receiver_addr, f"receiver: listening on {at}",
         f'no "receiver: listening on {at}" line', "missing")
    need(r.buffer, f"receiver: buffer at {hx(r.buffer)}",
         'no "receiver: buffer at 0x..." line (print the buffer address with %p)', "missing")
    need(s.buffer, f"sender: buffer at {hx(s.buffer)}",
         'no "sender: buffer at 0x..." line (print the buffer address with %p)', "missing")
    if s.sent_len is None:
        need(False, "", f'no "sender: sent {n} bytes ..." line', "missing")
    else:
        need(s.sent_len == n and s.sent_text == msg and s.port == run.port and s.addr == run.receiver_addr,
             f'sender: sent {s.sent_len} bytes "{s.sent_text}" to {s.addr}:{s.port}',
             f'sender reported {s.sent_len} bytes "{s.sent_text}" to {s.addr}:{s.port}; '
             f'expected {n} bytes "{msg}" to {at}')
    if r.received_len is None:
        why = " (the receiver timed out waiting)" if run.receiver_timed_out else ""
        need(False, "", f'no "receiver: received N bytes ..." line{why}', "missing")
    elif r.received_len == n and r.received_text == msg:
        need(True, f'receiver: received {n} bytes "{msg}": the payload arrived intact', "")
    elif 0 <= r.received_len < n and msg.startswith(r.received_text or "") \
            and (r.received_text or "") != msg:
        need(False, "", f"truncated: the receiver got {r.received_len} of the {n} bytes sent "
                        f'("{r.received_text}"); its buffer or recv() length is too small')
    else:
        need(False, "", f'receiver got {r.received_len} bytes "{r.received_text}", '
                        f'expected {n} bytes "{msg}"')
    # each program's own end: a sender that never exits is the sender's problem, even when the
    # receiver got the message and finished
    if run.sender_timed_out:
        sent = " after it sent the message" if s.sent_len is not None else ""
        need(False, "", f"the sender did not exit{sent}: it was still running at the end of "
                        f"the run's time limit and was killed")
    elif run.sender_exit not in (0, None):
        need(False, "", f"the sender exited with status {run.sender_exit}")
    if run.receiver_timed_out and s.sent_len is None and not run.sender_timed_out:
        evid.append(info("the sender reported no send, so the receiver had nothing to receive"))
    elif not run.receiver_timed_out and run.receiver_exit == 0 and run.sender_timed_out:
        evid.append(info("the receiver finished by itself (exit 0)"))
    if run.receiver_exit not in (0, None):
        need(False, "", f"the receiver exited with status {run.receiver_exit}")
    elif run.receiver_exit is None and not run.receiver_timed_out and run.phase_status("run") == "failed":
        need(False, "", f"the receiver's exit status is unknown: {run.phases['run'].detail}")
    return ok, evid


# ---------------------------------------------------------------- the module's records
def _one(run: RunData, kind: str, evid: list[Evidence], recs=None,
         filter_hint: str = "filter on process name and length"):
    recs = run.module_records(kind) if recs is None else recs
    if len(recs) == 1:
        return recs[0]
    if not recs:
        evid.append(missing(f"no [{kind}] record in the kernel log for this run"))
    else:
        evid.append(bad(f"{len(recs)} [{kind}] records for this run; expected exactly one "
                        f"({filter_hint})"))
        evid += [bad(r.text) for r in recs[:6]]
    return None


def _explain_missing_copy1(run: RunData, evid: list[Evidence]) -> None:
    tx = run.tx_event()
    prof = run.profile
    sym = prof.copy_from if prof else "_copy_from_iter"
    csum = prof.symbols.get("send_caller_csum", "csum_and_copy_from_iter_full") if prof \
        else "csum_and_copy_from_iter_full"
    if run.trace_text is None:
        return
    csum_copies = [e for e in run.trace_events("copylab_tx_csum", run.send_comm)
                   if e.num("len") == run.payload_len]
    if csum_copies:
        e = csum_copies[0]
        copier = prof.symbols.get("send_csum_copy", "csum_and_copy_from_user") if prof \
            else "csum_and_copy_from_user"
        evid.append(info(
            f"the independent trace saw copy #1 done by {copier}: {e.num('len')} bytes from user "
            f"{hx(e.num('src'))} to kernel {hx(e.num('dst'))}; that is the checksumming path {csum} "
            f"(taken with MSG_MORE or UDP_CORK), which does not call {sym}"))
    elif tx is not None:
        evid.append(info(
            f"the independent trace saw the send: {tx.location.split('+')[0] or 'ip_generic_getfrag'} "
            f"copied {tx.num('len')} bytes from {hx(tx.user_addr)} to {hx(tx.num('to'))}, "
            f"but there was no {sym} record: check the probe's filter (process name, length)"))
    elif run.trace_events("copylab_tx"):
        evid.append(info(f"the trace saw ip_generic_getfrag calls but none from "
                         f"{run.send_comm!r} with len={run.payload_len}"))
    else:
        evid.append(info("the independent trace saw no ip_generic_getfrag call either: "
                         "did the sender send at all?"))


# ---------------------------------------------------------------- naming the mistake
# The symptom lines say what is wrong with a record; these say which common mistake produces
# exactly that evidence, and only when the evidence fits it.
def _looks_hashed(addr: int | None) -> bool:
    """%p prints a 32-bit hash of the pointer, zero-extended to 16 digits on 64-bit kernels."""
    return addr is not None and 0 < addr <= 0xFFFFFFFF


def name_mistakes(run: RunData, rec: ev.CopyRecord) -> list[Evidence]:
    """The mistakes the record's numbers fit: src and dest swapped, %p instead of %px, numbers
    copied from the handout's or the narrative's examples."""
    out: list[Evidence] = []
    prof = run.profile
    user_buf, user_name = ((run.sender.buffer, "the sender's buffer") if rec.kind == "COPY1"
                           else (run.receiver.buffer, "the receiver's buffer"))
    event, field = (run.tx_event(), "to") if rec.kind == "COPY1" else (run.rx_event(), "data")
    kernel_seen = event.num(field) if event is not None else None
    user_side, kernel_side = ("src", "dest") if rec.kind == "COPY1" else ("dest", "src")
    direction = ("from the sender's buffer (user) into the skb (kernel)" if rec.kind == "COPY1"
                 else "from the skb (kernel) into the receiver's buffer (user)")
    u, k = rec.user_addr, rec.kernel_addr
    if u is not None and k is not None:
        k_is_user = (user_buf is not None and k == user_buf) or \
            (prof is not None and k and prof.is_user_address(k) and not _looks_hashed(k))
        u_is_kernel = (kernel_seen is not None and u == kernel_seen) or \
            (prof is not None and prof.is_kernel_address(u))
        if k_is_user and u_is_kernel:
            out.append(bad(f"mistake: {kernel_side} and {user_side} are swapped in [{rec.kind}]: "
                           f"{user_side}={hx(u)} is the kernel side and {kernel_side}={hx(k)} "
                           f"{'is ' + user_name if k == user_buf else 'a user address'}; "
                           f"copy #{rec.kind[-1]} copies {direction}"))
    hashed = [f"{name}={hx(a)}" for name, a in (("src", rec.src), ("dest", rec.dest))
              if _looks_hashed(a)]
    if hashed:
        out.append(bad(f"mistake: {', '.join(hashed)} {'look' if len(hashed) > 1 else 'looks'} "
                       f"like what %p prints, a 32-bit hash of the pointer zero-extended to 64 "
                       f"bits, not the address: print addresses with %px"))
    copied = [f"{name}={hx(a)}" for name, a in (("src", rec.src), ("dest", rec.dest))
              if a is not None and a in run.example_addresses]
    if copied:
        out.append(bad(f"mistake: {', '.join(copied)} "
                       f"{'are example addresses' if len(copied) > 1 else 'is an example address'}"
                       f" from the handout or the course narrative, not from this run: print the "
                       f"copy function's own arguments"))
    return out


@check_kind("copy_kernel_side")
def check_copy_kernel_side(run: RunData, opts: dict):
    """options: copy = "COPY1" | "COPY4"; same_skb (default true): COPY4's src must be COPY1's dest,
    as on loopback (lab 2's datagram crosses two cards: false). Exactly one record, len = payload
    length, a kernel address on the kernel side that the independent trace confirms. The
    first-milestone forms pass."""
    kind = opts.get("copy", "COPY1")
    evid: list[Evidence] = []
    rec = _one(run, kind, evid)
    if rec is None:
        if kind == "COPY1" and not run.module_records("COPY1"):
            _explain_missing_copy1(run, evid)
        return False, evid
    ok = True
    evid.append(info(rec.text))
    prof = run.profile
    kaddr = rec.kernel_addr
    side = "dest" if kind == "COPY1" else "src"
    is_k = prof.is_kernel_address(kaddr) if prof else (kaddr or 0) >= 0xff00000000000000
    if is_k:
        evid.append(good(f"{side}={hx(kaddr)} is a kernel address"))
    else:
        ok = False
        evid.append(bad(f"{side}={hx(kaddr)} is not a kernel address"))
    if rec.len == run.payload_len:
        evid.append(good(f"len={rec.len} is the payload length"))
    else:
        ok = False
        evid.append(bad(f"len={rec.len}, but the payload is {run.payload_len} bytes"))
    # a well-formed record is not evidence by itself: the kernel address must be the one the
    # grader's own trace saw (ip_generic_getfrag's `to` / skb->data in skb_consume_udp)
    event, field = (run.tx_event(), "to") if kind == "COPY1" else (run.rx_event(), "data")
    where = "ip_generic_getfrag to" if kind == "COPY1" else "skb_consume_udp skb->data"
    if run.trace_text is None or event is None:
        ok = False
        evid.append(missing(f"the independent trace has no {where} for this run to confirm "
                            f"{side}={hx(kaddr)}"))
    elif event.num(field) == kaddr:
        evid.append(good(f"{side}={hx(kaddr)} is what the independent trace saw ({where})"))
    else:
        ok = False
        evid.append(bad(f"{side}={hx(kaddr)}, but the independent trace saw {where}="
                        f"{hx(event.num(field))}: the record does not describe this run's copy"))
    if kind == "COPY4" and opts.get("same_skb", True):
        c1 = run.module_records("COPY1")
        if len(c1) != 1 or c1[0].dest is None:
            ok = False
            evid.append(missing("no single [COPY1] dest to compare src with"))
        elif c1[0].dest == rec.src:
            evid.append(good(f"src={hx(rec.src)} equals COPY1's dest: the same skb on loopback"))
        else:
            ok = False
            evid.append(bad(f"src={hx(rec.src)} differs from COPY1's dest={hx(c1[0].dest)} "
                            f"(on loopback both are the same skb)"))
    if rec.milestone_form:
        evid.append(info(f"first-milestone form: the user-side address is not printed yet"))
    if not ok:
        evid[1:1] = name_mistakes(run, rec)
    return ok, evid


@check_kind("copy_user_side")
def check_copy_user_side(run: RunData, opts: dict):
    """options: copy = "COPY1" | "COPY4". The whole record: the kernel side as in
    copy_kernel_side, and the user address equals the buffer the sender (COPY1 src) or the
    receiver (COPY4 dest) printed. Milestone forms fail here."""
    kind = opts.get("copy", "COPY1")
    k_ok, k_evid = check_copy_kernel_side(run, {"copy": kind})
    if not k_ok:  # the whole record is judged: kernel side first
        return False, [e for e in k_evid if e.mark != "good"]
    evid: list[Evidence] = []
    rec = _one(run, kind, evid)
    evid.append(info(rec.text))
    side, who = ("src", "sender") if kind == "COPY1" else ("dest", "receiver")
    printed = run.sender.buffer if kind == "COPY1" else run.receiver.buffer
    ua = rec.user_addr
    if ua is None:
        return False, evid + [missing(f"the record has no {side}= user address "
                                      f"(first-milestone form)")]
    prof = run.profile
    if prof and not prof.is_user_address(ua):
        return False, evid + name_mistakes(run, rec) + [
            bad(f"{side}={hx(ua)} is not a user-space address")]
    if printed is None:
        return False, evid + [missing(f"the {who} printed no buffer address to compare with")]
    if ua == printed:
        return True, evid + [good(f"{side}={hx(ua)} is the {who}'s buffer ({who}: buffer at "
                                  f"{hx(printed)})")]
    return False, evid + name_mistakes(run, rec) + [
        bad(f"{side}={hx(ua)}, but the {who}'s buffer is at {hx(printed)}")]


# Aliases named after the records (lab.toml may use either spelling).
REGISTRY["copy1_kernel_side"] = lambda run, o: check_copy_kernel_side(run, {**o, "copy": "COPY1"})
REGISTRY["copy4_kernel_side"] = lambda run, o: check_copy_kernel_side(run, {**o, "copy": "COPY4"})
REGISTRY["copy1_record"] = lambda run, o: check_copy_user_side(run, {**o, "copy": "COPY1"})
REGISTRY["copy4_record"] = lambda run, o: check_copy_user_side(run, {**o, "copy": "COPY4"})


# ---------------------------------------------------------------- independent trace
@check_kind("agrees_with_trace")
def check_agrees_with_trace(run: RunData, opts: dict):
    evid: list[Evidence] = []
    if run.trace_text is None:
        return False, [missing("the independent trace was not collected")]
    c1 = run.module_records("COPY1")
    c4 = run.module_records("COPY4")
    c1 = c1[0] if len(c1) == 1 else None
    c4 = c4[0] if len(c4) == 1 else None
    tx, rx, rxmsg = run.tx_event(), run.rx_event(), run.rxmsg_event()
    ok = True
    disagree: list[str] = []

    def cmp(label: str, mine, theirs, fmt=hx):
        nonlocal ok
        if mine is None or theirs is None:
            ok = False
            evid.append(missing(f"{label}: module {fmt(mine)}, trace {fmt(theirs)}"))
        elif mine == theirs:
            evid.append(good(f"{label}: module {fmt(mine)} == trace {fmt(theirs)}"))
        else:
            ok = False
            disagree.append(label)
            evid.append(bad(f"{label}: module {fmt(mine)} != trace {fmt(theirs)}"))

    if tx is None:
        ok = False
        evid.append(missing(f"the trace has no copylab_tx event from {run.send_comm!r} "
                            f"with len={run.payload_len}"))
    else:
        evid.append(info(tx.line.strip()))
        if c1 is not None:
            cmp("COPY1 dest vs tx to", c1.dest, tx.num("to"))
            cmp("COPY1 len vs tx len", c1.len, tx.num("len"), str)
            cmp("COPY1 src vs tx ubase+uoff", c1.src, tx.user_addr)
    if rx is None:
        ok = False
        evid.append(missing(f"the trace has no copylab_rx event from {run.recv_comm!r} "
                            f"with len={run.payload_len}"))
    else:
        evid.append(info(rx.line.strip()))
        if c4 is not None:
            cmp("COPY4 src vs rx data", c4.src, rx.num("data"))
            cmp("COPY4 len vs rx len", c4.len, rx.num("len"), str)
        payload = rx.payload()
        want = run.message.encode()
        if payload == want:
            evid.append(good(f'trace payload "{payload.decode(errors="replace")}" == sent payload'))
        else:
            ok = False
            disagree.append("payload")
            evid.append(bad(f"trace payload {payload!r} != sent payload {want!r}"))
    if rxmsg is None:
        ok = False
        evid.append(missing(f"the trace has no copylab_rxmsg event from {run.recv_comm!r}"))
    elif c4 is not None:
        cmp("COPY4 dest vs rxmsg ubase+uoff", c4.dest, rxmsg.user_addr)
    if c1 is None or c4 is None:
        ok = False
        evid.append(missing("need exactly one [COPY1] and one [COPY4] record to compare"))
    if disagree:
        evid.insert(0, bad("disagrees with the independent trace on: " + ", ".join(disagree)))
    return ok, evid


# ---------------------------------------------------------------- lab 2: the network cards
def _frame_record(run: RunData, kind: str, evid: list[Evidence]):
    """The one [TX]/[RX] record of this run's frame."""
    rec = _one(run, kind, evid, run.frame_records(kind),
               f"only the lab's {run.frame_len}-byte frame: ARP frames are not it")
    if rec is not None:
        evid.append(info(rec.text))
    return rec


def _physical_field(run: RunData, rec, evid: list[Evidence]) -> bool:
    """pa= is present and looks like a physical address, not the virtual one again."""
    if rec.pa is None:
        evid.append(missing(f"the [{rec.kind}] record has no pa= (virt_to_phys of data)"))
        return False
    if rec.pa == rec.data or (run.profile and run.profile.is_kernel_address(rec.pa)):
        evid.append(bad(f"pa={hx(rec.pa)} is a kernel virtual address"
                        + (" (the same as data=)" if rec.pa == rec.data else "")
                        + ": print virt_to_phys(data), the address the card is given"))
        return False
    return True


def _trace_agrees(run: RunData, label: str, mine: int | None, event, evid: list[Evidence]) -> bool:
    name = "copylab_nic_tx (e1000_xmit_frame)" if label.startswith("TX") else "copylab_nic_rx (e1000_receive_skb)"
    if run.trace_text is None or event is None:
        evid.append(missing(f"the independent trace has no {name} event carrying this run's message"))
        return False
    if event.num("data") == mine:
        evid.append(good(f"{label}={hx(mine)} is what the independent trace saw ({name} skb->data)"))
        return True
    evid.append(bad(f"{label}={hx(mine)}, but the independent trace saw skb->data={hx(event.num('data'))} "
                    f"in {name}"))
    return False


def _no_card_view(run: RunData) -> Evidence:
    src = run.host_evidence.get("nic-trace")
    if src is None:
        return missing("no view of the network cards from the hypervisor in this run (only the official "
                       "grader has it)")
    return missing(f"the hypervisor's view of the cards is {src.status}: {src.detail}"
                   + (" (only the official grader has it)" if src.status == "unavailable" else ""))


@check_kind("tx_record")
def check_tx_record(run: RunData, opts: dict):
    """[TX]: the skb the driver sends is the one copy #1 wrote (data + 42 = COPY1 dest), as the
    independent trace saw it at e1000_xmit_frame, with a physical address beside it."""
    evid: list[Evidence] = []
    rec = _frame_record(run, "TX", evid)
    if rec is None:
        return False, evid
    ok = rec.len == run.frame_len
    evid.append(good(f"len={rec.len}: {run.payload_len} payload bytes + 42 header bytes") if ok
                else bad(f"len={rec.len}, but the frame is {run.frame_len} bytes ({run.payload_len} + 42 headers)"))
    c1 = run.module_records("COPY1")
    if rec.data is None:
        ok = False
        evid.append(missing("the [TX] record has no data= (skb->data)"))
    elif len(c1) == 1 and c1[0].dest is not None:
        if rec.data + FRAME_HEADERS == c1[0].dest:
            evid.append(good(f"data={hx(rec.data)} + 42 = COPY1 dest {hx(c1[0].dest)}: the same skb, "
                             f"headers in front of the payload"))
        else:
            ok = False
            evid.append(bad(f"data={hx(rec.data)} + 42 = {hx(rec.data + FRAME_HEADERS)}, but COPY1 dest is "
                            f"{hx(c1[0].dest)}"))
    else:
        ok = False
        evid.append(missing("no single [COPY1] dest to compare data with"))
    ok = _trace_agrees(run, "TX data", rec.data, run.nic_tx_event(), evid) and ok
    return _physical_field(run, rec, evid) and ok, evid


@check_kind("rx_record")
def check_rx_record(run: RunData, opts: dict):
    """[RX]: the buffer the card wrote, with its physical address; when the driver hands it up
    without a copy, it is the skb the independent trace saw at e1000_receive_skb."""
    evid: list[Evidence] = []
    rec = _frame_record(run, "RX", evid)
    if rec is None:
        return False, evid
    ok = True
    if rec.data is None or not (run.profile is None or run.profile.is_kernel_address(rec.data)):
        ok = False
        evid.append(bad(f"data={hx(rec.data)} is not a kernel address"))
    if rec.len < run.frame_len:
        ok = False
        evid.append(bad(f"len={rec.len} is shorter than the {run.frame_len}-byte frame"))
    else:
        evid.append(good(f"len={rec.len} (the {run.frame_len}-byte frame"
                         + (", padded to Ethernet's 60-byte minimum)" if rec.len > run.frame_len else ")")))
    if not run.module_records("COPYBREAK"):
        ok = _trace_agrees(run, "RX data", rec.data, run.nic_rx_event(), evid) and ok
    return _physical_field(run, rec, evid) and ok, evid


def _card_check(run: RunData, rec, card_addr: int | None, what: str, evid: list[Evidence]) -> bool:
    """The record's pa against the address the hypervisor saw the card use, and its data through the
    direct map (PA = VA - page_offset_base) against the same address."""
    base = run.direct_map_base
    ok = True
    if rec.pa == card_addr:
        evid.append(good(f"pa={hx(rec.pa)} is where the card {what} (QEMU: {hx(card_addr)})"))
    elif rec.pa == rec.data:
        ok = False
        evid.append(bad(f"pa={hx(rec.pa)} is the virtual address again; the card {what} at physical "
                        f"{hx(card_addr)}"))
    else:
        ok = False
        evid.append(bad(f"pa={hx(rec.pa)} is not where the card {what}: QEMU saw {hx(card_addr)} "
                        f"(a made-up or miscomputed physical address)"))
    if base is None or rec.data is None:
        ok = False
        evid.append(missing("no direct-map base from the hypervisor to translate data="))
    elif rec.data - base == card_addr:
        evid.append(good(f"data={hx(rec.data)} - page_offset_base {hx(base)} = {hx(card_addr)}: the "
                         f"virtual address the module printed is that physical buffer"))
    else:
        ok = False
        evid.append(bad(f"data={hx(rec.data)} - page_offset_base {hx(base)} = {hx(rec.data - base)}, "
                        f"not the buffer the card used ({hx(card_addr)})"))
    return ok


@check_kind("tx_card_read")
def check_tx_card_read(run: RunData, opts: dict):
    """Copy #2 from the hypervisor: the card read a frame of payload + 42 bytes at [TX] pa."""
    evid: list[Evidence] = []
    if run.card is None:
        return False, [_no_card_view(run)]
    reads = run.card_reads()
    if not reads:
        return False, [missing(f"the card read no {run.frame_len}-byte frame while the programs ran: no "
                               f"datagram went through the card (is the lab network up?)")]
    rec = _frame_record(run, "TX", evid)
    if rec is None:
        return False, evid
    addrs = [r["addr"] for r in reads]
    card_addr = rec.pa if rec.pa in addrs else addrs[-1]
    return _card_check(run, rec, card_addr, f"read the {run.frame_len}-byte frame", evid), evid


@check_kind("rx_card_write")
def check_rx_card_write(run: RunData, opts: dict):
    """Copy #3 from the hypervisor: the card wrote the frame, the message at +42, at [RX] pa."""
    evid: list[Evidence] = []
    if run.card is None:
        return False, [_no_card_view(run)]
    wrote = run.card_write()
    if wrote is None:
        return False, [missing("the card wrote no frame holding this run's message while the programs ran "
                               "(is the lab network up?)")]
    if wrote["seen"]:
        evid.append(good(f'the hypervisor read "{run.message}" at {hx(wrote["addr"] + FRAME_HEADERS)}, 42 '
                         f'bytes into the {wrote["len"]}-byte frame the card wrote at {hx(wrote["addr"])}'))
    else:
        evid.append(info(f'the card wrote a {wrote["len"]}-byte frame at {hx(wrote["addr"])}, the buffer '
                         f'e1000_receive_skb handed up; it was reused before the hypervisor read it'))
    rec = _frame_record(run, "RX", evid)
    if rec is None:
        return False, evid
    return _card_check(run, rec, wrote["addr"], "wrote the frame", evid), evid


@check_kind("copy4_source")
def check_copy4_source(run: RunData, opts: dict):
    """Where copy #4 reads from: the copybreak skb (a frame shorter than the driver's copybreak is
    copied by the CPU, [COPYBREAK]) or the card's own buffer; checked against the records, the
    independent trace (e1000_receive_skb) and, when it ran, the hypervisor."""
    evid: list[Evidence] = []
    c4 = run.module_records("COPY4")
    rx = run.module_records("RX")
    if len(c4) != 1 or c4[0].src is None or len(rx) != 1 or rx[0].data is None:
        return False, [missing("need exactly one [COPY4] with src= and one [RX] with data=")]
    c4, rx = c4[0], rx[0]
    frame_start = c4.src - FRAME_HEADERS
    cb, copies = run.copybreak, run.driver_copies()
    wrote = run.card_write()
    if copies is None:
        return False, [missing("the driver's copybreak during the run is unknown (net-status)")]
    evid.append(info(f"copybreak={cb}, frame {run.received_len()} bytes: the driver "
                     + ("copies it into a fresh skb" if copies else "hands the card's buffer up")))
    ok = True
    breaks = run.module_records("COPYBREAK")
    if copies:
        if len(breaks) != 1:
            return False, evid + [missing("no [COPYBREAK] record, but the driver copied the frame") if not breaks
                                  else bad(f"{len(breaks)} [COPYBREAK] records; expected one")]
        b = breaks[0]
        evid.append(info(b.text))
        checks = [(b.src == rx.data, f"COPYBREAK src {hx(b.src)} is the card's buffer (RX data)",
                   f"COPYBREAK src {hx(b.src)} is not RX data {hx(rx.data)}"),
                  (b.dest == frame_start, f"COPYBREAK dest {hx(b.dest)} + 42 = COPY4 src: copy #4 reads the copy",
                   f"COPYBREAK dest {hx(b.dest)} + 42 != COPY4 src {hx(c4.src)}")]
    else:
        checks = [(not breaks, "no [COPYBREAK] record: the driver did not copy",
                   "a [COPYBREAK] record, but the driver did not copy this frame"),
                  (rx.data == frame_start, f"COPY4 src {hx(c4.src)} = RX data + 42: copy #4 reads the card's buffer",
                   f"COPY4 src {hx(c4.src)} - 42 != RX data {hx(rx.data)}")]
    for cond, yes, no in checks:
        evid.append(good(yes) if cond else bad(no))
        ok = ok and cond
    ev_rx = run.nic_rx_event()
    if ev_rx is None:
        ok = False
        evid.append(missing("the independent trace has no e1000_receive_skb event carrying this run's message"))
    elif ev_rx.num("data") == frame_start:
        evid.append(good(f"the independent trace saw e1000_receive_skb hand up skb->data {hx(frame_start)}"))
    else:
        ok = False
        evid.append(bad(f"COPY4 src - 42 = {hx(frame_start)}, but e1000_receive_skb handed up "
                        f"{hx(ev_rx.num('data'))}"))
    base = run.direct_map_base
    if wrote is not None and base is not None:
        in_card = frame_start - base == wrote["addr"]
        if in_card != copies:
            evid.append(good(f"from the hypervisor: COPY4's source is {'in' if in_card else 'not in'} the "
                             f"buffer the card wrote ({hx(wrote['addr'])})"))
        else:
            ok = False
            evid.append(bad(f"from the hypervisor: COPY4's source {'is' if in_card else 'is not'} in the "
                            f"buffer the card wrote ({hx(wrote['addr'])}), which copybreak={cb} contradicts"))
    else:
        evid.append(info("no hypervisor view to place COPY4's source (only the official grader has it)"))
    return ok, evid


# ---------------------------------------------------------------- kernel health
@check_kind("no_kernel_fault")
def check_no_kernel_fault(run: RunData, opts: dict):
    evid: list[Evidence] = []
    ok = True
    if run.crash_excerpt:
        ok = False
        where = f" during {run.crash_phase}" if run.crash_phase else ""
        evid.append(bad(f"the kernel crashed{where}; serial log:"))
        evid += [bad(ln) for ln in run.crash_excerpt.splitlines()[:25] if ln.strip()]
    found = ev.crash_lines(run.kmsg)
    if found:
        ok = False
        evid += [bad(f"kernel log: {ln}") for ln in found[:10]]
    elif run.kmsg_text is None:
        if ok and not run.crash_excerpt:
            ok = False
        evid.append(missing("the kernel log of the run was not collected"))
    else:
        evid.append(good("no oops, panic, BUG or WARNING in the kernel log of the run"))
    new = ev.new_fatal_taint(run.taint_before, run.taint_after)
    if run.taint_after is None:
        ok = False
        evid.append(missing("the taint mask after the run was not collected"))
    elif new:
        ok = False
        evid.append(bad(f"new fatal taint {new} ({', '.join(ev.taint_names(new))}); "
                        f"before {run.taint_before}, after {run.taint_after}"))
    else:
        evid.append(good(f"no fatal taint (before {run.taint_before}, after {run.taint_after}: "
                         f"{', '.join(ev.taint_names(run.taint_after)) or 'none'})"))
    return ok, evid


# ---------------------------------------------------------------- the answers file
NO_ANSWERS = "no answers file was handed in: only the questions' points are lost"


def _answer(run: RunData, key: str, evid: list[Evidence]) -> str | None:
    """The student's answer to ``key`` (there is an answers file), or None with evidence saying
    why there is none."""
    text = run.answers.answered(key)
    if text is None:
        evid.append(missing(f"the answers file has no answer to {key}"))
        evid += [info(f"answers file: {p}") for p in run.answers.problems[:5]]
    return text


def _measured_copy_distance(run: RunData) -> tuple[int | None, str]:
    tx, rx = run.tx_event(), run.rx_event()
    if tx is None or rx is None or tx.num("to") is None or rx.num("data") is None:
        return None, "the independent trace has no ip_generic_getfrag to and skb->data for this run"
    to, data = tx.num("to"), rx.num("data")
    return data - to, (f"the independent trace: skb->data {hx(data)} at skb_consume_udp minus "
                       f"ip_generic_getfrag's to {hx(to)}")


# what an answer is compared with, measured in this run's independent trace
MEASURES = {"copy4_src_minus_copy1_dest": _measured_copy_distance}


@check_kind("answer_number")
def check_answer_number(run: RunData, opts: dict):
    """options: question (the key), and either measure (a MEASURES name: the number from this
    run's independent trace) or expect (a number that holds in every run) with why."""
    key = opts["question"]
    if run.answers is None:
        return False, [missing(NO_ANSWERS)]
    evid: list[Evidence] = []
    text = _answer(run, key, evid)
    if text is None:
        return False, evid
    if "measure" in opts:
        want, source = MEASURES[opts["measure"]](run)
        if want is None:
            return False, evid + [missing(f"cannot check {key}: {source}")]
    else:
        want, source = int(opts["expect"]), opts.get("why", "")
    got = ev.answer_number(text)
    evid.append(info(f"{key}: {text[:200]}"))
    if got is None:
        return False, evid + [bad(f"{key} does not start with a number (decimal or 0x hex)")]
    if got in run.example_addresses:
        evid.append(bad(f"mistake: {hx(got)} is an example address from the handout or the "
                        f"narrative, not a number from your run"))
    if got == want:
        return True, evid + [good(f"{key} = {got}: {source}" if source else f"{key} = {got}")]
    return False, evid + [bad(f"{key} = {got}, but {source + ' gives' if source else 'the answer is'} "
                              f"{want}")]


@check_kind("answer_pagemap")
def check_answer_pagemap(run: RunData, opts: dict):
    """options: va, pfn, pa (keys). The pagemap exercise runs in the student's own session, which
    no trace of this run sees: the three numbers must be consistent, PA = PFN * 4096 + (VA AND
    0xFFF), with a user VA and a PFN of 55 bits at most."""
    if run.answers is None:
        return False, [missing(NO_ANSWERS)]
    evid: list[Evidence] = []
    keys = (opts.get("va", "pagemap_va"), opts.get("pfn", "pagemap_pfn"), opts.get("pa", "pagemap_pa"))
    texts = [_answer(run, k, evid) for k in keys]
    if any(t is None for t in texts):
        return False, evid
    va, pfn, pa = nums = [ev.answer_number(t) for t in texts]
    for k, t, n in zip(keys, texts, nums):
        evid.append(info(f"{k}: {t[:200]}"))
        if n is None:
            evid.append(bad(f"{k} does not start with a number (decimal or 0x hex)"))
    if None in nums:
        return False, evid
    ok = True
    if va in run.example_addresses:
        ok = False
        evid.append(bad(f"mistake: {keys[0]}={hx(va)} is an example address from the handout or "
                        f"the narrative, not one your program printed"))
    if run.profile is not None and not run.profile.is_user_address(va):
        ok = False
        evid.append(bad(f"{keys[0]}={hx(va)} is not a user-space address"))
    if not 0 < pfn < 1 << 55:
        ok = False
        evid.append(bad(f"{keys[1]}={hx(pfn)} is not a page frame number (bits 0-54 of the "
                        f"pagemap entry; 0 means the page was not present or you were not root)"))
    want = pfn * 4096 + (va & 0xFFF)
    if pa == want:
        evid.append(good(f"{keys[2]}={hx(pa)} = {hx(pfn)} * 4096 + ({hx(va)} AND 0xfff)"))
    else:
        ok = False
        evid.append(bad(f"{keys[2]}={hx(pa)}, but {hx(pfn)} * 4096 + ({hx(va)} AND 0xfff) = "
                        f"{hx(want)}"))
    return ok, evid

