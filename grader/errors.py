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


class ChannelError(SSHError):
    """The SSH channel/SFTP session failed or the connection dropped."""


class VMError(GraderError):
    """The lab VM could not be started, restored, reached or stopped."""


class LabSpecError(GraderError):
    """labs/<lab>/lab.toml or a kernel profile is invalid."""


class InfrastructureFailure(GraderError):
    """Grading could not happen for reasons that are not the student's (the message says which); the
    service grades the job again while attempts remain."""


class StoreDamaged(InfrastructureFailure):
    """A stored submission no longer matches its receipt: grading it again cannot help."""
