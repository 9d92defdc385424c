"""The golden image and the ONE ansible definition, for real: built from nothing, provisioned,
idempotent, and refusing a wrong kernel pin or a refused probe with a message that names the fix."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.image import build_image

ROOT = Path(__file__).resolve().parents[2]


def test_golden_manifest_and_provisioning_logs(golden, golden_manifest):
    m = golden_manifest
    assert m["kernel_release"] == "6.1.0-50-amd64"
    for key in ("kernel_path", "initrd_path", "admin_key_path"):
        assert Path(m[key]).exists(), key
    assert (golden / m["disk"]).exists() and (golden / m["grader_key"]).exists()
    first = build_image.parse_recap((golden / "provision.log").read_text())
    assert first["failed"] == 0 and first["changed"] > 0, first
    # the builder ran the playbook a second time on the provisioned VM: nothing changed
    second = build_image.parse_recap((golden / "provision-2.log").read_text())
    assert second == m["second_run_recap"]
    assert second["changed"] == 0 and second["failed"] == 0, second
    # the first boot printed the VM's host key on the console, where the runner pinned it
    assert "COPYLAB-HOSTKEY ssh-ed25519" in (golden / "first-boot.serial.log").read_text()


def test_base_image_builds_from_nothing(golden_build, progress, tmp_path):
    """This session's golden image was built from nothing, or (warm cache) a base is built now."""
    golden, built_this_session = golden_build
    base = Path(json.loads((golden / "manifest.json").read_text())["base"])
    built = json.loads((base / "manifest.json").read_text())
    from tests.vm.conftest import run_builder

    if not built_this_session:
        progress("the image came from the cache: building a base image from nothing into a new cache")
        r = run_builder(progress, "--stage", "base", env={"COPYLAB_CACHE": str(tmp_path / "cache")})
        assert r.returncode == 0, r.stdout[-3000:]
        fresh = next((tmp_path / "cache" / "images").glob("base-*/manifest.json"))
        built = json.loads(fresh.read_text())
        assert built["key"] == json.loads((base / "manifest.json").read_text())["key"]
    assert built["seconds"]["debootstrap"] > 0 and built["kernel_release"] == "6.1.0-50-amd64"


def _role_play(tmp_path: Path, tasks_from: str) -> Path:
    play = tmp_path / "play.yml"
    play.write_text(f"""---
- name: One part of the copylab_kernel role
  hosts: all
  become: true
  gather_facts: true
  tasks:
    - name: Include copylab_kernel {tasks_from}
      ansible.builtin.include_role:
        name: copylab_kernel
        tasks_from: {tasks_from}
""")
    return play


def _run_role_part(lab_vm, golden_manifest, tmp_path, tasks_from, **extra_vars):
    lab_vm.acquire()
    try:
        return build_image.playbook(
            host="127.0.0.1", port=lab_vm.vm.ssh_port, user="copylab",
            key=Path(golden_manifest["admin_key_path"]), known_hosts=lab_vm.vm.known_hosts,
            grader_pub=None, release=extra_vars.pop("release", "6.1.0-50-amd64"),
            logfile=tmp_path / "ansible.log", extra_vars=extra_vars, play=_role_play(tmp_path, tasks_from),
            timeout=900)
    finally:
        lab_vm.release(dirty=True)  # the VM is reset to its clean snapshot


def test_selftest_fails_with_its_message_on_a_refused_probe(lab_vm, golden_manifest, tmp_path):
    with pytest.raises(build_image.PlaybookFailed) as e:
        _run_role_part(lab_vm, golden_manifest, tmp_path, "selftest.yml",
                       copylab_kernel_probe_symbols=["copylab_no_such_function"])
    msg = str(e.value)
    assert "copylab_no_such_function" in msg, msg
    assert "kprobe" in msg.lower()


def test_selftest_passed_on_the_pinned_kernel(golden, lab_vm, admin_ssh):
    """The image build ran the self-test for real (module built, kprobes registered, unloaded)."""
    log = (golden / "provision.log").read_text()
    assert "TASK [copylab_kernel : Load the self-test module (registers the kprobes)]" in log
    lab_vm.acquire()
    stamp = admin_ssh("cat /var/lib/copylab/selftest.ok").stdout
    assert "6.1.0-50-amd64" in stamp and "_copy_from_iter" in stamp and "_copy_to_iter" in stamp
    assert admin_ssh("lsmod | grep -c probe_selftest || true").stdout.strip() == "0"


def test_unknown_kernel_release_names_the_variable(lab_vm, golden_manifest, tmp_path):
    with pytest.raises(build_image.PlaybookFailed) as e:
        _run_role_part(lab_vm, golden_manifest, tmp_path, "preflight.yml", release="6.1.0-99-amd64",
                       copylab_kernel_apt_cache_valid_time=10 ** 9)
    msg = str(e.value)
    assert "6.1.0-99-amd64" in msg and "copylab_kernel_release" in msg, msg
