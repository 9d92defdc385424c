"""Figures of the fault suite: one per line in the report, each with its target and whether it is met.

Every part returns ``{"figures": [Figure.as_dict(), ...], ...details}``; the runner renders the
figures into ``faults/results/latest.md``.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Figure:
    part: str            # kernel, user, restarts, uploads, access, hostkey
    name: str            # what is counted, in words an instructor reads
    value: str           # the measured value as reported, e.g. "6/6" or "0"
    target: str          # e.g. "6/6" or "0"
    met: bool | None     # None: reported without a target
    note: str = ""       # why it is off target, or what it covers

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def ratio(part: str, name: str, good: int, total: int, note: str = "") -> Figure:
    """``good/total`` with target ``total/total`` (an empty total is never met: nothing was shown)."""
    return Figure(part, name, f"{good}/{total}", f"{total}/{total}", total > 0 and good == total, note)


def zero(part: str, name: str, count: int, note: str = "") -> Figure:
    return Figure(part, name, str(count), "0", count == 0, note)


def line(f: dict) -> str:
    mark = "" if f["met"] is None else (" ok" if f["met"] else " **OFF TARGET**")
    target = f" (target {f['target']})" if f["target"] else ""
    note = f"; {f['note']}" if f.get("note") else ""
    return f"- {f['part']}: {f['name']}: **{f['value']}**{target}{mark}{note}"


def markdown(result: dict, parts: list[str]) -> str:
    m = result["machine"]
    head = (f"Last run: {m['date']}, {m['cpus']} CPUs ({m['machine']}), host kernel {m['kernel']}, "
            f"lab VMs under **{(result.get('accel') or '?').upper()}**, {result.get('wall_s', 0) / 60:.1f} min "
            "in all.")
    merged = f" Parts not re-run come from {result['merged_from']}." if result.get("merged_from") else ""
    out = [head + merged, ""]
    for part in parts:
        r = result.get(part)
        if not r:
            continue
        if r.get("error"):
            out.append(f"- {part}: **did not finish**: {r['error']}")
        for f in r.get("figures", []):
            out.append(line(f))
    return "\n".join(out) + "\n"
