"""Every fact of a kernel profile (grader/profiles/<release>.toml) checked against a running lab VM.

`profile_mismatches(run, release)` returns one line per fact that does not hold, each naming the
release and the fact, so a wrong profile fails a test with what to fix instead of grading wrongly.
`run(command, input=None, timeout=...)` runs a shell command in the VM as its admin account (sudo).
"""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Callable

from grader.engine.profile import load_profile
from grader.engine.run import HELPER

ROOT = Path(__file__).resolve().parents[2]

Run = Callable[..., subprocess.CompletedProcess]

# offsetof() of every [offsets] key a profile may hold, under the field names of the kernel it runs
# on: 6.4 renamed iov_iter's iov to __iov (iter_iov()); ubuf exists from 6.0 (ITER_UBUF)
OFFSETS_C = r"""// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/skbuff.h>
#include <linux/socket.h>
#include <linux/uio.h>
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define IOV_FIELD __iov
#else
#define IOV_FIELD iov
#endif
static int __init offs_init(void)
{
	pr_info("copylab-offsets: iov_iter_iov_offset=%zu iov_iter_iov=%zu msghdr_msg_iter=%zu sk_buff_data=%zu\n",
		offsetof(struct iov_iter, iov_offset), offsetof(struct iov_iter, IOV_FIELD),
		offsetof(struct msghdr, msg_iter), offsetof(struct sk_buff, data));
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 0, 0)
	pr_info("copylab-offsets: iov_iter_ubuf=%zu\n", offsetof(struct iov_iter, ubuf));
#endif
	return -EAGAIN;
}
module_init(offs_init);
MODULE_LICENSE("GPL");
"""


def load(release: str) -> dict:
    return tomllib.loads((ROOT / "grader" / "profiles" / f"{release}.toml").read_text())


def running_offsets(run: Run, release: str) -> dict[str, int]:
    """The offsets as the VM's own headers compile them (a module that prints and refuses to load)."""
    script = ("set -e; d=$(mktemp -d); cd $d; cat > offs.c; echo 'obj-m := offs.o' > Kbuild; "
              f"make -s -C /lib/modules/{release}/build M=$d modules >/dev/null; "
              "sudo dmesg -C; sudo insmod offs.ko 2>/dev/null || true; sudo dmesg | grep copylab-offsets:; "
              "rm -rf $d")
    r = run(script, input=OFFSETS_C, timeout=600)
    assert r.returncode == 0 and "copylab-offsets:" in r.stdout, r.stdout + r.stderr
    seen: dict[str, int] = {}
    for line in r.stdout.splitlines():
        for kv in line.split("copylab-offsets:", 1)[-1].split():
            key, value = kv.split("=")
            seen[key] = int(value)
    return seen


def profile_mismatches(run: Run, release: str) -> list[str]:
    profile = load(release)
    bad: list[str] = []
    r = run("uname -r; uname -m")
    running, machine = r.stdout.split()
    if running != release:
        return [f"{release}: the VM runs {running}, not the profile's release"]
    if machine != profile["arch"]:
        bad.append(f"{release}: arch is {profile['arch']} in the profile, {machine} in the VM")

    seen = running_offsets(run, release)
    for key, value in profile["offsets"].items():
        if seen.get(key) != value:
            bad.append(f"{release}: offset {key} is {value} in the profile, {seen.get(key)} in the kernel")

    facts = profile.get("facts", {})
    inlined, notrace = set(facts.get("inlined", [])), set(facts.get("notrace", []))
    names = sorted(set(profile["symbols"].values()) | inlined | notrace)
    # one pass over kallsyms and the ftrace list: "<name> <in kallsyms> <traceable>"
    r = run("for s in " + " ".join(names) + "; do "
            "k=no; sudo grep -qE \" $s( |$)\" /proc/kallsyms && k=yes; "
            "t=no; sudo grep -qE \"^$s( |$)\" /sys/kernel/tracing/available_filter_functions && t=yes; "
            "echo \"$s $k $t\"; done", timeout=300)
    found = {name: (k == "yes", t == "yes") for name, k, t in (ln.split() for ln in r.stdout.splitlines())}
    for key, name in profile["symbols"].items():
        if name not in inlined and not found[name][0]:
            bad.append(f"{release}: symbol {key} = {name} is not in /proc/kallsyms")
    for name in inlined:
        if found[name][0]:
            bad.append(f"{release}: {name} is listed as inlined but is in /proc/kallsyms")
    for name in notrace:
        if not found[name][0] or found[name][1]:
            bad.append(f"{release}: {name} is listed as notrace but is "
                       + ("not in /proc/kallsyms" if not found[name][0] else "traceable (available_filter_functions)"))

    # the independent trace's kprobe events: the VM's grader helper defines them from its installed
    # profile, which must be this one, and the kernel must accept every one of them
    r = run(f"sudo {HELPER} trace-start factcheck && sudo {HELPER} trace-stop factcheck >/dev/null")
    if r.returncode != 0:
        bad.append(f"{release}: tracefs refuses the profile's events: {(r.stderr or r.stdout).strip()}")
    else:
        defined, want = set(r.stdout.splitlines()), set(load_profile(release).kprobe_events().values())
        if defined != want:
            bad.append(f"{release}: the VM's installed profile defines {sorted(defined - want)}, "
                       f"this one {sorted(want - defined)}")
    return bad

