"""What the bench and fault reports share: the machine a run was measured on."""
from __future__ import annotations

import datetime as dt
import os
import platform


def machine() -> dict:
    """Date, CPUs, architecture, host kernel, Python and whether /dev/kvm is usable."""
    kvm = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
            "machine": platform.machine(), "kernel": platform.release(), "python": platform.python_version(),
            "kvm_device": kvm}

