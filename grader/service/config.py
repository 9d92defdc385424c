"""Configuration: defaults here, then ``<instance>/config.py``, then ``GRADER_*`` environment variables,
then the ``test_config`` passed to ``create_app``.

Every key is documented where it is defined. Environment values are parsed as JSON when they parse
(``GRADER_POOL_QEMU_VMS=2`` is an int), else kept as strings (Flask's ``from_prefixed_env``).
"""
from __future__ import annotations

import secrets
from pathlib import Path

from grader import submission

# Secret keys that must never sign sessions in production (copied from tutorials and our own docs).
KNOWN_BAD_SECRETS = {"", "dev", "changeme", "change-me", "secret", "copylab", "please-change-me"}


class Defaults:
    # --- web
    SECRET_KEY = None                      # required outside development: GRADER_SECRET_KEY
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = False           # True: always Secure; otherwise Secure on requests that came over HTTPS
    # CSP of the app's own pages (no inline script or style in them); student files get a sandbox instead
    CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'")
    PERMANENT_SESSION_LIFETIME = 12 * 3600  # seconds a web login lasts
    WTF_CSRF_TIME_LIMIT = 12 * 3600         # a form's CSRF token expires with the session
    MAX_CONTENT_LENGTH = 2 * 1024 * 1024    # bytes: any request body larger than this is refused (413)
    PROXY_FIX_HOPS = 0                      # reverse proxies in front whose X-Forwarded-For/-Proto/-Host/-Port are
                                            # trusted (werkzeug ProxyFix); 0: none, the headers are ignored. Set 1
                                            # behind the nginx of grader/service/deploy/, and then let nothing but
                                            # that nginx reach `serve` (a Unix socket), or anyone can claim any address
    ACCESS_LOG = True                       # a log line per request: client address, scheme, host, method, path, status
    # --- `flask --app grader serve` (waitress); each is also a `serve` option
    SERVE_HOST = "127.0.0.1"
    SERVE_PORT = 8000
    SERVE_UNIX_SOCKET = None                # a socket (relative: in the instance folder) to listen on instead of
                                            # SERVE_HOST:SERVE_PORT, for nginx on the same host
    SERVE_UNIX_SOCKET_PERMS = "660"         # octal mode of that socket: the nginx workers' group must be able to write
    SERVE_THREADS = 8                       # requests handled at once; waiting connections cost no thread
    SERVE_CONNECTION_LIMIT = 1000           # open connections before waitress stops accepting (its default: 100,
                                            # which 100 clients sending half a header use up)
    SERVE_CHANNEL_TIMEOUT = 30              # seconds a connection may send nothing before it is closed
    SERVE_CLEANUP_INTERVAL = 5              # seconds between the checks for such connections
    SERVE_BACKLOG = 1024                    # connections the kernel queues before waitress accepts them
    SERVE_MAX_REQUEST_HEADER_SIZE = 64 * 1024   # bytes of request line and headers (431 past it)
    SERVE_MAX_REQUEST_BODY_SIZE = None      # bytes waitress buffers of a body; None: twice MAX_CONTENT_LENGTH, so
                                            # the app still explains a refusal and nothing larger is buffered
    # --- logins (grader/service/throttle.py): failed logins are counted in the database, per key, so
    # every web process and host sees the same counts. A key that reaches its limit is locked; each
    # further failure locks it again for twice as long (up to the maximum). A key forgets its failures
    # after LOGIN_FAILURE_WINDOW_SECONDS without one; a successful login clears its own key.
    LOGIN_PAIR_FAILURES = 5                 # per account name and client (address, or the browser's device cookie)
    LOGIN_ACCOUNT_FAILURES = 10             # per account name from clients without that account's device cookie
    LOGIN_CLIENT_FAILURES = 30              # per client address over every account name (a lab room behind NAT)
    LOGIN_LOCKOUT_SECONDS = 30              # the first lock; doubled by each further failure
    LOGIN_LOCKOUT_MAX_SECONDS = 900         # the longest lock
    LOGIN_FAILURE_WINDOW_SECONDS = 3600     # failures older than this (since the key's last one) are forgotten
    LOGIN_DEVICE_COOKIE_DAYS = 180          # a browser that logged in to an account is recognised this long
    # password hashes computed at once per web process, in two pools so that guessers cannot take the
    # slots of everyone else: attempts whose account name, client or address has failures in the window
    # ("suspect") share their own slots; the others (and password changes) have theirs
    LOGIN_HASH_CONCURRENCY = 2              # slots for attempts without recent failures
    LOGIN_HASH_SUSPECT_CONCURRENCY = 1      # slots for suspect attempts
    LOGIN_HASH_WAITING = 2                  # requests per pool that may wait for a slot; more answer 503 at once
    LOGIN_HASH_WAIT_SECONDS = 3.0           # a request waits this long for a hash slot, then answers 503
    # --- passwords (grader/service/passwords.py), checked wherever a password is chosen
    PASSWORD_MIN_LENGTH = 8
    # zxcvbn's 0-4 guessability score; 4 (10^10 guesses or more) because a leaked database can be
    # attacked offline; 3 (10^8) lets through dictionary phrases such as "winniethepooh"
    PASSWORD_MIN_SCORE = 4
    # --- API tokens
    TOKEN_LIFETIME_DAYS = 120               # a token is refused this long after it was made (about a term)
    # --- storage (relative paths are inside the instance folder)
    SQLALCHEMY_DATABASE_URI = None          # default: sqlite:///<instance>/grader.sqlite3
    STORE_DIR = "store"                     # submissions (write-once) and grading artifacts
    LABS_DIR = None                         # default: the kit's labs/ folder
    # --- uploads
    # (the grade CLI applies the same defaults: grader/submission.py)
    UPLOAD_MAX_ARCHIVE_BYTES = submission.ARCHIVE_BYTES    # an uploaded archive (1 MiB)
    UPLOAD_MAX_MEMBERS = submission.MEMBERS                # archive members (64: the lab's files and clutter)
    UPLOAD_MAX_UNPACKED_BYTES = submission.UNPACKED_BYTES  # all members together, unpacked (4 MiB)
    # --- submission policy, per student (0: no limit). An assignment's own max_submissions and
    # cooldown_seconds, when not 0, replace the first two for that assignment.
    SUBMIT_COOLDOWN_SECONDS = 30            # between two submissions to one assignment (429 + Retry-After)
    SUBMIT_MAX_PER_ASSIGNMENT = 100         # submissions to one assignment
    STORAGE_BUDGET_BYTES = 64 * 1024 * 1024  # bytes the store keeps for all of a student's submissions
    # --- queue and workers
    QUEUE_URL = None                        # None: SQLite huey in the instance folder; redis://... across hosts
    QUEUE_NAME = "copylab"
    LEASE_SECONDS = 60                      # a running job whose worker stops heartbeating is requeued after this
    HEARTBEAT_SECONDS = 10
    RECONCILE_SECONDS = 15                  # how often a worker re-dispatches queued jobs with no message
    MAX_ATTEMPTS = 3                        # infrastructure failures (VM would not boot, ...) before a job fails
    BUSY_RETRY_SECONDS = 10                 # a job waits this long when the same student's job is running
    PRIORITY_LIVE = 100                     # students waiting for feedback go first
    PRIORITY_REGRADE = 10
    WORKER_NAME = None                      # default: <hostname>-<instance hash>; one worker process per name
    POOL_QEMU_VMS = 1                       # QEMU lab VMs from the golden image in this worker's pool
    POOL_QEMU_SHAPES = {"e1000e-pair": 1}   # more QEMU lab VMs by the shape a lab asks for ([vm] nics in its
                                            # lab.toml; "e1000e-pair": lab 2's two network cards); booted at the
                                            # first job of such a lab
    POOL_GOLDEN = None                      # golden image folder (default: newest of POOL_SUITE in the image cache)
    POOL_SUITE = "bookworm"                 # the lab VMs' Debian release: 12 "bookworm" (kernel 6.1) or 13 "trixie"
                                            # (6.12), for assignments that name none (`add-lab --suite`)
    POOL_QEMU_SUITES = {}                   # QEMU lab VMs of other releases, for the assignments that name them:
                                            # {"trixie": {"": 1, "e1000e-pair": 1}} (release -> shape -> count)
    POOL_HOSTS = []                         # inventory hosts: [{"host", "port", "key", "known_hosts", "user"}]
    POOL_VM_DIR = "vms"                     # per-VM overlays and pinned host keys (inside the instance folder)
    POOL_QEMU_USER = "copylab-qemu"         # account QEMU runs as when the worker is root (`make deps` creates
                                            # it; "" = the worker's own user); it must not reach the instance
                                            # folder, database or store (the worker refuses to start otherwise)
    # --- demo
    DEMO = False


def resolve_paths(config: dict, instance_path: str) -> None:
    """Make the instance-relative paths absolute and fill the defaults that depend on the instance."""
    inst = Path(instance_path)
    if not config.get("SQLALCHEMY_DATABASE_URI"):
        config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{inst / 'grader.sqlite3'}"
    for key in ("STORE_DIR", "POOL_VM_DIR", "SERVE_UNIX_SOCKET"):
        if config.get(key):
            p = Path(config[key])
            config[key] = str(p if p.is_absolute() else inst / p)
    if not config.get("LABS_DIR"):
        config["LABS_DIR"] = str(Path(__file__).resolve().parents[2] / "labs")
    if not config.get("WORKER_NAME"):
        import hashlib
        import socket

        config["WORKER_NAME"] = f"{socket.gethostname()}-{hashlib.sha256(str(inst).encode()).hexdigest()[:8]}"


def check_secret(config: dict, production: bool) -> str | None:
    """None when the secret key is acceptable; else why not. In production a key must be set, at least
    32 characters long, not a placeholder and not a few characters repeated. Outside production, a
    missing key is replaced by a random one for this process (sessions then end when it exits)."""
    key = config.get("SECRET_KEY")
    if isinstance(key, str) and key.strip().lower() in KNOWN_BAD_SECRETS:
        return "GRADER_SECRET_KEY is a well-known placeholder; set a long random value"
    if not key:
        if production:
            return ("GRADER_SECRET_KEY is not set; generate one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
        config["SECRET_KEY"] = secrets.token_urlsafe(48)
        config["SECRET_KEY_EPHEMERAL"] = True
        return None
    if production and len(str(key)) < 32:
        return "GRADER_SECRET_KEY is shorter than 32 characters"
    if production and len(set(str(key))) < 10:
        return (f"GRADER_SECRET_KEY uses only {len(set(str(key)))} distinct characters; set a long random "
                "value")
    return None
