"""Two Debian releases of lab VMs (bookworm: kernel 6.1, trixie: 6.12) from one image builder: which
image a grader takes, and what the builder refuses before any work."""
from __future__ import annotations

import json
import os
import time

import pytest

from grader.errors import VMError
from grader.vm.labvm import find_golden


def golden(cache, name, manifest, age):
    folder = cache / name
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    t = time.time() - age
    os.utime(folder / "manifest.json", (t, t))
    return folder


def test_find_golden_takes_the_newest_image_of_the_asked_release(tmp_path):
    older_12 = golden(tmp_path, "golden-amd64-6.1.0-50-amd64-a", {"arch": "amd64"}, 300)  # no suite: bookworm
    newer_12 = golden(tmp_path, "golden-amd64-6.1.0-50-amd64-b", {"arch": "amd64", "suite": "bookworm"}, 200)
    newest_13 = golden(tmp_path, "golden-amd64-6.12.117+deb13-amd64-c", {"arch": "amd64", "suite": "trixie"}, 100)
    assert find_golden(cache=tmp_path) == newer_12           # the default stays Debian 12
    assert find_golden(cache=tmp_path, suite="trixie") == newest_13
    newer_12.joinpath("manifest.json").unlink()
    assert find_golden(cache=tmp_path, suite="bookworm") == older_12
    with pytest.raises(VMError, match="no trixie golden lab-VM image .arm64.*COPYLAB_SUITE=trixie"):
        find_golden("arm64", cache=tmp_path, suite="trixie")


def test_the_builder_names_a_release_with_no_kernel_pinned_for_the_architecture(capsys, monkeypatch):
    from provision.image import build_image

    monkeypatch.delenv("COPYLAB_KERNEL_RELEASE", raising=False)
    assert build_image.main(["--suite", "trixie", "--arch", "arm64"]) == 2
    err = capsys.readouterr().err
    assert "no arm64 kernel is pinned for trixie" in err and "COPYLAB_KERNEL_RELEASE" in err


def test_the_golden_key_covers_every_grader_file_provisioning_installs_in_the_vm():
    import yaml
    from provision.image import build_image

    defaults = yaml.safe_load((build_image.REPO / "provision/roles/copylab_lab/defaults/main.yml").read_text())
    inputs = set(build_image.golden_inputs())
    for name in defaults["copylab_lab_engine_files"] + defaults["copylab_lab_engine_trees"]:
        assert build_image.REPO / "grader" / name in inputs, name


def test_the_builder_names_a_kernel_release_the_mirror_does_not_have(tmp_path, capsys, monkeypatch):
    """debootstrap's refusal of the pinned kernel package (a release the mirror has dropped) becomes one
    line naming the release, the suite and what to change, and nothing is left in the cache."""
    import stat

    from provision.image import build_image

    monkeypatch.setattr(build_image.os, "geteuid", lambda: 0)    # root only for the real debootstrap
    gone = "6.12.99+deb13-amd64"
    fake = tmp_path / "bin" / "debootstrap"
    fake.parent.mkdir()
    # what debootstrap prints when a package of --include is not in the suite's index
    fake.write_text(f"#!/bin/sh\necho 'E: Couldn'\"'\"'t find these debs: linux-image-{gone} linux-headers-{gone}'\n"
                    "exit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("COPYLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COPYLAB_APT_MIRROR", "http://deb.debian.org/debian")   # never contacted: debootstrap is the fake
    assert build_image.main(["--suite", "trixie", "--kernel-release", gone, "--stage", "base"]) == 1
    err = capsys.readouterr().err
    assert f"kernel release {gone} is not in trixie on the configured mirror (linux-image-{gone} not found)" in err, err
    assert "COPYLAB_KERNEL_RELEASE" in err
    assert not [p for p in (tmp_path / "cache" / "images").iterdir() if p.is_dir()]


def test_the_image_cache_is_closed_to_other_accounts_wherever_it_points(tmp_path, monkeypatch):
    from provision.image import build_image

    monkeypatch.setenv("COPYLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "images").mkdir(parents=True, mode=0o755)
    with build_image.Stage(build_image.cache_root() / "golden-test"):
        pass
    assert (build_image.cache_root().stat().st_mode & 0o777) == 0o700
