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
