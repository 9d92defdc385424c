"""Exception hierarchy of the grader (stdlib only)."""

from __future__ import annotations


class GraderError(Exception):
    """Base of every error the grader raises on purpose."""


class SSHError(GraderError):
    """Anything that went wrong talking SSH to a lab VM."""


class ConnectError(SSHError):
    """The TCP/SSH connection could not be established (e.g. connection refused)."""


class ConnectTimeout(ConnectError):
    """Connecting, the SSH banner or authentication did not finish in time."""


class AuthFailed(SSHError):
    """The server refused our key."""


class HostKeyMismatch(SSHError):
    """The server's host key is unknown or differs from the pinned one."""


class CommandTimeout(SSHError):
    """A remote operation (not a run(), which reports timed_out) did not finish in time."""


class ChannelError(SSHError):
    """The SSH channel/SFTP session failed or the connection dropped."""


class VMError(GraderError):
    """The lab VM could not be started, restored, reached or stopped."""


class LabSpecError(GraderError):
    """labs/<lab>/lab.toml or a kernel profile is invalid."""


class GradingError(GraderError):
    """A grading phase failed; ``phase`` names it."""

    def __init__(self, phase: str, message: str):
        super().__init__(f"{phase}: {message}")
        self.phase = phase
        self.message = message
