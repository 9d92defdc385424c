"""The fault part ``qemusandbox`` at its smallest (the whole part needs a VM pool: `python -m faults --only
qemusandbox`): its sampler against real processes, a sandboxed QEMU as the VM account beside an unconfined
stand-in, and the figures it derives."""
from __future__ import annotations

import os
import subprocess
import time

from faults.qemusandbox import PLAN, Sampler, figures
from grader.vm.qemu import SANDBOX, QemuFiles, qemu_account, spawn_qemu


def off_target(figs: list[dict]) -> list[dict]:
    return [f for f in figs if f["met"] is False]


def test_the_sampler_tells_a_confined_qemu_from_an_unconfined_process():
    account = qemu_account()
    qemu = spawn_qemu(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
                       "-sandbox", SANDBOX], QemuFiles(), account,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plain = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(1)   # QEMU installs its filter while it starts
        sampler = Sampler(lambda: [qemu.pid, plain.pid], interval=0.1)
        sampler.start()
        time.sleep(0.5)
        sampler.stop()
        assert sampler.seen[qemu.pid]["seccomp"] == 2 and sampler.seen[qemu.pid]["uid"] == account.uid
        assert sampler.seen[plain.pid]["seccomp"] == 0
        good = [(label, want, want) for label, _f, want in PLAN]
        figs = {f["name"]: f for f in figures(sampler.seen, account, good, [], 0)}
        unsandboxed = figs["QEMU processes of the pool without the seccomp sandbox"]
        assert unsandboxed["value"] == "1" and unsandboxed["met"] is False
        if account.switched:
            wrong = figs[f"QEMU processes not running as the VM account ({account.name})"]
            assert wrong["value"] == "1" and wrong["met"] is False
            assert os.geteuid() == 0 != account.uid
        only_qemu = {qemu.pid: sampler.seen[qemu.pid]}
        env = {"sandbox": True, "seccomp": 2, "uid": account.uid}
        assert off_target(figures(only_qemu, account, good, [env, env, env], 0)) == []
    finally:
        for p in (qemu, plain):
            p.kill()
            p.wait(10)


def test_wrong_outcomes_missing_reports_and_leaks_are_off_target():
    account = qemu_account()
    confined = {1: {"seccomp": 2, "uid": account.uid, "user": account.name}}
    outcomes = [("solution", "pass", "pass"), ("panic", "crash", "pass"), ("solution after the panic", "pass", "pass")]
    figs = {f["name"].split(" (")[0]: f for f in figures(confined, account, outcomes, [None], 1)}
    assert figs["hand-ins with the expected outcome under the sandbox"]["value"] == "2/3"
    assert "panic: pass" in figs["hand-ins with the expected outcome under the sandbox"]["note"]
    assert figs["results whose environment reports the sandbox"]["met"] is False
    assert figs["QEMU processes left after the service stopped"]["met"] is False
    # nothing seen is never a pass
    assert figures({}, account, outcomes, [], 0)[0]["met"] is False
