"""`make faults` (python -m faults): the fault and abuse suite. Writes faults/results/latest.json and
latest.md (one figure per line; the docs link it: docs/development.md).

    python -m faults [--only pool,webkill,hostkey,uploads,access,slowclients,exports,qemusandbox,storage,login,
                     buildbox,isolation]
                     [--uploads 2000] [--pool-vms 2] [--kills worker=2,web=4,qemu=2] [--faults panic,hang,...]
                     [--login-seconds 60] [--seed 1] [--merge]

Parts: ``pool`` (kernel faults, user-space faults and restarts, on one service with a VM pool),
``webkill`` (hand-ins in flight while the web process is killed again and again), ``hostkey``, ``uploads``, ``access``,
``slowclients`` (normal requests while slow clients hold connections, straight to `serve` and behind nginx),
``exports`` (formula cells in CSV exports, security headers on every route, hostile next= and cohort names),
``qemusandbox`` (every QEMU of a one-VM pool confined, through a panic and the restore),
``storage`` (what one student can make the service keep; the instance folder's file modes),
``login`` (password guessing from one and from several loopback addresses, timing, common passwords),
``buildbox`` (builds that try to escape the host-side build sandbox),
``isolation`` (what student programs reach; what a run leaves on an inventory host).
Every loop is bounded in count and time; all traffic stays on this machine (127.0.0.1 and QEMU's
user-mode network).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "faults" / "results"
PARTS = ["pool", "webkill", "hostkey", "uploads", "access", "slowclients", "exports", "qemusandbox", "storage", "login", "buildbox", "isolation"]
# report order: the pool part's figures carry their own part names (kernel, user, restarts)
ORDER = ["pool", "webkill", "uploads", "access", "exports", "slowclients", "storage", "login", "hostkey", "qemusandbox", "buildbox", "isolation"]


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m faults")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--uploads", type=int, default=2000, help="hostile uploads and forms to generate")
    ap.add_argument("--pool-vms", type=int, default=2)
    ap.add_argument("--kills", default="worker=2,web=4,qemu=2")
    ap.add_argument("--faults", default="", help="comma-separated fault names (default: all)")
    ap.add_argument("--login-seconds", type=float, default=60, help="length of each password-guessing attack")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--build-rounds", type=int, default=3, help="rounds of each hostile build (buildbox)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the parts not run now from faults/results/latest.json (the report says so)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from faults.report import markdown
    from support.report import machine

    only = [p for p in PARTS if p in args.only.split(",")]
    unknown = set(args.only.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    result: dict = {"machine": machine(), "seed": args.seed}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.merge and (RESULTS / "latest.json").exists():
        old = json.loads((RESULTS / "latest.json").read_text())
        kept = [p for p in PARTS if p not in only and p in old]
        result.update({p: old[p] for p in kept})
        if kept:
            result["merged_from"] = f"the run of {old['machine']['date']} ({', '.join(kept)})"
            result["accel"] = old.get("accel")
            result["wall_s_merged"] = sum(old[p].get("seconds", 0) for p in kept)
    t0 = time.monotonic()
    golden = None
    if {"pool", "hostkey", "qemusandbox", "buildbox", "isolation"} & set(only):
        from grader.vm.labvm import find_golden

        golden = find_golden()

    def run(part: str, fn) -> None:
        say(f"{part}: starting")
        t = time.monotonic()
        try:
            result[part] = fn()
        except Exception as e:  # noqa: BLE001 - a part that breaks is reported, the others still run
            result[part] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
            say(f"{part}: did not finish: {type(e).__name__}: {e}")
        result[part]["seconds"] = round(time.monotonic() - t, 1)
        if result[part].get("accel"):   # what the lab VMs really ran under (KVM can be present but refuse)
            result["accel"] = result[part]["accel"]
        (RESULTS / "partial.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        for f in result[part].get("figures", []):
            say(f"  {f['part']}: {f['name']}: {f['value']}" + ("" if f["met"] is not False else "  OFF TARGET"))

    if "pool" in only:
        from faults import pool_run

        kills = {k: int(v) for k, v in (kv.split("=") for kv in args.kills.split(",") if kv)}
        run("pool", lambda: pool_run.measure(golden, pool_vms=args.pool_vms, kills=kills, seed=args.seed,
                                             faults=[f for f in args.faults.split(",") if f] or None,
                                             progress=say))
    if "webkill" in only:
        from faults import web_restarts

        run("webkill", lambda: web_restarts.measure(seed=args.seed, progress=say))
    if "hostkey" in only:
        from faults import hostkey

        run("hostkey", lambda: hostkey.measure(golden, progress=say))
    if "uploads" in only:
        from faults import uploads

        run("uploads", lambda: uploads.measure(n=args.uploads, progress=say))
    if "access" in only:
        from faults import access

        run("access", lambda: access.measure(progress=say))
    if "slowclients" in only:
        from faults import slowclients

        run("slowclients", lambda: slowclients.measure(progress=say))
    if "exports" in only:
        from faults import exports

        run("exports", lambda: exports.measure(progress=say))
    if "qemusandbox" in only:
        from faults import qemusandbox

        run("qemusandbox", lambda: qemusandbox.measure(golden, progress=say))
    if "storage" in only:
        from faults import storage

        run("storage", lambda: storage.measure(progress=say))
    if "login" in only:
        from faults import login

        run("login", lambda: login.measure(attack_seconds=args.login_seconds, progress=say))
    if "buildbox" in only:
        from faults import buildbox

        run("buildbox", lambda: buildbox.measure(golden, rounds=args.build_rounds, progress=say))
    if "isolation" in only:
        from faults import isolation

        run("isolation", lambda: isolation.measure(golden, progress=say))
    result["wall_s"] = round(time.monotonic() - t0 + result.get("wall_s_merged", 0), 1)
    (RESULTS / "partial.json").unlink(missing_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result, ORDER)
    (RESULTS / "latest.md").write_text(md)
    print("\n" + md)
    off = [f for p in only for f in result[p].get("figures", []) if f["met"] is False]
    broken = [p for p in only if result[p].get("error")]
    say(f"{len(off)} figures off target, {len(broken)} parts did not finish, {result['wall_s'] / 60:.1f} min")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
