"""Configuration order (defaults, instance config.py, GRADER_* env, test_config) and the refusal of
missing or placeholder secret keys in production."""
from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make(tmp_path, monkeypatch, env=None, instance_cfg=None, test_config=None):
    inst = tmp_path / "inst"
    inst.mkdir(exist_ok=True)
    monkeypatch.setenv("GRADER_INSTANCE_PATH", str(inst))
    for k in list(__import__("os").environ):
        if k.startswith("GRADER_") and k != "GRADER_INSTANCE_PATH":
            monkeypatch.delenv(k)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    if instance_cfg is not None:
        (inst / "config.py").write_text(instance_cfg)
    from grader import create_app

    return create_app(test_config)


def test_config_layers(tmp_path, monkeypatch):
    app = make(tmp_path, monkeypatch, instance_cfg="POOL_QEMU_VMS = 3\nLEASE_SECONDS = 99\n",
               env={"GRADER_LEASE_SECONDS": "42", "GRADER_SECRET_KEY": secrets.token_urlsafe(48)})
    assert app.config["POOL_QEMU_VMS"] == 3          # instance folder over defaults
    assert app.config["LEASE_SECONDS"] == 42         # environment over the instance folder
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'inst' / 'grader.sqlite3'}"
    assert app.config["STORE_DIR"] == str(tmp_path / "inst" / "store")
    app = make(tmp_path, monkeypatch, env={"GRADER_LEASE_SECONDS": "42"},
               test_config={"LEASE_SECONDS": 7, "TESTING": True})
    assert app.config["LEASE_SECONDS"] == 7


@pytest.mark.parametrize("secret,message", [(None, "is not set"), ("changeme", "placeholder"),
                                            ("dev", "placeholder"), ("short-key", "shorter than 32"),
                                            ("ab" * 20, "only 2 distinct characters")])
def test_production_refuses_bad_secret(tmp_path, monkeypatch, secret, message):
    """create_app itself refuses, before it makes the instance folder: every way of building the app
    for production (serve, worker, any CLI command, the WSGI entry) goes through it."""
    from grader.service.app import ConfigError

    env = {"GRADER_SECRET_KEY": secret} if secret else {}
    (tmp_path / "inst").mkdir()
    with pytest.raises(ConfigError, match=message):
        make(tmp_path, monkeypatch, env=env)
    assert list((tmp_path / "inst").iterdir()) == []
    # outside production (tests, debug, the demo) a missing key is replaced by a random one
    if secret is None:
        app = make(tmp_path, monkeypatch, test_config={"TESTING": True})
        assert len(app.config["SECRET_KEY"]) >= 32 and app.config["SECRET_KEY_EPHEMERAL"]


def flask_cli(tmp_path, *args, secret=None):
    env = {"PATH": "/usr/bin:/bin", "GRADER_INSTANCE_PATH": str(tmp_path / "inst")}
    if secret:
        env["GRADER_SECRET_KEY"] = secret
    return subprocess.run([sys.executable, "-m", "flask", "--app", "grader", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("secret,message", [(None, "GRADER_SECRET_KEY is not set"),
                                            ("abcde", "shorter than 32 characters")])
def test_cli_refuses_weak_secret(tmp_path, secret, message):
    """serve and every other command: the reason on stderr, no traceback, exit status 1."""
    for args in (("serve", "--port", "1"), ("init-db",)):
        r = flask_cli(tmp_path, *args, secret=secret)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("secret,ok", [("abcde", False), (None, False), ("k-" + "0123456789abcdef" * 3, True)])
def test_wsgi_entry_checks_the_secret(tmp_path, secret, ok):
    """The module gunicorn, waitress-serve and uwsgi load (grader.service.wsgi:app) builds the app for
    production: a weak secret stops the import with the reason; a good one gives a working app."""
    env = {"PATH": "/usr/bin:/bin", "GRADER_INSTANCE_PATH": str(tmp_path / "inst")}
    if secret:
        env["GRADER_SECRET_KEY"] = secret
    code = ("from grader.service.wsgi import app; c = app.test_client(); r = c.get('/login'); "
            "print(r.status_code, app.config['PRODUCTION'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    if ok:
        assert r.returncode == 0 and r.stdout.split() == ["200", "True"], r.stderr
    else:
        assert r.returncode != 0 and "ConfigError: GRADER_SECRET_KEY" in r.stderr


def test_nothing_connects_at_import():
    code = ("import sys; import grader, grader.service.app, grader.service.models, grader.service.worker; "
            "print(sorted(m for m in sys.modules if m in ('paramiko', 'huey', 'redis', 'psycopg')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_queue_url_validation(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="expected redis://"):
        make(tmp_path, monkeypatch, test_config={"TESTING": True, "QUEUE_URL": "amqp://x"})
