"""The result document of one grading run, its Gradescope form and a terminal rendering."""

from __future__ import annotations

import json
from pathlib import Path

from .checks import CheckResult, hx
from .journey import journey_from_result
from .journey import render_text as journey_text
from .model import FRAME_HEADERS, RunData
from .phases import RunOutcome

SCHEMA_VERSION = 1


def trace_table(run: RunData) -> list[dict]:
    """The narrative's 7 steps, filled with this run's real addresses ("?" where unknown)."""
    c1 = run.module_records("COPY1")
    c4 = run.module_records("COPY4")
    c1 = c1[0] if len(c1) == 1 else None
    c4 = c4[0] if len(c4) == 1 else None
    tx, rx = run.tx_event(), run.rx_event()
    n = run.payload_len
    sbuf = run.sender.buffer if run.sender.buffer is not None else (c1.src if c1 else None)
    rbuf = run.receiver.buffer if run.receiver.buffer is not None else (c4.dest if c4 else None)
    skb = c1.dest if c1 and c1.dest is not None else (tx.num("to") if tx else None)
    skb_data = c4.src if c4 and c4.src is not None else (rx.num("data") if rx else None)
    tpayload = rx.payload() if rx else None
    q = f'"{run.message}"'
    return [
        {"step": 1, "action": "sender fills its buffer (user space)",
         "location": f"sender buffer {hx(sbuf)}", "data": f"{q} ({n} bytes)"},
        {"step": 2, "action": "sendto(): udp_sendmsg -> ip_generic_getfrag",
         "location": f"msg_iter user address {hx(tx.user_addr if tx else None)}",
         "data": f"len={tx.num('len') if tx else '?'}"},
        {"step": 3, "action": "copy #1 _copy_from_iter: user -> kernel (skb)",
         "location": f"{hx(c1.src if c1 else None)} -> {hx(skb)}",
         "data": f"len={c1.len if c1 else '?'}"},
        {"step": 4, "action": "the skb waits on the receiving socket (loopback)",
         "location": f"skb->data {hx(skb_data)}",
         "data": (f'"{tpayload.decode(errors="replace")}"' if tpayload is not None else "?")},
        {"step": 5, "action": "recv(): udp_recvmsg -> copy_linear_skb",
         "location": f"msg_iter user address {hx(run.rxmsg_event().user_addr if run.rxmsg_event() else None)}",
         "data": f"len={rx.num('len') if rx else '?'}"},
        {"step": 6, "action": "copy #4 _copy_to_iter: kernel (skb) -> user",
         "location": f"{hx(c4.src if c4 else None)} -> {hx(c4.dest if c4 else rbuf)}",
         "data": f"len={c4.len if c4 else '?'}"},
        {"step": 7, "action": "receiver's buffer holds the message (user space)",
         "location": f"receiver buffer {hx(rbuf)}",
         "data": (f'"{run.receiver.received_text}"' if run.receiver.received_text is not None
                  else "?")},
    ]


def _one_record(run: RunData, kind: str):
    recs = run.frame_records(kind)
    return recs[0] if len(recs) == 1 else None


def is_wire_run(run: RunData) -> bool:
    """A run over the network cards (lab 2): the lab network was set up, or records or the card say so."""
    return run.net_status is not None or run.card is not None or bool(run.module_records("TX"))


def wire_table(run: RunData) -> list[dict]:
    """Lab 2's journey, both sides: what the guest saw (the module's records, the programs) and what
    the hypervisor saw the card do, at this run's addresses ("?" where unknown, "-" where that side
    has nothing to see)."""
    c1, c4 = _one_record(run, "COPY1"), _one_record(run, "COPY4")
    tx, rx, brk = _one_record(run, "TX"), _one_record(run, "RX"), _one_record(run, "COPYBREAK")
    read = run.card_reads()[-1] if run.card_reads() else None
    wrote = run.card_write()
    base = run.direct_map_base
    q, n = f'"{run.message}"', run.payload_len
    no_card = "?" if run.card is None else "-"

    def phys(rec):
        return f"{hx(rec.data)} (pa {hx(rec.pa)})" if rec else "?"

    if c4 is None or c4.src is None:
        copy4_card = "?"
    elif wrote is None or base is None:
        copy4_card = no_card
    else:
        inside = c4.src - FRAME_HEADERS - base == wrote["addr"]
        copy4_card = f"reads {'inside' if inside else 'outside'} the buffer the card wrote"
    copybreak = (f"{hx(brk.src)} -> {hx(brk.dest)}" if brk else
                 "no copy" + (f" (copybreak={run.copybreak})" if run.copybreak is not None else ""))
    return [
        {"step": 1, "action": "sender fills its buffer (user space)",
         "location": f"sender buffer {hx(run.sender.buffer)}", "card": "-", "data": f"{q} ({n} bytes)"},
        {"step": 2, "action": "copy #1 _copy_from_iter: user -> kernel (skb)",
         "location": f"{hx(c1.src if c1 else None)} -> {hx(c1.dest if c1 else None)}", "card": "-",
         "data": f"len={c1.len if c1 else '?'}"},
        {"step": 3, "action": "e1000_xmit_frame: the driver gives the card the skb's physical address",
         "location": f"skb->data {phys(tx)}", "card": "-",
         "data": f"len={tx.len if tx else '?'} ({n} + {FRAME_HEADERS} header bytes)"},
        {"step": 4, "action": "copy #2: the card reads the frame out of RAM (DMA)",
         "location": "-", "card": f"read {hx(read['addr'])}" if read else no_card,
         "data": f"len={read['len']}" if read else "?"},
        {"step": 5, "action": "copy #3: the other card writes it into a receive buffer (DMA)",
         "location": f"receive buffer {phys(rx)}",
         "card": f"wrote {hx(wrote['addr'])}" if wrote else no_card,
         "data": f"len={wrote['len']}, {q} at +{FRAME_HEADERS}" if wrote else f"len={rx.len if rx else '?'}"},
        {"step": 6, "action": "copybreak: the CPU copies a small frame into a fresh skb",
         "location": copybreak, "card": "-", "data": f"len={brk.len}" if brk else "-"},
        {"step": 7, "action": "copy #4 _copy_to_iter: kernel (skb) -> user",
         "location": f"{hx(c4.src if c4 else None)} -> {hx(c4.dest if c4 else None)}", "card": copy4_card,
         "data": f"len={c4.len if c4 else '?'}"},
        {"step": 8, "action": "receiver's buffer holds the message (user space)",
         "location": f"receiver buffer {hx(run.receiver.buffer)}", "card": "-",
         "data": (f'"{run.receiver.received_text}"' if run.receiver.received_text is not None else "?")},
    ]


def copies_and_places(run: RunData) -> tuple[int, int]:
    """(copies of the payload, buffers holding it) for this run's path."""
    if not is_wire_run(run):
        return 2, 3
    copied = bool(run.module_records("COPYBREAK")) or bool(run.driver_copies())
    return 4 + copied, 4 + copied


def build_result(run: RunData, checks: list[CheckResult], artifacts: dict[str, str] | None = None,
                 max_score: int | None = None) -> dict:
    env = {"kernel_release": None, "arch": None, "module_sha256": run.module_sha256,
           "accel": None}
    env.update({k: v for k, v in run.environment.items() if v is not None})
    env["module_sha256"] = run.module_sha256
    phases = [p.as_dict() for p in run.phases.values()]
    return {
        "schema": SCHEMA_VERSION,
        "lab": run.lab_id,
        "run_id": run.runid,
        "submission": {"sha256": run.submission_sha256, "files": dict(run.submission_files)},
        "message": run.message,
        "port": run.port,
        "score": sum(c.points for c in checks if c.part == "lab"),
        "max_score": max_score if max_score is not None else
        sum(c.max_points for c in checks if c.part == "lab"),
        # the answers file's checks, scored apart from the lab (None: the lab asks no questions)
        "questions": questions_score(checks),
        "verdict": run.verdict,
        "checks": [c.as_dict() for c in checks],
        "phases": phases,
        # whether the result is the submission's or the grader failed (grader/engine/phases.py)
        "outcome": RunOutcome.of_phases(phases).as_dict(),
        "environment": env,
        "disk_free_after_run_bytes": run.disk_free_bytes,
        "trace_table": wire_table(run) if is_wire_run(run) else trace_table(run),
        "copies": copies_and_places(run)[0],
        "places": copies_and_places(run)[1],
        "bytes_held": copies_and_places(run)[1] * run.payload_len,
        "artifacts": dict(artifacts or {}),
        # what was seen from outside the guest, and from where (grader/engine/hostevidence.py)
        "host_evidence": {name: e.as_dict() for name, e in run.host_evidence.items()},
        # the answers file for the instructor (None: none handed in): every answer, the checked
        # ones too, and the lines that were not understood
        "answers": None if run.answers is None else
        {"values": dict(run.answers.values), "problems": list(run.answers.problems)},
    }


def questions_score(checks: list[CheckResult]) -> dict | None:
    qs = [c for c in checks if c.part == "questions"]
    if not qs:
        return None
    return {"score": sum(c.points for c in qs), "max_score": sum(c.max_points for c in qs)}


def write_result(result: dict, outdir: str | Path, name: str = "result.json") -> Path:
    p = Path(outdir) / name
    p.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return p


def to_gradescope(result: dict) -> dict:
    """Gradescope autograder results.json."""
    tests = []
    for c in result["checks"]:
        lines = [f"[{e['mark']}] {e['text']}" for e in c["evidence"]]
        if not c["passed"] and c.get("hint"):
            lines.append(f"hint: {c['hint']}")
        tests.append({"name": c.get("title") or c["name"], "number": c["name"],
                      "score": c["points"], "max_score": c["max_points"],
                      "status": "passed" if c["passed"] else "failed",
                      "output": "\n".join(lines), "visibility": "visible"})
    out = [f"verdict: {result['verdict']}"] if result.get("verdict") else []
    out.append(journey_text(journey_from_result(result)))
    out.append(render_table(result["trace_table"]))
    return {"score": result["score"], "output": "\n".join(out), "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


MARK_SYMBOL = {"good": "+", "bad": "x", "missing": "?", "info": " "}


def render_table(rows: list[dict]) -> str:
    heads = ("step", "action", "location", "card", "data") if any("card" in r for r in rows) \
        else ("step", "action", "location", "data")
    cells = [[str(r[h]) for h in heads] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*heads), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*c) for c in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_text(result: dict, grader_only: frozenset[str] = frozenset()) -> str:
    """The result as text. grader_only: checks this machine cannot run (make check names them):
    shown as such, without a hint that would send the student looking for a fault in their code."""
    lines = [f"copylab {result['lab']} run {result.get('run_id', '')}: "
             f"{result['score']}/{result['max_score']} points"]
    if result.get("questions"):
        q = result["questions"]
        lines.append(f"questions (answers file, scored apart): {q['score']}/{q['max_score']} points")
    if result.get("verdict"):
        lines.append(f"VERDICT: {result['verdict']}")
    lines.append("")
    for c in result["checks"]:
        not_here = c["name"] in grader_only
        status = ("PASS" if c["passed"] else "GRADER ONLY" if not_here
                  else "SKIP" if c.get("skipped_because") else "FAIL")
        lines.append(f"[{status}] {c['name']} ({c['points']}/{c['max_points']})"
                     + (f" - {c['title']}" if c.get("title") else ""))
        for e in c["evidence"]:
            lines.append(f"    {MARK_SYMBOL.get(e['mark'], ' ')} {e['text']}")
        if not c["passed"] and c.get("hint") and not not_here:
            lines.append(f"    hint: {c['hint']}")
    lines.append("")
    lines.append("phases: " + ", ".join(f"{p['name']} {p['status']} {p['duration_s']:.1f}s"
                                        for p in result["phases"]))
    for p in result["phases"]:
        if p["status"] in ("failed", "timeout"):
            lines.append(f"  {p['name']} {p['status']}: {p['detail']}")
    lines.append("")
    lines.append(journey_text(journey_from_result(result)))
    lines.append(f"the message's journey ({result['copies']} copies, "
                 f"{result['bytes_held']} bytes held in {result.get('places', 3)} buffers):")
    lines.append(render_table(result["trace_table"]))
    return "\n".join(lines) + "\n"
