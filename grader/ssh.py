"""SSH to a lab VM: the only module of copylab that imports paramiko.

Host keys are pinned: the server's key must be in the given known_hosts file (``RejectPolicy``; an
unknown or different key raises :class:`HostKeyMismatch`, nothing is ever added).
"""

from __future__ import annotations

import math
import os
import select
import shlex
import socket
import stat
import time

import paramiko

from .errors import (AuthFailed, ChannelError, ConnectError, ConnectTimeout, HostKeyMismatch,
                     SSHError)
from .executor import DEFAULT_MAX_OUTPUT, CappedBuffer, CommandResult, _to_bytes

__all__ = ["SSHConnection", "CommandResult"]


class SSHConnection:
    """``with SSHConnection(host, port, user, key_path, known_hosts) as ssh: ssh.run(...)``.

    Implements the :class:`grader.executor.Executor` protocol.
    """

    def __init__(self, host: str, port: int, user: str, key_path: str | os.PathLike,
                 known_hosts: str | os.PathLike, connect_timeout: float = 10.0,
                 auth_timeout: float = 15.0, banner_timeout: float = 15.0,
                 keepalive: int = 5, kill_with_timeout: bool = True):
        self.host = host
        self.port = int(port)
        self.user = user
        self.key_path = os.fspath(key_path)
        self.known_hosts = os.fspath(known_hosts)
        self.connect_timeout = connect_timeout
        self.auth_timeout = auth_timeout
        self.banner_timeout = banner_timeout
        self.keepalive = keepalive
        self.kill_with_timeout = kill_with_timeout
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # -- connection -------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> "SSHConnection":
        if self._client is not None:
            return self
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(self.known_hosts)
        except (OSError, paramiko.SSHException) as e:
            raise HostKeyMismatch(
                f"cannot read pinned host keys for {self.where} from {self.known_hosts}: {e}") from e
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            pkey = paramiko.PKey.from_path(self.key_path)
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise AuthFailed(f"cannot load private key {self.key_path}: {e}") from e
        t0 = time.monotonic()
        try:
            client.connect(
                self.host, port=self.port, username=self.user, pkey=pkey,
                timeout=self.connect_timeout, auth_timeout=self.auth_timeout,
                banner_timeout=self.banner_timeout, channel_timeout=self.connect_timeout,
                allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyMismatch(
                f"host key of {self.where} does not match the key pinned in {self.known_hosts} "
                f"(got {e.key.get_name()} {e.key.fingerprint})") from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise AuthFailed(f"{self.user}@{self.where} refused key {self.key_path}: {e}") from e
        except (socket.timeout, TimeoutError) as e:
            client.close()
            raise ConnectTimeout(f"connecting to {self.where} timed out after "
                                 f"{self.connect_timeout:g}s: {e}") from e
        except paramiko.SSHException as e:
            client.close()
            msg = str(e)
            if "not found in known_hosts" in msg:
                raise HostKeyMismatch(
                    f"host key of {self.where} is not pinned in {self.known_hosts} "
                    f"(refusing unknown key; it is never added automatically)") from e
            slow = time.monotonic() - t0 >= 0.9 * min(self.banner_timeout, self.auth_timeout)
            if slow or "timeout" in msg.lower() or "timed out" in msg.lower():
                raise ConnectTimeout(f"SSH handshake with {self.where} timed out: {msg}") from e
            raise ConnectError(f"SSH handshake with {self.where} failed: {msg}") from e
        except OSError as e:  # refused, unreachable, EOF during handshake
            client.close()
            raise ConnectError(f"cannot connect to {self.where}: {e}") from e
        transport = client.get_transport()
        if transport is not None and self.keepalive:
            transport.set_keepalive(self.keepalive)
        self._client = client
        return self

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "SSHConnection":
        return self.connect()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _transport(self) -> paramiko.Transport:
        self.connect()
        t = self._client.get_transport() if self._client else None
        if t is None or not t.is_active():
            raise ChannelError(f"SSH connection to {self.where} is closed")
        return t

    # -- commands ---------------------------------------------------------------------------
    def wrap(self, cmd: str, timeout: float) -> str:
        """Run under coreutils ``timeout`` (its own process group) so the remote side dies
        shortly after we give up on it."""
        if not self.kill_with_timeout:
            return cmd
        secs = max(1, math.ceil(timeout)) + 1
        return f"timeout -k 2 {secs} sh -c {shlex.quote(cmd)}"

    def run(self, cmd: str, timeout: float, stdin: str | bytes | None = None,
            max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult:
        start = time.monotonic()
        deadline = start + timeout
        try:
            chan = self._transport().open_session(timeout=min(timeout, 30) or None)
        except paramiko.SSHException as e:
            raise ChannelError(f"cannot open a channel to {self.where}: {e}") from e
        out, err = CappedBuffer(max_output), CappedBuffer(max_output)
        timed_out = False
        try:
            chan.exec_command(self.wrap(cmd, timeout))
            if stdin is not None:
                data = _to_bytes(stdin)
                chan.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    chan.sendall(data)
                except socket.timeout:
                    timed_out = True
            chan.shutdown_write()
            chan.settimeout(0.0)
            while not timed_out:
                progressed = False
                while chan.recv_ready():
                    out.feed(chan.recv(65536))
                    progressed = True
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(65536))
                    progressed = True
                if chan.exit_status_ready() and chan.eof_received \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if not progressed:
                    select.select([chan], [], [], min(0.1, deadline - now))
            exit_code = None if timed_out else chan.recv_exit_status()
            if not timed_out and not self._transport_active():
                raise ChannelError(f"SSH connection to {self.where} dropped during {cmd!r}")
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ChannelError(f"channel to {self.where} failed during {cmd!r}: {e}") from e
        finally:
            chan.close()
        return CommandResult(exit_code=exit_code, stdout=out.text(), stderr=err.text(),
                             timed_out=timed_out, truncated=out.truncated or err.truncated,
                             duration=time.monotonic() - start)

    def _transport_active(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    # -- files ------------------------------------------------------------------------------
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(self._transport())
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise ChannelError(f"cannot open SFTP to {self.where}: {e}") from e
            self._sftp.get_channel().settimeout(max(self.connect_timeout, 30))
        return self._sftp

    def put(self, local, remote: str, mode: int | None = None) -> None:
        try:
            self.sftp().put(os.fspath(local), remote)
            if mode is not None:
                self.sftp().chmod(remote, mode)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ChannelError(f"upload {local} -> {self.where}:{remote} failed: {e}") from e

    def get(self, remote: str, local) -> None:
        try:
            self.sftp().get(remote, os.fspath(local))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ChannelError(f"download {self.where}:{remote} failed: {e}") from e

    def write_text(self, remote: str, text: str) -> None:
        try:
            with self.sftp().open(remote, "w") as f:
                f.write(text.encode("utf-8"))
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise ChannelError(f"write {self.where}:{remote} failed: {e}") from e

    def is_file(self, remote: str) -> bool:
        try:
            return stat.S_ISREG(self.sftp().stat(remote).st_mode)
        except OSError:
            return False
