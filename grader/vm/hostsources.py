"""The host evidence sources (grader/engine/hostevidence.py) a QEMU lab VM can run, by the name a lab
spec uses. Each entry is "module:callable"; the callable takes (lab_vm, lab, profile) and returns
(source | None, why). Imported only when a lab asks for the source."""

from __future__ import annotations

import importlib

HOST_SOURCES: dict[str, str] = {
    "gdbstub": "grader.vm.gdbwitness:offer",
    "nic-trace": "grader.vm.nictrace:offer",      # lab 2: QEMU's trace events of the e1000e cards
}


def offer(name: str, lab_vm, lab, profile):
    target = HOST_SOURCES.get(name)
    if target is None:
        return None, f"this grader has no host evidence source {name!r} (known: {', '.join(sorted(HOST_SOURCES)) or 'none'})"
    module, _, attr = target.partition(":")
    fn = importlib.import_module(module)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn(lab_vm, lab, profile)
