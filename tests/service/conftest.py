"""Service tier: the Flask app on a temporary instance folder (SQLite), with its real migrations.

Unit tests of the service replace the lab VM by a stand-in runner that replays a recorded engine
run (support/engine_runs.py); the tests that show grading works use real VMs (tests/vm/).
"""
from __future__ import annotations

import pytest

from support.app import Browser
from support.service import seed


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADER_INSTANCE_PATH", str(tmp_path / "instance"))
    from grader import create_app

    app = create_app({"TESTING": True, "SECRET_KEY": "test-" + "x" * 40, "HEARTBEAT_SECONDS": 0.2,
                      "RECONCILE_SECONDS": 0.5, "LEASE_SECONDS": 5, "BUSY_RETRY_SECONDS": 0.2,
                      # tests submit again at once; the default cooldown is tested in test_storage.py
                      "SUBMIT_COOLDOWN_SECONDS": 0})
    app.ids = seed(app)
    yield app
    from grader.service.models import db

    with app.app_context():
        db.engine.dispose()


@pytest.fixture
def browser(app):
    return lambda user=None: Browser(app, user)


