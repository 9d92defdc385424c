"""copylab grader.

Host side: ``grader.ssh`` (the only paramiko user), ``grader.executor``, the QEMU runner and the web
service (``grader.service``). ``grader.engine`` is stdlib-only and also runs inside the lab VM.
Nothing here imports paramiko or Flask at package import time.

``flask --app grader ...`` finds :func:`create_app` here.
"""


def create_app(test_config=None):
    """The grader service's Flask app (see grader/service/app.py)."""
    from grader.service.app import create_app as _create_app

    return _create_app(test_config)
