"""Fixtures for the unit tier: a real local sshd on 127.0.0.1 with throwaway keys."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from grader.vm.qemu import free_port
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class LocalSSHD:
    host: str
    port: int
    user: str
    key_path: Path          # client private key (authorized for root)
    known_hosts: Path       # pinning the sshd's host key
    host_pub: str           # "ssh-ed25519 AAAA..."
    tmp: Path

    def connection(self, **kw):
        from grader.ssh import SSHConnection
        args = dict(host=self.host, port=self.port, user=self.user, key_path=self.key_path,
                    known_hosts=self.known_hosts, connect_timeout=5, auth_timeout=5,
                    banner_timeout=5)
        args.update(kw)
        return SSHConnection(**args)


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sshd did not open its port")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD) or os.geteuid() != 0:
        pytest.fail("the sshd tier needs root and /usr/sbin/sshd (openssh-server, from `make deps`)")
    tmp = tmp_path_factory.mktemp("sshd")
    host_key = keygen(tmp / "ssh_host_ed25519_key")
    client_key = keygen(tmp / "id_ed25519")
    shutil.copy(tmp / "id_ed25519.pub", tmp / "authorized_keys")
    port = free_port()
    host_pub = " ".join((tmp / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    known = tmp / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    config = tmp / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp {SFTP_SERVER}
LogLevel ERROR
""")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_port(port, proc)
        yield LocalSSHD("127.0.0.1", port, "root", client_key, known, host_pub, tmp)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
