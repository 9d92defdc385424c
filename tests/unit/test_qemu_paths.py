"""The QEMU monitor socket must fit a UNIX socket path (108 bytes), however deep the cache folder."""
from pathlib import Path

from grader.vm.qemu import ImageSpec, QemuVM


def vm_in(workdir: Path) -> QemuVM:
    img = ImageSpec(disk=Path("d.qcow2"), kernel=Path("k"), initrd=Path("i"), cmdline="")
    return QemuVM(image=img, workdir=workdir, name="golden")


def test_short_workdir_keeps_the_socket_next_to_the_overlay(tmp_path):
    assert vm_in(Path("/tmp/x")).monitor_path == Path("/tmp/x/golden.monitor")


def test_long_workdir_moves_the_socket_to_a_short_stable_path():
    deep = Path("/root/.cache/copylab/bench-cold-pjs07p7i/images/golden-amd64-6.1.0-50-amd64-c505d203b85f247f.tmp/vm")
    a, b = vm_in(deep), vm_in(deep)
    assert len(str(a.monitor_path)) < 100 and a.monitor_path == b.monitor_path
    assert a.monitor_path != vm_in(deep / "other").monitor_path


# --- who stopped QEMU: the guest, the runner, or someone else --------------------------------------
# A real process stands in for the QEMU binary: what is tested is how its end is told apart.

def _with_process(tmp_path: Path, script: str) -> QemuVM:
    import subprocess

    vm = vm_in(tmp_path)
    vm._stderr_path = tmp_path / "err"
    vm._stderr_path.write_text("")
    vm._proc = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                stderr=open(vm._stderr_path, "wb"))
    return vm


def test_a_signal_from_outside_is_not_the_guests_doing(tmp_path):
    import os
    import signal

    vm = _with_process(tmp_path, "sleep 30")
    assert vm.stopped_from_outside() is None           # still running
    os.kill(vm._proc.pid, signal.SIGKILL)
    vm._proc.wait(10)
    assert "killed by signal 9" in vm.stopped_from_outside()


def test_qemu_reporting_a_terminating_signal_is_from_outside(tmp_path):
    vm = _with_process(tmp_path, "echo 'qemu-system-x86_64: terminating on signal 15 from pid 4242 (bash)' >&2")
    vm._proc.wait(10)
    assert "terminating on signal 15" in vm.stopped_from_outside()


def test_the_guest_ending_qemu_or_the_runner_stopping_it_is_not(tmp_path):
    vm = _with_process(tmp_path, "exit 0")              # -no-reboot after a panic or a power-off
    vm._proc.wait(10)
    assert vm.stopped_from_outside() is None
    vm = _with_process(tmp_path, "sleep 30")
    vm.kill()                                           # the runner's own stop
    assert vm.stopped_from_outside() is None


def test_cleaning_up_after_an_outside_kill_keeps_the_reason(tmp_path):
    """The lab VM's reset fails on a dead QEMU and calls kill(): the reason must survive that."""
    import os
    import signal

    vm = _with_process(tmp_path, "sleep 30")
    os.kill(vm._proc.pid, signal.SIGKILL)
    vm._proc.wait(10)
    vm.kill()
    vm.stop()
    assert "killed by signal 9" in vm.stopped_from_outside()


def test_a_restart_does_not_erase_an_outside_kill_until_the_next_job(tmp_path, monkeypatch):
    """A reset after the kill starts a new QEMU from the snapshot: the job that was running still
    learns that its VM was killed from outside; the next job (forget_outside_stop) does not."""
    import os
    import signal

    vm = _with_process(tmp_path, "sleep 30")
    os.kill(vm._proc.pid, signal.SIGKILL)
    vm._proc.wait(10)
    monkeypatch.setattr(QemuVM, "_qemu_command", lambda self, port, loadvm, files: ["sleep", "30"])
    vm._launch(2222, "clean")                              # what loadvm() does when QEMU is gone
    try:
        assert vm.running()
        assert "killed by signal 9" in vm.stopped_from_outside()
        vm.forget_outside_stop()
        assert vm.stopped_from_outside() is None
    finally:
        vm.kill()


def test_a_qemu_still_dying_from_an_outside_kill_is_not_taken_as_the_runners_stop(tmp_path, monkeypatch):
    """Seen under load: the killed QEMU's monitor is already gone while the process still tears down,
    so loadvm() finds it "running", its monitor fails, and a kill() right then would count the stop
    as the runner's own. loadvm lets it end first; the reason survives the restart."""
    import threading

    # stands in for a QEMU that an operator's SIGKILL ends a moment after its monitor stopped answering
    vm = _with_process(tmp_path, "sleep 1; kill -9 $$")
    monkeypatch.setattr(QemuVM, "monitor", lambda self, cmd, timeout=30.0: (_ for _ in ()).throw(
        OSError("monitor socket closed")))
    started = threading.Event()

    def start(self, loadvm=None, wait=True):
        assert not self.running()
        self._outside = self._outside or self._outside_now()   # what _launch() records
        started.set()
    monkeypatch.setattr(QemuVM, "start", start)
    monkeypatch.setattr(QemuVM, "wait_ssh", lambda self, timeout: None)
    vm.loadvm("clean")
    assert started.is_set()
    assert "killed by signal 9" in (vm.stopped_from_outside() or ""), vm._proc.returncode


def test_qemu_outlives_the_thread_that_started_it(tmp_path, monkeypatch):
    """PR_SET_PDEATHSIG is per thread: a QEMU started from a short-lived thread (a reset in a grading
    thread) must live on after that thread ends, and die only with the process."""
    import threading
    import time

    vm = vm_in(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    monkeypatch.setattr(QemuVM, "_qemu_command", lambda self, port, loadvm, files: ["sleep", "30"])
    t = threading.Thread(target=vm._launch, args=(2222, None))
    t.start()
    t.join(10)
    time.sleep(0.5)
    try:
        assert vm.running(), "the child died with the thread that started it"
    finally:
        vm.kill()


def test_an_emulated_x86_guest_skips_the_boot_timer_check():
    """Under TCG on a loaded host the 8254 timer check at boot can fail and panic the guest; KVM guests
    and arm64 guests boot with the image's command line as it is."""
    from grader.vm.qemu import kernel_cmdline

    line = "root=/dev/vda rw console=ttyS0,115200 oops=panic panic=-1 quiet"
    assert kernel_cmdline(line, "x86_64", "tcg") == line + " no_timer_check"
    assert kernel_cmdline(line + " no_timer_check", "x86_64", "tcg").count("no_timer_check") == 1
    assert kernel_cmdline(line, "x86_64", "kvm") == line
    assert kernel_cmdline(line, "aarch64", "tcg") == line
