"""Lab specs (labs/<lab>/lab.toml) as the service sees them."""
from __future__ import annotations

from flask import current_app

from grader.engine.labspec import LabSpec, load_lab


def lab_spec(lab_id: str) -> LabSpec:
    cache = current_app.extensions.setdefault("copylab_labs", {})
    if lab_id not in cache:
        cache[lab_id] = load_lab(lab_id, current_app.config["LABS_DIR"])
    return cache[lab_id]


def available_labs() -> list[str]:
    from pathlib import Path

    root = Path(current_app.config["LABS_DIR"])
    return sorted(p.parent.name for p in root.glob("*/lab.toml"))


def suite_problem(lab_id: str, suite: str) -> str | None:
    """Why an assignment of lab_id cannot be graded on Debian release `suite` (None: it can): the
    release must be one the lab VMs are built for, its x86_64 kernel one the lab spec names, and the
    pool must hold VMs of it in the lab's shape (POOL_SUITE, POOL_QEMU_SUITES)."""
    from grader.kit import suite_kernels

    from .pool import pool_suite, qemu_counts

    known = suite_kernels()
    if suite not in known:
        return f"no Debian release {suite!r} (known: {', '.join(known)})"
    spec = lab_spec(lab_id)
    release = known[suite].get("x86_64")
    if release not in spec.supported_kernels():
        return (f"{lab_id} does not run on {suite}'s kernel {release} (its lab.toml [run] names "
                f"{', '.join(spec.supported_kernels())})")
    cfg = current_app.config
    # inventory hosts are plain lab VMs counted as POOL_SUITE's
    hosts = bool(cfg.get("POOL_HOSTS")) and not spec.vm_shape and suite == pool_suite(cfg)
    if not qemu_counts(cfg).get((spec.vm_shape, suite)) and not hosts:
        return (f"the VM pool has no {suite} lab VM of {lab_id}'s shape {spec.vm_shape!r}: set "
                f"POOL_QEMU_SUITES = {{{suite!r}: {{{spec.vm_shape!r}: 1}}}} (or POOL_SUITE)")
    return None
