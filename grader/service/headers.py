"""Security headers on every response, the session cookie's Secure flag, and the way files a student
controls are sent.

- Every response: framing refused (CSP `frame-ancestors 'none'` and `X-Frame-Options: DENY` for older
  browsers), `X-Content-Type-Options: nosniff`, a `Referrer-Policy`, and the app's own CSP
  (`CONTENT_SECURITY_POLICY`: the templates use no inline script or style).
- Artifacts and sources a student controls: `text/plain` with a sandboxing CSP (no script, no
  plugin, no request, no same-origin access even if a browser rendered them), never HTML.
- The session cookie is Secure when `SESSION_COOKIE_SECURE` is set, and on every request that came
  over HTTPS (`request.is_secure`, which behind a reverse proxy needs the proxy's trusted hops set).
"""
from __future__ import annotations

import unicodedata

from flask import Flask, Response, has_request_context, request, send_file
from flask.sessions import SecureCookieSessionInterface

# Student-controlled files: a document of its own origin that may run and fetch nothing.
SANDBOX_CSP = "sandbox; default-src 'none'; frame-ancestors 'none'"
# same-origin, not no-referrer: Flask-WTF's CSRF check wants a same-site Referer on HTTPS form posts
REFERRER_POLICY = "same-origin"


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def init_headers(app: Flask) -> None:
    """Install the session interface and the headers every response gets."""
    app.session_interface = HttpsAwareSessionInterface()

    @app.after_request
    def security_headers(resp: Response) -> Response:
        h = resp.headers
        h.setdefault("Content-Security-Policy", app.config["CONTENT_SECURITY_POLICY"])
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h.setdefault("Referrer-Policy", REFERRER_POLICY)
        return resp


def download_name(*parts: str) -> str:
    """A file name for Content-Disposition from `parts` joined by "-": spaces, control characters and
    path separators become "_". Quoting and the RFC 5987 form of non-ASCII names are werkzeug's."""
    name = "-".join(parts)
    return "".join("_" if ch in "/\\" or ch.isspace() or unicodedata.category(ch)[0] in "CZ" else ch
                   for ch in name)


def send_untrusted(path, name: str) -> Response:
    """A file whose content a student controls, shown inline: plain text, not sniffed, sandboxed."""
    resp = send_file(path, mimetype="text/plain", download_name=download_name(name))
    resp.headers["Content-Security-Policy"] = SANDBOX_CSP
    return resp
