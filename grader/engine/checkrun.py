"""Running a lab's checks: the one registry of check kinds and the order checks run in.

The lab kinds (checks.py) and the hypervisor-witness kinds (witnesschecks.py, built on the lab kinds)
register themselves in ``REGISTRY`` when their module is imported; importing this module imports
both, so ``REGISTRY`` here holds every kind a lab spec may name.
"""
from __future__ import annotations

from ..errors import LabSpecError
from . import witnesschecks  # noqa: F401  (registers the witness kinds)
from .checks import REGISTRY, CheckFn, CheckResult, bad, missing
from .model import RunData

__all__ = ["REGISTRY", "run_checks", "topo_order"]


def run_checks(specs, run: RunData, registry: dict[str, CheckFn] | None = None) -> list[CheckResult]:
    """Run checks in dependency order; a check whose dependency failed is not run (0 points).
    Results come back in declaration order."""
    reg = registry or REGISTRY
    done: dict[str, CheckResult] = {}
    for spec in topo_order(list(specs)):
        failed_dep = next((d for d in spec.depends if not done[d].passed), None)
        if failed_dep is not None:
            done[spec.name] = CheckResult(
                spec.name, spec.kind, False, 0, spec.points,
                [missing(f"not run: it depends on {failed_dep!r}, which did not pass")],
                spec.hint, spec.title, skipped_because=failed_dep, part=spec.part)
            continue
        try:
            passed, evid = reg[spec.kind](run, dict(spec.options))
        except Exception as e:  # a bug in a check must not lose the whole result
            passed, evid = False, [bad(f"internal error in check {spec.kind}: "
                                       f"{type(e).__name__}: {e}")]
        done[spec.name] = CheckResult(spec.name, spec.kind, bool(passed),
                                      spec.points if passed else 0, spec.points, list(evid),
                                      spec.hint, spec.title, part=spec.part)
    return [done[s.name] for s in specs]


def topo_order(checks: list, where: str = "lab.toml") -> list:
    """Checks (labspec.CheckSpec) in an order where dependencies come first (declaration order otherwise
    kept)."""
    by_name = {c.name: c for c in checks}
    state: dict[str, int] = {}
    out: list = []

    def visit(c, path: list[str]):
        s = state.get(c.name)
        if s == 2:
            return
        if s == 1:
            cyc = path[path.index(c.name):] + [c.name]
            raise LabSpecError(f"{where}: dependency cycle: {' -> '.join(cyc)}")
        state[c.name] = 1
        for d in c.depends:
            visit(by_name[d], path + [c.name])
        state[c.name] = 2
        out.append(c)

    for c in checks:
        visit(c, [])
    return out
