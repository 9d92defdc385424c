"""`python -m grader grade --suite`: the Debian release (kernel) of the lab VM a one-off grading runs on."""
from __future__ import annotations

import pytest

from grader.__main__ import SUITE_CHOICES, main
from grader.kit import suite_kernels

REPO_LAB1_SOLUTION = "labs/lab1/solution"


def test_the_cli_offers_the_releases_the_lab_vms_are_built_for():
    assert SUITE_CHOICES == tuple(suite_kernels())


def test_a_release_without_a_cached_image_is_named_with_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COPYLAB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["grade", "lab1", REPO_LAB1_SOLUTION, "--suite", "trixie", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "no trixie golden lab-VM image (amd64)" in err and "make image COPYLAB_SUITE=trixie" in err, err


def test_suite_goes_with_the_cached_golden_image_only(tmp_path, capsys):
    assert main(["grade", "lab1", REPO_LAB1_SOLUTION, "--suite", "trixie", "--vm", "ssh://grader@127.0.0.1:2222",
                 "--known-hosts", str(tmp_path / "kh"), "--key", str(tmp_path / "key")]) == 1
    assert "--suite trixie chooses a cached golden image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["grade", "lab1", REPO_LAB1_SOLUTION, "--suite", "sid"])
    assert e.value.code == 2
