"""grader/buildbox.py without a build root: when the build stays in the VM and why, and the failure
reasons (the sandbox itself runs in tests/vm/test_buildbox.py against the image's real build root)."""
from __future__ import annotations

import json

import pytest

from grader import buildbox
from grader.buildbox import BuildOutcome, error_line


def golden(tmp_path, arch):
    g = tmp_path / f"golden-{arch}-6.1.0-50-{arch}-abc"
    g.mkdir()
    (g / "manifest.json").write_text(json.dumps({"arch": arch, "kernel_release": f"6.1.0-50-{arch}",
                                                 "key": "abc"}))
    return g


def test_operator_choice_keeps_the_build_in_the_vm(tmp_path, monkeypatch):
    monkeypatch.setenv("COPYLAB_BUILD", "vm")
    assert buildbox.for_golden(golden(tmp_path, buildbox.host_arch())) == \
        (None, "the operator's choice (COPYLAB_BUILD=vm)")


def test_another_architecture_has_no_cross_toolchain(tmp_path, monkeypatch):
    monkeypatch.delenv("COPYLAB_BUILD", raising=False)
    other = "arm64" if buildbox.host_arch() == "amd64" else "amd64"
    builder, why = buildbox.for_golden(golden(tmp_path, other))
    assert builder is None and "no cross toolchain" in why


def test_a_build_root_of_another_golden_image_is_not_used(tmp_path, monkeypatch):
    monkeypatch.delenv("COPYLAB_BUILD", raising=False)
    g = golden(tmp_path, buildbox.host_arch())
    stale = tmp_path / f"buildroot-{buildbox.host_arch()}-6.1.0-50-{buildbox.host_arch()}-old"
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"golden_key": "older"}))
    builder, why = buildbox.for_golden(g)
    assert builder is None and "no build root for " + g.name in why


@pytest.mark.parametrize("outcome, reason", [
    (BuildOutcome(log="", exit_code=None, timed_out=True, timeout=240), "the build did not finish within 240s"),
    (BuildOutcome(log="", exit_code=-9, problem="build output over 10 bytes"),
     "the build sandbox stopped the build: build output over 10 bytes"),
    (BuildOutcome(log="x.c:1:10: fatal error: /etc/shadow: No such file or directory\n"
                      "make: *** [Makefile:29: sender] Error 1\n", exit_code=2),
     "the build command exited 2: x.c:1:10: fatal error: /etc/shadow: No such file or directory"),
    (BuildOutcome(log="", exit_code=0, missing=["copytrace.ko"]), "missing copytrace.ko"),
    (BuildOutcome(log="ok\n", exit_code=0), None),
])
def test_failure_reasons_name_the_cause(outcome, reason):
    assert outcome.reason() == reason


def test_error_line_skips_makes_own_summary():
    assert error_line("make[1]: *** Error 2\nmake: *** [Makefile:36: module] Error 2\n") is None
