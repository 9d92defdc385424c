"""Configuration order (defaults, instance config.py, GRADER_* env, test_config) and the refusal of
missing or placeholder secret keys in production."""
from __future__ import annotations

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
               env={"GRADER_LEASE_SECONDS": "42", "GRADER_SECRET_KEY": "k" * 40})
    assert app.config["POOL_QEMU_VMS"] == 3          # instance folder over defaults
    assert app.config["LEASE_SECONDS"] == 42         # environment over the instance folder
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'inst' / 'grader.sqlite3'}"
    assert app.config["STORE_DIR"] == str(tmp_path / "inst" / "store")
    app = make(tmp_path, monkeypatch, env={"GRADER_LEASE_SECONDS": "42"}, test_config={"LEASE_SECONDS": 7})
    assert app.config["LEASE_SECONDS"] == 7


@pytest.mark.parametrize("secret,message", [(None, "is not set"), ("changeme", "placeholder"),
                                            ("dev", "placeholder"), ("short-key", "shorter than 32")])
def test_production_refuses_bad_secret(tmp_path, monkeypatch, secret, message):
    from grader.service.app import ConfigError, require_production_secret

    env = {"GRADER_SECRET_KEY": secret} if secret else {}
    try:
        app = make(tmp_path, monkeypatch, env=env)
    except ConfigError as e:                         # placeholders are refused at creation already
        assert message in str(e)
        return
    with pytest.raises(ConfigError, match=message):
        require_production_secret(app)


def test_serve_command_refuses_missing_secret(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GRADER_INSTANCE_PATH": str(tmp_path / "inst")}
    r = subprocess.run([sys.executable, "-m", "flask", "--app", "grader", "serve", "--port", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "GRADER_SECRET_KEY is not set" in r.stderr


def test_nothing_connects_at_import():
    code = ("import sys; import grader, grader.service.app, grader.service.models, grader.service.worker; "
            "print(sorted(m for m in sys.modules if m in ('paramiko', 'huey', 'redis', 'psycopg')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_queue_url_validation(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="expected redis://"):
        make(tmp_path, monkeypatch, test_config={"TESTING": True, "QUEUE_URL": "amqp://x"})
