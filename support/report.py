"""What the bench and fault reports share: the machine a run was measured on, and the replacement of a
marked section of a file (README.md) by a fresh table."""
from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path


def machine() -> dict:
    """Date, CPUs, architecture, host kernel, Python and whether /dev/kvm is usable."""
    kvm = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
            "machine": platform.machine(), "kernel": platform.release(), "python": platform.python_version(),
            "kvm_device": kvm}


def replace_between(path: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the two marker lines of ``path`` (both must be present)."""
    body = path.read_text()
    if begin not in body or end not in body:
        raise SystemExit(f"{path.name} lacks the markers {begin} ... {end}")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + begin + "\n" + text + end + tail)
