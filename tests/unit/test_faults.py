"""The fault suite's own pieces (no VM): its hostile submissions build against the pinned headers,
outcomes are classified as the report says, and the report has one figure per line."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from faults import submissions as subs
from faults.report import Figure, markdown, ratio, zero
from grader.engine.phases import PHASE_NAMES

REPO = Path(__file__).resolve().parents[2]
KDIR = Path(os.environ.get("COPYLAB_KDIR", "/usr/src/linux-headers-6.1.0-50-amd64"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", subs.FAULTS, ids=lambda f: f.name)
def test_fault_submission_builds(fault, tmp_path):
    """Each fault is a real submission: it applies to today's solution and builds with the lab's
    Makefile against the pinned 6.1 headers (the suite must fail at run time, not at build time)."""
    assert (KDIR / "Makefile").is_file(), f"no kernel headers at {KDIR}: run `make deps`"
    texts = subs.texts(fault)
    assert texts != subs.texts(None)
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    for name in ("Makefile", "Kbuild"):
        shutil.copy(REPO / "labs" / "lab1" / name, tmp_path / name)
    r = subprocess.run(["make", "-C", str(tmp_path), f"KDIR={KDIR}"], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error:" not in r.stderr


def _result(score=100, verdict=None, **status):
    phases = [{"name": n, "status": status.get(n, "ok"), "detail": ""} for n in PHASE_NAMES]
    return {"score": score, "max_score": 100, "verdict": verdict, "phases": phases}


@pytest.mark.parametrize("result, expected", [
    (_result(), "pass"),
    (_result(score=85), "checks"),
    (_result(score=30, verdict="kernel crashed during run", run="failed"), "crash"),
    (_result(score=10, run="timeout"), "timeout:run"),
    (_result(score=95, unload="timeout"), "timeout:unload"),
    (_result(score=95, release="failed"), "checks"),   # release is the grader's, not a verdict
])
def test_outcome(result, expected):
    assert subs.outcome(result) == expected


def test_every_fault_names_what_counts_as_recognised():
    names = [f.name for f in subs.FAULTS]
    assert len(names) == len(set(names))
    assert {f.part for f in subs.FAULTS} == {"kernel", "user"}
    for f in subs.FAULTS:
        assert f.expect and all(e == "crash" or e in ("pass", "checks") or ":" in e for e in f.expect), f


def test_report_one_figure_per_line():
    result = {"machine": {"date": "2026-11-25 19:00 UTC", "cpus": 2, "machine": "x86_64", "kernel": "6.1"},
              "accel": "tcg", "wall_s": 600,
              "pool": {"figures": [ratio("kernel", "crashes detected", 5, 6, "deadlock got pass").as_dict(),
                                   zero("restarts", "submissions lost", 0).as_dict()]},
              "hostkey": {"error": "RuntimeError: boom", "figures": []},
              "uploads": {"figures": [Figure("uploads", "cases", "2000", "", None).as_dict()]}}
    md = markdown(result, ["pool", "uploads", "hostkey"])
    lines = md.splitlines()
    assert lines[0].startswith("Last run: 2026-11-25") and "TCG" in lines[0] and "10.0 min" in lines[0]
    assert "- kernel: crashes detected: **5/6** (target 6/6) **OFF TARGET**; deadlock got pass" in lines
    assert "- restarts: submissions lost: **0** (target 0) ok" in lines
    assert "- uploads: cases: **2000**" in lines
    assert "- hostkey: **did not finish**: RuntimeError: boom" in lines


def test_the_report_goes_to_the_results_files_only(tmp_path, monkeypatch):
    """The suite writes faults/results/latest.{json,md}, which the docs link; README.md is not
    written (a stand-in part: the real ones need a service or VMs)."""
    import json

    import faults.__main__ as suite
    from faults import access

    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- faults:begin -->\nold\n<!-- faults:end -->\nb\n")
    monkeypatch.setattr(suite, "REPO", tmp_path)
    monkeypatch.setattr(suite, "RESULTS", tmp_path / "results")
    figure = zero("access", "unauthorised reads", 0).as_dict()
    monkeypatch.setattr(access, "measure", lambda progress: {"figures": [figure]})
    assert suite.main(["--only", "access"]) == 0
    md = (tmp_path / "results" / "latest.md").read_text()
    assert md.startswith("Last run: ") and "- access: unauthorised reads: **0** (target 0) ok" in md.splitlines()
    assert json.loads((tmp_path / "results" / "latest.json").read_text())["access"]["figures"][0]["value"] == "0"
    assert not (tmp_path / "results" / "partial.json").exists()
    assert readme.read_text() == "a\n<!-- faults:begin -->\nold\n<!-- faults:end -->\nb\n"


def test_an_empty_ratio_is_never_met():
    assert ratio("kernel", "x", 0, 0).met is False


def _isolation_observed(**changes):
    from faults.isolation import fx

    refused = {name: "1" for name in fx.ESCALATIONS}
    obs = {"escalate": {"sender": dict(refused, user="copylab-run"), "receiver": dict(refused, user="copylab-run")},
           "read_earlier": {"earlier-files": "0", "earlier-processes": "0"}, "left_started": "1",
           "leftovers_after_each_job": [],
           "fill_disk": {"passed": False, "run_status": "failed", "free": 1000,
                         "run_detail": "receiver.rc, the receiver's exit status, is empty"}}
    obs.update(changes)
    return obs


def test_isolation_figures_on_target_when_nothing_gets_through():
    from faults.isolation import figures

    figs = figures(_isolation_observed())
    assert [f["value"] for f in figs] == ["0", "0", "0", "0"]
    assert all(f["met"] for f in figs)
    assert "ran as copylab-run" in figs[0]["note"]


def test_isolation_figures_count_what_got_through():
    from faults.isolation import figures, fx

    sender = {name: "1" for name in fx.ESCALATIONS}
    sender.update(sudo_root="0", user="grader")
    figs = figures(_isolation_observed(
        escalate={"sender": sender, "receiver": {"user": "grader"}},   # the receiver reported nothing
        read_earlier={"earlier-files": "3", "earlier-processes": "1"},
        leftovers_after_each_job=["process 812 /var/tmp/copylab-left-sleeper 100000", "run-folder /home/grader/runs/x"],
        fill_disk={"passed": True, "run_status": "ok", "run_detail": "", "free": 0}))
    assert [f["value"] for f in figs] == ["2", "4", "2", "1"]
    assert not any(f["met"] for f in figs)
