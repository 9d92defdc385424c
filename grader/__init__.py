"""copylab grader.

Host side: ``grader.ssh`` (the only paramiko user), ``grader.executor`` and the QEMU runner.
``grader.engine`` is stdlib-only and also runs inside the lab VM.
Nothing here imports paramiko at package import time.
"""
