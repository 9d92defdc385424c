"""Part ``hostkey``: a grading VM whose SSH host key changed is refused with a clear message, never graded.

A lab VM boots from the golden image and its key is pinned from the console, as always. Then its
identity changes the way a rebuilt or swapped VM's does: as the image's admin, a new ed25519 host key
replaces the old one, sshd restarts, and the clean snapshot is saved again with the new key. The
solution is then graded on it through the engine, and the worker's rule decides what the service
would do with that run.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from faults.report import Figure, zero

REPO = Path(__file__).resolve().parents[1]
NEW_KEY = ("sudo rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && "
           "sudo ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && "
           "sudo systemctl restart ssh && sudo cat /etc/ssh/ssh_host_ed25519_key.pub")


def measure(golden: Path, progress=print) -> dict:
    from grader.engine.labspec import load_lab
    from grader.engine.phases import SUBMISSION_PHASES, RunOutcome
    from grader.engine.run import grade
    from grader.ssh import SSHConnection
    from grader.vm.labvm import QemuLabVM

    gm = json.loads((golden / "manifest.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="copylab-faults-hostkey-"))
    try:
        vm = QemuLabVM(golden=golden, workdir=tmp / "vm", name="hostkey", progress=progress)
        with vm:
            vm.prepare()
            old = vm.vm.hostkey
            with SSHConnection(host="127.0.0.1", port=vm.vm.ssh_port, user=gm["admin_user"],
                               key_path=gm["admin_key_path"], known_hosts=vm.vm.known_hosts) as admin:
                r = admin.run(NEW_KEY, timeout=120)
            if r.exit_code != 0:
                raise RuntimeError(f"could not change the VM's host key: {r.stdout}{r.stderr}")
            vm.vm.savevm("clean")
            progress("hostkey: the VM's host key changed; grading the solution on it")
            lab = load_lab("lab1", REPO / "labs")
            result = grade(lab, vm, REPO / "labs" / "lab1" / "solution", tmp / "out").result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    phases = {p["name"]: p for p in result["phases"]}
    verify = phases.get("verify", {})
    detail = verify.get("detail") or ""
    ran = [n for n in SUBMISSION_PHASES if phases.get(n, {}).get("status") not in (None, "skipped")]
    why = RunOutcome.of_result(result).grader_failure
    clear = verify.get("status") == "failed" and "host key" in detail and "does not match" in detail
    figures = [
        Figure("hostkey", "a VM whose host key changed is refused before anything runs, with a clear message",
               "refused" if clear and not ran else "NOT refused", "refused", clear and not ran,
               detail[:300]).as_dict(),
        zero("hostkey", "submission phases run on that VM (upload, build, load, run)", len(ran),
             ", ".join(ran)).as_dict(),
        Figure("hostkey", "the service treats that run as an infrastructure failure (retried, never scored)",
               "yes" if why else "no", "yes", bool(why), why or "").as_dict(),
    ]
    return {"figures": figures, "accel": result["environment"].get("accel"), "old_key": old, "new_key": r.stdout.strip().split("\n")[-1][:120],
            "verify": verify}
