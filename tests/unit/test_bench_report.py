"""The benchmark report: every figure with its target and whether it is met (bench/__main__.py)."""
from __future__ import annotations

import json

from bench.__main__ import markdown, rows_for

RESULT = {
    "machine": {"date": "2026-11-25 17:00 UTC", "cpus": 2, "machine": "x86_64", "kernel": "6.1", "python": "3.11",
                "kvm_device": False},
    "floor": {"accel": "tcg", "pairs": [{"ratio": 1.05}, {"ratio": 1.2}], "ratio_median": 1.12,
              "grader_median_s": 90.0, "floor_median_s": 80.0, "reset_s": [1.9, 2.1, 2.2], "reset_median_s": 2.1,
              "grader_phases_median_s": {"build": 60.0}, "floor_steps_median_s": {"build": 58.0}},
    "burst": {"submissions": 1000, "window_s": 60, "p50_ms": 30, "p99_ms": 120, "max_ms": 300, "lost": 0,
              "accepted": 1000, "stored_intact": 1000, "submissions_with_one_job": 1000,
              "queue_messages_for_queued_jobs": 1000},
    "scaling": {"replayed_seconds_per_job": 74, "time_scale": 0.05,
                "rows": [{"slots": 1, "jobs_per_minute_real_time": 0.8, "efficiency": 1.0},
                         {"slots": 2, "jobs_per_minute_real_time": 1.5, "efficiency": 0.94},
                         {"slots": 4, "jobs_per_minute_real_time": 2.8, "efficiency": 0.875}]},
    "provisioning": {"cold": {"measured": True, "wall_s": 900, "base_s": {"total": 230}, "golden_s": {"total": 670, "provision_again": 124},
                              "second_run_recap": {"changed": 0}},
                     "rerun": {"seconds": 124.0, "recap": {"changed": 0}}},
}


def test_every_figure_has_its_verdict():
    rows = {fig.split(" (")[0].split(":")[0]: met for fig, _v, _t, met in rows_for(RESULT)}
    assert rows["grading run vs floor, median ratio b/a"] is False
    assert rows["VM reset"] is False
    assert rows["deadline burst"] is True
    assert rows["pool scaling"] is False            # the 4-slot row (0.875) is the last one of that name
    assert rows["playbook re-run on a provisioned VM"] is False      # 124 s
    assert rows["first playbook run on a new VM from the golden image"] is None
    md = markdown(RESULT)
    assert "lab VMs under **TCG** (no usable /dev/kvm)" in md
    assert md.count("| **no** |") == 4 and "| yes |" in md


def test_sandbox_build_rows():
    floor = dict(RESULT["floor"], ratio_median=0.42, grader_median_s=30.0, build_place="sandbox",
                 grader_vm_build_median_s=90.0, build_in_vm_median_s=58.0, build_in_sandbox_median_s=5.5)
    rows = {fig.split(":")[0].split(" (")[0]: (val, met) for fig, val, _t, met in rows_for(dict(RESULT, floor=floor))}
    assert rows["grading run vs floor, median ratio b/a"][1] is True
    assert rows["grading runs per VM per hour"] == ("40 / 120", None)
    assert rows["module build phase, median"] == ("58.0 s / 5.5 s", None)


def test_the_report_goes_to_the_results_files_only(tmp_path, monkeypatch):
    """latest.md is rendered from latest.json into bench/results, which the docs link; README.md is
    not written."""
    import bench.__main__ as bench

    results = tmp_path / "results"
    results.mkdir()
    (results / "latest.json").write_text(json.dumps(RESULT))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nb\n")
    monkeypatch.setattr(bench, "REPO", tmp_path)
    monkeypatch.setattr(bench, "RESULTS", results)
    assert bench.main(["--report-only"]) == 0
    assert (results / "latest.md").read_text() == markdown(RESULT)
    assert readme.read_text() == "a\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nb\n"
