"""An HTTP/1.1 client for the service as a browser or a script speaks to it: cookies, the CSRF token of a
form page, multipart and urlencoded bodies, and the messages a page or a JSON reply shows. Used by the
fault suite, the bench and the service tests (127.0.0.1 only)."""
from __future__ import annotations

import dataclasses
import html
import http.client
import http.cookies
import json
import re
import urllib.parse
import uuid

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FLASH_P_RE = re.compile(r'<p class="flash (\w+)"[^>]*>(.*?)</p>', re.S)
FLASH_DIV_RE = re.compile(r'<div class="flash (\w+)"[^>]*>(.*?)</div>', re.S)
ERROR_P_RE = re.compile(r'<p class="error">(.*?)</p>', re.S)
TAG_RE = re.compile(r"<[^>]+>")


@dataclasses.dataclass
class Reply:
    """An HTTP answer."""
    status: int                 # -1: the connection dropped without an answer
    headers: dict[str, str]     # lower-case names
    body: bytes
    error: str = ""

    def json(self) -> dict | None:
        """The body as a JSON object, or None."""
        try:
            v = json.loads(self.body)
            return v if isinstance(v, dict) else None
        except ValueError:
            return None

    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")


class Client:
    """One caller on 127.0.0.1:port: a keep-alive HTTP/1.1 connection (HTTPS with ``tls``) and its own
    cookies. `source` binds the connection to another loopback address (127.0.0.2, ...), a client the
    server tells apart."""

    def __init__(self, port: int, timeout: float = 60, tls=None, source: str | None = None):
        self.port, self.timeout, self.tls, self.source = port, timeout, tls, source
        self.conn: http.client.HTTPConnection | None = None
        self.cookies: dict[str, str] = {}
        self.requests = 0

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, keep_cookies: bool = True) -> Reply:
        """Send one request; a dropped connection answers Reply(-1, ...) and the next call reconnects.
        With keep_cookies=False the cookies the server sets are ignored (the caller's session stays as
        it was, whatever the request did to it)."""
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self.requests += 1
        try:
            if self.conn is None:
                src = (self.source, 0) if self.source else None
                self.conn = (http.client.HTTPSConnection("127.0.0.1", self.port, timeout=self.timeout,
                                                         context=self.tls, source_address=src) if self.tls
                             else http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout,
                                                             source_address=src))
            self.conn.request(method, path, body=body, headers=hdrs)
            r = self.conn.getresponse()
            data = r.read()
            headers_out = {k.lower(): v for k, v in r.getheaders()}
            if keep_cookies:
                self._keep_cookies(r.msg.get_all("Set-Cookie") or [])
            if r.will_close:
                self.close()
            return Reply(r.status, headers_out, data)
        except (OSError, http.client.HTTPException) as e:
            self.close()
            return Reply(-1, {}, b"", f"{type(e).__name__}: {e}")

    def get(self, path: str, headers: dict | None = None) -> Reply:
        """GET `path`."""
        return self.request("GET", path, headers=headers)

    def close(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _keep_cookies(self, set_cookies: list[str]) -> None:
        """Store (or drop, when expired) the cookies of Set-Cookie headers."""
        for raw in set_cookies:
            jar = http.cookies.SimpleCookie()
            try:
                jar.load(raw)
            except http.cookies.CookieError:
                continue
            for name, morsel in jar.items():
                expired = morsel["expires"] and "1970" in morsel["expires"] or morsel["max-age"] == "0"
                if expired or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value


def csrf_of(page: str) -> str:
    """The CSRF token of a form page ("" when the page has none)."""
    m = CSRF_RE.search(page)
    return m.group(1) if m else ""


def login(client: Client, username: str, password: str) -> Reply:
    """Log `client` in through the login form (GET for the CSRF token, then POST)."""
    token = csrf_of(client.get("/login").text())
    body, ctype = urlencoded([("csrf_token", token), ("username", username), ("password", password)])
    return client.request("POST", "/login", body, {"Content-Type": ctype})


def session_csrf(client: Client) -> str:
    """A CSRF token valid for `client`'s session (from the login page, or the tokens page once logged in)."""
    page = client.get("/tokens")
    if page.status != 200:
        page = client.get("/login")
    return csrf_of(page.text())


def multipart(parts: list[tuple]) -> tuple[bytes, str]:
    """A multipart/form-data body. A part is (name, filename or None for a text field, data); names and
    file names may be bytes, written as they are (bad encodings included)."""
    boundary = uuid.uuid4().hex
    out = []
    for name, filename, data in parts:
        name_b = name if isinstance(name, bytes) else name.encode()
        disp = b'Content-Disposition: form-data; name="' + name_b + b'"'
        if filename is not None:
            fn = filename if isinstance(filename, bytes) else filename.encode()
            disp += b'; filename="' + fn + b'"\r\nContent-Type: application/octet-stream'
        value = data if isinstance(data, bytes) else str(data).encode()
        out.append(b"--" + boundary.encode() + b"\r\n" + disp + b"\r\n\r\n" + value + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def urlencoded(fields: list[tuple]) -> tuple[bytes, str]:
    """An application/x-www-form-urlencoded body from (name, value) pairs (str or bytes)."""
    return urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"


def _clean(fragment: str) -> str:
    """The text of an HTML fragment, tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(TAG_RE.sub(" ", fragment)).split())


def page_messages(page: str) -> tuple[list[str], list[str]]:
    """(error messages, other flash messages) shown on an HTML page: error flashes, the roster's error
    list and the error page's paragraph; then the page's other flashes."""
    errors, others = [], []
    for kind, text in FLASH_P_RE.findall(page) + FLASH_DIV_RE.findall(page):
        (errors if kind == "error" else others).append(_clean(text))
    errors += [_clean(t) for t in ERROR_P_RE.findall(page)]
    return errors, others


def reply_message(r: Reply) -> str:
    """What a reply says went wrong: the JSON `error`, else the error messages of the HTML page."""
    j = r.json()
    if j is not None:
        return str(j.get("error") or "")
    return " | ".join(page_messages(r.text())[0])


def location_path(r: Reply) -> str:
    """The path (and query) of a redirect's Location, or "" (only same-host paths are followed)."""
    loc = r.headers.get("location", "")
    parts = urllib.parse.urlsplit(loc)
    if parts.netloc and parts.netloc.split(":")[0] not in ("127.0.0.1", "localhost"):
        return ""
    return (parts.path or "") + (f"?{parts.query}" if parts.query else "")

