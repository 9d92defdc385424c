"""What the QEMU runner reads as a guest crash on the serial console."""
from __future__ import annotations

import pytest

from grader.vm.qemu import CRASH_RE

OOPS = "BUG: kernel NULL pointer dereference, address: 0000000000000000\n#PF: supervisor read access"
STALL = ("rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
         "rcu:     (detected by 0, t=21002 jiffies, g=14113, q=12 ncpus=1)")
LOCKUP = "watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [kworker/0:1:31]"


@pytest.mark.parametrize("text, crash", [
    (OOPS, "BUG: kernel NULL pointer dereference, address: 0000000000000000"),
    ("Oops: 0000 [#1] PREEMPT SMP NOPTI", "Oops: 0000 [#1] PREEMPT SMP NOPTI"),
    ("Kernel panic - not syncing: Fatal exception", "Kernel panic - not syncing: Fatal exception"),
    ("general protection fault, probably for non-canonical address",
     "general protection fault, probably for non-canonical address"),
])
def test_oopses_and_panics_are_crashes(text, crash):
    m = CRASH_RE.search("[   12.0] ok\n" + text)
    assert m and m.group(0) == crash


@pytest.mark.parametrize("text", [STALL, LOCKUP])
def test_watchdog_warnings_of_a_starved_vcpu_are_no_crash(text):
    assert CRASH_RE.search(text) is None
    # the oops that may follow a real lockup is still found
    assert CRASH_RE.search(text + "\n" + OOPS).group(0).startswith("BUG: kernel NULL pointer")
