"""`serve`'s waitress settings from config and options, PROXY_FIX_HOPS in the app, and the nginx site file
rendered from an instance's configuration (tests/service/test_proxy.py runs them for real)."""
from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPOOFED = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7", "X-Forwarded-Proto": "https",
           "X-Forwarded-Host": "grader.example.edu", "X-Forwarded-Port": "443"}


def app_with(tmp_path, monkeypatch, **config):
    monkeypatch.setenv("GRADER_INSTANCE_PATH", str(tmp_path / "instance"))
    from grader import create_app

    return create_app({"TESTING": True, "SECRET_KEY": "t" * 40, **config})


def seen(app, caplog) -> str:
    """The access log line of a request from 192.0.2.1 carrying SPOOFED headers (through app.wsgi_app)."""
    with caplog.at_level(logging.INFO, logger="copylab.access"):
        app.test_client().get("/probe", headers=SPOOFED, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    return [r.getMessage() for r in caplog.records if r.name == "copylab.access"][-1]


def test_no_proxy_trusted_by_default(tmp_path, monkeypatch, caplog):
    app = app_with(tmp_path, monkeypatch)
    assert app.config["PROXY_FIX_HOPS"] == 0
    assert seen(app, caplog) == "192.0.2.1 http localhost GET /probe 404"


def test_one_trusted_hop_takes_the_last_forwarded_entry(tmp_path, monkeypatch, caplog):
    app = app_with(tmp_path, monkeypatch, PROXY_FIX_HOPS=1)
    assert seen(app, caplog) == "198.51.100.7 https grader.example.edu GET /probe 404"


def test_two_trusted_hops(tmp_path, monkeypatch, caplog):
    app = app_with(tmp_path, monkeypatch, PROXY_FIX_HOPS=2)
    assert seen(app, caplog).startswith("203.0.113.9 ")


@pytest.mark.parametrize("hops", [-1, "1", 1.5, True])
def test_bad_hops_refused(tmp_path, monkeypatch, hops):
    from grader.service.app import ConfigError

    with pytest.raises(ConfigError, match="PROXY_FIX_HOPS must be a whole number"):
        app_with(tmp_path, monkeypatch, PROXY_FIX_HOPS=hops)


def test_waitress_settings_from_config_and_options(tmp_path, monkeypatch):
    from grader.service.cli import waitress_settings

    app = app_with(tmp_path, monkeypatch, SERVE_CHANNEL_TIMEOUT=12)
    s = waitress_settings(app.config, {"threads": 3, "connection_limit": None})
    assert (s["host"], s["port"], s["threads"], s["channel_timeout"]) == ("127.0.0.1", 8000, 3, 12)
    assert s["connection_limit"] == 1000 and s["cleanup_interval"] == 5
    assert s["max_request_body_size"] == 2 * app.config["MAX_CONTENT_LENGTH"]
    assert s["clear_untrusted_proxy_headers"] is True and "unix_socket" not in s
    app = app_with(tmp_path, monkeypatch, PROXY_FIX_HOPS=1, SERVE_UNIX_SOCKET="/run/copylab/web.sock",
                   SERVE_UNIX_SOCKET_PERMS=660)
    s = waitress_settings(app.config, {})
    assert s["unix_socket"] == "/run/copylab/web.sock" and s["unix_socket_perms"] == "660"
    assert "host" not in s and "port" not in s
    assert s["clear_untrusted_proxy_headers"] is False      # ProxyFix decides; waitress must pass them on
    from waitress.adjustments import Adjustments

    assert Adjustments(**s).unix_socket_perms == 0o660       # waitress accepts every setting


def test_serve_help_lists_the_limits(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env["GRADER_INSTANCE_PATH"] = str(tmp_path / "instance")
    cmd = [sys.executable, "-m", "flask", "--app", "grader", "serve", "--help"]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(env, GRADER_SECRET_KEY=secrets.token_urlsafe(48)),
                       capture_output=True, text=True, timeout=60)
    for option in ("--connection-limit", "--channel-timeout", "--threads", "--cleanup-interval",
                   "--max-request-header-size", "--max-request-body-size", "--unix-socket", "--backlog"):
        assert option in r.stdout, r.stdout
    # without a secret the production app is never built, and the operator is told why (no traceback)
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "GRADER_SECRET_KEY is not set" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_site_file_follows_the_instance(tmp_path, monkeypatch):
    from grader.service.deploy import DeployError, render_site

    app = app_with(tmp_path, monkeypatch, MAX_CONTENT_LENGTH=5_000_000, SERVE_UNIX_SOCKET=str(tmp_path / "w.sock"))
    (tmp_path / "c.pem").write_text("")
    site = render_site(app.config, server_name="grader.example.edu", cert=str(tmp_path / "c.pem"),
                       key=str(tmp_path / "c.pem"), header_timeout=7)
    assert f"server unix:{tmp_path / 'w.sock'};" in site
    assert "client_max_body_size 5000000;" in site and "client_header_timeout 7s;" in site
    assert "return 301 https://grader.example.edu$request_uri;" in site
    assert "listen *:443 ssl;" in site and "listen *:80;" in site
    refuse = render_site(app.config, server_name="g", cert="c", key="k", plain_http="refuse")
    assert "listen *:80" not in refuse
    with pytest.raises(DeployError, match="server name"):
        render_site(app.config, server_name="x; include /etc/passwd", cert="c", key="k")
    with pytest.raises(DeployError, match="plain HTTP"):
        render_site(app.config, server_name="g", cert="c", key="k", plain_http="allow")


def test_relative_socket_is_in_the_instance_folder(tmp_path, monkeypatch):
    from grader.service.deploy import upstream_of

    app = app_with(tmp_path, monkeypatch, SERVE_UNIX_SOCKET="web.sock")
    assert upstream_of(app.config) == f"unix:{tmp_path / 'instance' / 'web.sock'}"
    assert upstream_of(app_with(tmp_path, monkeypatch).config) == "127.0.0.1:8000"


def serve_with_open_files(tmp_path, soft: int, hard: int, *args: str) -> subprocess.Popen:
    import os
    import resource
    import secrets

    env = dict(os.environ, GRADER_INSTANCE_PATH=str(tmp_path / "inst"), GRADER_SECRET_KEY=secrets.token_urlsafe(48))
    return subprocess.Popen([sys.executable, "-m", "flask", "--app", "grader", "serve", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def test_serve_raises_its_open_file_limit_to_fit_the_connection_limit(tmp_path):
    from grader.vm.qemu import free_port

    p = serve_with_open_files(tmp_path, 256, 4096, "--port", str(free_port()), "--connection-limit", "900")
    try:
        deadline = time.monotonic() + 60
        limits = ""
        while time.monotonic() < deadline and p.poll() is None:
            limits = Path(f"/proc/{p.pid}/limits").read_text()
            if "Max open files            972 " in limits:
                break
            time.sleep(0.2)
        assert "Max open files            972 " in limits, (limits, p.poll())
    finally:
        p.terminate()
        p.wait(30)


def test_serve_refuses_a_connection_limit_it_cannot_open(tmp_path):
    p = serve_with_open_files(tmp_path, 256, 512, "--port", "1", "--connection-limit", "1000")
    out, _ = p.communicate(timeout=60)
    assert p.returncode != 0 and "the connection limit needs 1072 open files" in out and "ulimit -Hn" in out


def test_nginx_site_command_writes_the_file_and_warns_without_a_trusted_hop(tmp_path, monkeypatch):
    (tmp_path / "c.pem").write_text("")
    args = ["nginx-site", "--server-name", "grader.example.edu", "--cert", str(tmp_path / "c.pem"), "--key",
            str(tmp_path / "c.pem"), "-o", str(tmp_path / "site.conf")]
    r = app_with(tmp_path, monkeypatch).test_cli_runner().invoke(args=args)
    assert r.exit_code == 0 and "warning: PROXY_FIX_HOPS is 0" in r.output
    assert "server_name grader.example.edu;" in (tmp_path / "site.conf").read_text()
    r = app_with(tmp_path, monkeypatch, PROXY_FIX_HOPS=1).test_cli_runner().invoke(args=args)
    assert r.exit_code == 0 and "warning" not in r.output
    r = app_with(tmp_path, monkeypatch).test_cli_runner().invoke(args=[*args, "--header-timeout", "0"])
    assert r.exit_code != 0 and "the header timeout must be at least 1 second" in r.output


def test_site_file_limits_login_attempts_per_address(tmp_path, monkeypatch):
    """POST /login and the password form are counted per client address (every other request has an empty key,
    which nginx does not count); past the burst nginx answers 429 with a Retry-After of one attempt's share
    of a minute. tests/service/test_proxy.py sees nginx refuse them for real."""
    from grader.service.deploy import DeployError, render_site

    app = app_with(tmp_path, monkeypatch)
    site = render_site(app.config, server_name="grader.example.edu", cert="c", key="k")
    lines = [ln.strip() for ln in site.splitlines()]
    assert 'map "$request_method:$uri" $copylab_grader_example_edu_login_client {' in lines
    assert '"POST:/login" $binary_remote_addr;' in lines and '"POST:/account/password" $binary_remote_addr;' in lines
    assert 'default "";' in lines
    assert ("limit_req_zone $copylab_grader_example_edu_login_client zone=copylab_grader_example_edu_login:1m "
            "rate=20r/m;") in lines
    assert "limit_req zone=copylab_grader_example_edu_login burst=40 nodelay;" in lines
    assert "limit_req_status 429;" in lines and "error_page 429 @login_limited;" in lines
    assert "add_header Retry-After 3 always;" in lines
    tuned = render_site(app.config, server_name="g", cert="c", key="k", login_rate=7, login_burst=0)
    assert "zone=copylab_g_login:1m rate=7r/m;" in tuned and "limit_req zone=copylab_g_login burst=0 nodelay;" in tuned
    assert "add_header Retry-After 9 always;" in tuned and "try again in 9 seconds" in tuned
    with pytest.raises(DeployError, match="login rate must be at least 1"):
        render_site(app.config, server_name="g", cert="c", key="k", login_rate=0)
    with pytest.raises(DeployError, match="login burst must be 0 or more"):
        render_site(app.config, server_name="g", cert="c", key="k", login_burst=-1)
    (tmp_path / "c.pem").write_text("")
    r = app.test_cli_runner().invoke(args=["nginx-site", "--server-name", "g", "--cert", str(tmp_path / "c.pem"),
                                           "--key", str(tmp_path / "c.pem"), "--login-rate", "30", "--login-burst",
                                           "60"])
    assert r.exit_code == 0 and "rate=30r/m;" in r.output and "burst=60 nodelay;" in r.output, r.output
