"""The message path of tests/vm/kernel_facts.py: a profile fact that the running kernel contradicts is
reported as one line naming the release and the fact (the VM tests assert the list is empty, so a wrong
profile stops CI with what to fix instead of reaching a grade). The VM is replaced by recorded answers."""
from __future__ import annotations

import subprocess

from grader.engine.profile import load_profile
from tests.vm.kernel_facts import load, profile_mismatches

RELEASE = "6.12.117+deb13-amd64"


def kernel(release=RELEASE, machine="x86_64", offsets=None, kallsyms=None, traceable=(), tracefs_error=None):
    """A stand-in for the VM's admin shell: answers the commands profile_mismatches sends."""
    prof = load(RELEASE)
    offsets = {**prof["offsets"], **(offsets or {})}
    names = set(prof["symbols"].values()) | set(prof["facts"]["inlined"]) | set(prof["facts"]["notrace"])
    in_kallsyms = set(kallsyms) if kallsyms is not None else names - set(prof["facts"]["inlined"])

    def run(command, input=None, timeout=None):
        if command.startswith("uname"):
            out, rc = f"{release}\n{machine}\n", 0
        elif "copylab-offsets" in command:
            out, rc = "copylab-offsets: " + " ".join(f"{k}={v}" for k, v in offsets.items()) + "\n", 0
        elif "kallsyms" in command:
            out, rc = "".join(f"{n} {'yes' if n in in_kallsyms else 'no'} {'yes' if n in traceable else 'no'}\n"
                              for n in sorted(names)), 0
        elif "trace-start" in command:
            out, rc = ("", 1) if tracefs_error else ("\n".join(load_profile(RELEASE).kprobe_events().values()), 0)
        else:
            raise AssertionError(f"unexpected command {command!r}")
        return subprocess.CompletedProcess(command, rc, out, tracefs_error or "")
    return run


def test_a_profile_that_matches_reports_nothing():
    assert profile_mismatches(kernel(), RELEASE) == []


def test_each_contradicted_fact_is_named_with_the_release():
    bad = profile_mismatches(kernel(offsets={"iov_iter_ubuf": 24}, kallsyms={"_copy_from_iter", "copy_linear_skb"},
                                    traceable={"_copy_from_iter"},
                                    tracefs_error="sh: write error: Invalid argument"), RELEASE)
    want = [
        f"{RELEASE}: offset iov_iter_ubuf is 16 in the profile, 24 in the kernel",
        f"{RELEASE}: symbol copy_to = _copy_to_iter is not in /proc/kallsyms",
        f"{RELEASE}: copy_linear_skb is listed as inlined but is in /proc/kallsyms",
        f"{RELEASE}: _copy_from_iter is listed as notrace but is traceable (available_filter_functions)",
        f"{RELEASE}: _copy_to_iter is listed as notrace but is not in /proc/kallsyms",
        f"{RELEASE}: tracefs refuses the profile's events: sh: write error: Invalid argument",
    ]
    for line in want:
        assert line in bad, (line, bad)


def test_a_vm_running_another_kernel_is_named_before_any_fact():
    assert profile_mismatches(kernel(release="6.12.118+deb13-amd64"), RELEASE) == [
        f"{RELEASE}: the VM runs 6.12.118+deb13-amd64, not the profile's release"]
