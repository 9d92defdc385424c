import socket
import subprocess
import threading
import time

import pytest

from grader.errors import AuthFailed, ConnectError, ConnectTimeout, HostKeyMismatch
from grader.executor import CommandResult

pytestmark = [pytest.mark.sshd, pytest.mark.timeout(120)]


def test_pinned_key_accepted_and_command_result(sshd):
    with sshd.connection() as ssh:
        r = ssh.run("echo out; echo err >&2; exit 3", timeout=10)
    assert isinstance(r, CommandResult)
    assert r.exit_code == 3 and r.stdout == "out\n" and r.stderr == "err\n"
    assert not r.timed_out and not r.truncated and r.duration > 0


def test_stdin_is_delivered(sshd):
    with sshd.connection() as ssh:
        r = ssh.run("tr a-z A-Z", timeout=10, stdin="hello\n")
        assert r.stdout == "HELLO\n"
        # without stdin the remote sees EOF at once instead of waiting
        assert ssh.run("cat", timeout=5).stdout == ""


def test_wrong_host_key_refused(sshd, tmp_path):
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pub = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {pub}\n")
    with pytest.raises(HostKeyMismatch) as e:
        sshd.connection(known_hosts=kh).connect()
    assert f"127.0.0.1:{sshd.port}" in str(e.value) and str(kh) in str(e.value)
    assert kh.read_text() == f"[127.0.0.1]:{sshd.port} {pub}\n"


def test_unknown_host_key_refused_never_added(sshd, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    with pytest.raises(HostKeyMismatch) as e:
        sshd.connection(known_hosts=kh).connect()
    assert f"127.0.0.1:{sshd.port}" in str(e.value) and "not pinned" in str(e.value)
    assert kh.read_text() == ""


def test_wrong_client_key_auth_failed(sshd, tmp_path):
    k = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    with pytest.raises(AuthFailed):
        sshd.connection(key_path=k).connect()


def test_output_capped_without_blocking(sshd):
    with sshd.connection() as ssh:
        # 50 MB on stdout and 5 MB on stderr; only 1000 bytes each are kept
        r = ssh.run("head -c 50000000 /dev/zero | tr '\\0' x; head -c 5000000 /dev/zero >&2; "
                    "echo done >&2; exit 7", timeout=60, max_output=1000)
    assert r.exit_code == 7 and not r.timed_out
    assert r.truncated and len(r.stdout) == 1000 and set(r.stdout) == {"x"}
    assert len(r.stderr) == 1000


def test_timeout_kills_remote(sshd):
    with sshd.connection() as ssh:
        t0 = time.monotonic()
        r = ssh.run("sleep 61.25; echo never", timeout=1)
        assert time.monotonic() - t0 < 5
        assert r.timed_out and r.exit_code is None and "never" not in r.stdout
        # the connection stays usable
        assert ssh.run("echo again", timeout=10).stdout == "again\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", "sleep 61.25"], capture_output=True).returncode != 0:
            break
        time.sleep(0.3)
    else:
        pytest.fail("remote sleep survived the timeout")


def test_put_get_write_text(sshd, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    with sshd.connection() as ssh:
        ssh.put(src, str(remote_dir / "a.bin"), mode=0o750)
        ssh.write_text(str(remote_dir / "t.txt"), "héllo\n")
        ssh.get(str(remote_dir / "t.txt"), tmp_path / "back.txt")
        r = ssh.run(f"stat -c %a {remote_dir}/a.bin", timeout=10)
    assert (remote_dir / "a.bin").read_bytes() == src.read_bytes()
    assert r.stdout.strip() == "750"
    assert (tmp_path / "back.txt").read_text() == "héllo\n"


def test_connect_to_closed_port(sshd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ConnectError):
        sshd.connection(port=port, connect_timeout=2).connect()
    assert time.monotonic() - t0 < 5


def test_connect_timeout_silent_server(sshd):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectTimeout):
            sshd.connection(port=port, connect_timeout=1, banner_timeout=1).connect()
        assert time.monotonic() - t0 < 10
    finally:
        srv.close()
        for c, _ in conns:
            c.close()


def test_no_paramiko_in_engine():
    import subprocess, sys
    code = ("import sys, grader, grader.executor, grader.engine, grader.engine.run, "
            "grader.engine.result; assert 'paramiko' not in sys.modules, 'paramiko imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=str(__import__('pathlib').Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stderr
