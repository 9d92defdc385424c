"""`make bench` (python -m bench): runs the benchmarks, writes bench/results/latest.json and
latest.md (the docs link that table: docs/development.md).

    python -m bench [--only floor,burst,scaling,provisioning,witness] [--pairs 3] [--burst 1000]
                    [--skip-cold]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from support.report import machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rows_for(r: dict) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, met) rows of the report."""
    out = []
    f = r.get("floor")
    if f:
        out.append(("grading run vs floor, median ratio b/a (per pair: "
                    + ", ".join(f"{p['ratio']:.2f}" for p in f["pairs"]) + ")"
                    + (f"; build in the {f['build_place']}" if f.get("build_place") else ""),
                    f"{f['ratio_median']:.3f} (grader {f['grader_median_s']:.1f} s, floor {f['floor_median_s']:.1f} s)",
                    "<= 0.5", f["ratio_median"] <= 0.5))
        if f.get("grader_vm_build_median_s"):
            out.append(("grading runs per VM per hour: build in the VM (before) / in the host sandbox (after)",
                        f"{3600 / f['grader_vm_build_median_s']:.0f} / {3600 / f['grader_median_s']:.0f}",
                        "", None))
            out.append(("module build phase, median: in the VM / in the host sandbox",
                        f"{f['build_in_vm_median_s']:.1f} s / {f['build_in_sandbox_median_s']:.1f} s", "", None))
        out.append(("VM reset: restore until SSH answers, median of "
                    f"{len(f['reset_s'])}", f"{f['reset_median_s']:.2f} s", "<= 2 s", f["reset_median_s"] <= 2.0))
        phases = ", ".join(f"{k} {v:.1f}" for k, v in f["grader_phases_median_s"].items())
        out.append(("grading run phases, median seconds", phases, "", None))
        steps = ", ".join(f"{k} {v:.1f}" for k, v in f["floor_steps_median_s"].items())
        out.append(("floor steps, median seconds", steps, "", None))
    b = r.get("burst")
    if b:
        out.append((f"deadline burst: {b['submissions']} submissions within {b['window_s']:.0f} s, acceptance "
                    "latency p50 / p99", f"{b['p50_ms']} ms / {b['p99_ms']} ms (max {b['max_ms']} ms)",
                    "p99 < 200 ms", b["p99_ms"] is not None and b["p99_ms"] < 200))
        lost = b["lost"] + (b["submissions"] - b["accepted"])
        out.append(("deadline burst: lost (not accepted, not stored, not intact, not queued exactly once)",
                    f"{lost} (accepted {b['accepted']}, stored intact {b['stored_intact']}, with one job "
                    f"{b['submissions_with_one_job']}, queue messages {b['queue_messages_for_queued_jobs']})",
                    "0", lost == 0 and b["submissions_with_one_job"] == b["submissions"]
                    and b["queue_messages_for_queued_jobs"] == b["submissions"]))
    s = r.get("scaling")
    if s:
        for row in s["rows"][1:]:
            out.append((f"pool scaling: {row['slots']} slots vs 1 (replayed {s['replayed_seconds_per_job']} s "
                        f"jobs, time scale {s['time_scale']})",
                        f"{row['jobs_per_minute_real_time']} jobs/min, efficiency {row['efficiency']:.3f}",
                        ">= 0.9", row["efficiency"] >= 0.9))
    w = r.get("witness")
    if w:
        side = ", ".join(f"{k} {v['without']:.1f} / {v['with']:.1f}" for k, v in w["phases_median_s"].items())
        out.append((f"hypervisor witness (gdbstub) cost: grading run without / with it, median of "
                    f"{len(w['pairs'])} alternated pairs (witness {', '.join(map(str, w['witness_statuses']))})",
                    f"{w['without_median_s']:.1f} s / {w['with_median_s']:.1f} s; phases {side} s",
                    "", None))
    p = r.get("provisioning")
    if p:
        c = p["cold"]
        src = "measured now" if c["measured"] else c["source"]
        out.append((f"cold image build, base + golden ({src})",
                    f"{c['wall_s'] / 60:.1f} min (base {c['base_s'].get('total')} s, golden "
                    f"{c['golden_s'].get('total')} s)", "", None))
        again, recap = c["golden_s"].get("provision_again"), c.get("second_run_recap") or {}
        if again is not None:
            out.append(("playbook re-run on a provisioned VM (the image build's second run on the VM it "
                        "just provisioned)", f"{again} s, changed={recap.get('changed')}", "< 60 s, changed=0",
                        again < 60 and recap.get("changed") == 0))
        rr = p["rerun"]
        out.append(("first playbook run on a new VM from the golden image (re-keys the VM's identity: host "
                    "keys, known_hosts)", f"{rr['seconds']:.0f} s, changed={rr['recap'].get('changed')}", "", None))
    return out


def markdown(r: dict) -> str:
    m = r["machine"]
    accel = (r.get("floor") or {}).get("accel") or ((r.get("provisioning") or {}).get("rerun") or {}).get("accel")
    merged = f" Parts not re-run come from {r['merged_from']}." if r.get("merged_from") else ""
    lines = [f"Last run: {m['date']}, {m['cpus']} CPUs ({m['machine']}), host kernel {m['kernel']}, "
             f"lab VMs under **{(accel or '?').upper()}**"
             + ("" if m["kvm_device"] else " (no usable /dev/kvm)") + "." + merged, "",
             "| figure | value | target | met |", "| --- | --- | --- | --- |"]
    for fig, val, tgt, met in rows_for(r):
        lines.append(f"| {fig} | {val} | {tgt} | {'' if met is None else ('yes' if met else '**no**')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--only", default="floor,burst,scaling,provisioning,witness")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--resets", type=int, default=5)
    ap.add_argument("--burst", type=int, default=1000)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--skip-cold", action="store_true", help="report the cached image's recorded build times")
    ap.add_argument("--report-only", action="store_true", help="re-render latest.json (no measuring)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other parts from the last (or an interrupted) run: bench/results/partial.json, "
                         "else latest.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(","))
    if args.report_only:
        md = markdown(json.loads((RESULTS / "latest.json").read_text()))
        (RESULTS / "latest.md").write_text(md)
        print(md)
        return 0
    result: dict = {"machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = RESULTS / "partial.json"

    if args.merge:
        for prev in (partial, RESULTS / "latest.json"):
            if prev.exists():
                old = json.loads(prev.read_text())
                result.update({k: v for k, v in old.items() if k not in only and k != "machine"})
                result["merged_from"] = f"{prev.name} ({old['machine']['date']})"
                break

    def save() -> None:  # after every part: a failure later loses nothing measured
        partial.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if "floor" in only:
        from bench import floor

        say(f"floor vs grader: {args.pairs} pairs on one lab VM")
        result["floor"] = floor.measure(pairs=args.pairs, resets=args.resets, progress=say)
        save()
    if "burst" in only:
        from bench import burst

        result["burst"] = burst.measure(n=args.burst, window=args.window, progress=say)
        save()
        say(f"burst: p50 {result['burst']['p50_ms']} ms, p99 {result['burst']['p99_ms']} ms")
    if "scaling" in only:
        from bench import scaling

        phases = None
        if result.get("floor"):
            phases = result["floor"]["grader_phases_median_s"]
        result["scaling"] = scaling.measure(phases=phases, progress=say)
        save()
    if "provisioning" in only:
        from bench import provisioning

        cold = provisioning.cached_build_figures() if args.skip_cold else provisioning.cold_build(progress=say)
        say("provisioning: re-running the playbook on a provisioned VM")
        result["provisioning"] = {"cold": cold, "rerun": provisioning.rerun(progress=say)}
        save()
    if "witness" in only:
        from bench import witness

        say(f"witness: {args.pairs} pairs without / with the hypervisor witness on one lab VM")
        result["witness"] = witness.measure(pairs=args.pairs, progress=say)
        save()
    partial.unlink(missing_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (RESULTS / "latest.md").write_text(md)
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
