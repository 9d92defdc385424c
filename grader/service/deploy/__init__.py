"""The deployment behind Debian's nginx: the site file (nginx-site.conf.j2) rendered for one instance.

The upstream (SERVE_UNIX_SOCKET, else SERVE_HOST:SERVE_PORT) and the body limit (MAX_CONTENT_LENGTH)
come from the instance's configuration, so nginx and `serve` cannot disagree about them.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
PLAIN_HTTP = ("redirect", "refuse")


class DeployError(ValueError):
    """A value that would make a broken or unsafe nginx site (the message names it)."""


def upstream_of(config) -> str:
    """Where nginx reaches `serve`, in nginx's `server` syntax."""
    if config.get("SERVE_UNIX_SOCKET"):
        return f"unix:{config['SERVE_UNIX_SOCKET']}"
    return f"{config['SERVE_HOST']}:{config['SERVE_PORT']}"


def _nginx_word(what: str, value: str) -> str:
    """A value written into the file as one nginx word: no spaces, quotes, braces, semicolons or $."""
    if not value or re.search(r"[\s;{}'\"$#\\]", value):
        raise DeployError(f"{what} {value!r} cannot be written into an nginx file (spaces, quotes, ; {{ }} $ # "
                          "or \\ in it)")
    return value


def render_site(config, *, server_name: str, cert: str, key: str, https_port: int = 443, http_port: int = 80,
                plain_http: str = "redirect", listen_address: str = "*", header_timeout: int = 10,
                body_timeout: int = 20, send_timeout: int = 30, keepalive_timeout: int = 15,
                app_timeout: int = 60, login_rate: int = 20, login_burst: int = 40) -> str:
    """The nginx site file for the instance whose configuration is ``config``."""
    if plain_http not in PLAIN_HTTP:
        raise DeployError(f"plain HTTP must be one of {', '.join(PLAIN_HTTP)}, not {plain_http!r}")
    for what, n in (("the HTTPS port", https_port), ("the HTTP port", http_port)):
        if not 0 < n < 65536:
            raise DeployError(f"{what} {n} is not a TCP port")
    for what, n in (("the header timeout", header_timeout), ("the body timeout", body_timeout),
                    ("the send timeout", send_timeout), ("the keep-alive timeout", keepalive_timeout),
                    ("the app timeout", app_timeout)):
        if n <= 0:
            raise DeployError(f"{what} must be at least 1 second, not {n}")
    if login_rate < 1:
        raise DeployError(f"the login rate must be at least 1 attempt a minute, not {login_rate}")
    if login_burst < 0:
        raise DeployError(f"the login burst must be 0 or more attempts, not {login_burst}")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template("nginx-site.conf.j2").render(
        name=re.sub(r"[^A-Za-z0-9]", "_", server_name), server_name=_nginx_word("the server name", server_name),
        cert=_nginx_word("the certificate path", str(Path(cert).resolve())),
        key=_nginx_word("the key path", str(Path(key).resolve())),
        upstream=_nginx_word("the upstream", upstream_of(config)),
        listen_address=_nginx_word("the listen address", listen_address), https_port=https_port,
        http_port=http_port, https_port_suffix="" if https_port == 443 else f":{https_port}",
        plain_http=plain_http, header_timeout=header_timeout, body_timeout=body_timeout,
        send_timeout=send_timeout, keepalive_timeout=keepalive_timeout, app_timeout=app_timeout,
        max_body=int(config["MAX_CONTENT_LENGTH"]), login_rate=login_rate, login_burst=login_burst,
        login_retry_after=login_retry_after(login_rate))


def login_retry_after(rate_per_minute: int) -> int:
    """Seconds until an address refused by nginx's login limit may try again (one attempt's share of a minute)."""
    return math.ceil(60 / rate_per_minute)
