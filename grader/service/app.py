"""The Flask app factory. Nothing reads configuration or opens connections at import time."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import click
from flask import Flask, Request, jsonify, render_template, request
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import event
from sqlalchemy.engine import make_url
from werkzeug.exceptions import BadRequest

from .config import Defaults, check_secret, resolve_paths
from .headers import init_headers
from .models import User, db
from .private import make_dir, tighten, touch

MIGRATIONS = str(Path(__file__).resolve().parent / "migrations")


class FormRequest(Request):
    """A form that cannot be parsed (multipart without its boundary or cut short, part headers that are
    not UTF-8) answers 400 with the reason. Werkzeug would silently hand the view an empty form, which
    then reads as "no files were uploaded" or "the CSRF token is missing"."""

    def make_form_data_parser(self):
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except ValueError as e:
            self.__dict__["form"] = self.parameter_storage_class()
            self.__dict__["files"] = self.parameter_storage_class()
            raise BadRequest(f"The form could not be read: it is not well-formed {self.mimetype} ({e}).") from None


class ConfigError(click.ClickException):
    """The configuration cannot run a service (the message says what to set). A ClickException so
    that `flask --app grader ...` prints the reason and exits 1 instead of a traceback."""


def _sqlite_pragmas(engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every sqlite test
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()


def _private_storage(config) -> None:
    """The store folder and a SQLite database file exist before anything writes into them, readable
    only by this account (sqlite3 would create the file with the umask's mode)."""
    make_dir(config["STORE_DIR"])
    url = make_url(config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:"):
        touch(url.database)


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("GRADER_INSTANCE_PATH") or None,
                instance_relative_config=True)
    app.request_class = FormRequest
    app.config.from_object(Defaults)
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("GRADER")
    if test_config:
        app.config.update(test_config)
    production = not (app.config.get("TESTING") or app.debug or app.config.get("DEMO"))
    app.config["PRODUCTION"] = production
    # before anything is created: a refused configuration leaves no instance folder behind
    problem = check_secret(app.config, production=production)
    if problem:
        raise ConfigError(problem + " (in the environment or the instance folder's config.py)")
    make_dir(app.instance_path)
    if os.path.isfile(os.path.join(app.instance_path, "config.py")):   # it may hold the secret key
        tighten(Path(app.instance_path) / "config.py")
    resolve_paths(app.config, app.instance_path)
    _private_storage(app.config)
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"connect_args": {"timeout": 30}})
    else:
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {"pool_pre_ping": True})

    db.init_app(app)
    Migrate(app, db, directory=MIGRATIONS, render_as_batch=True)
    if uri.startswith("sqlite"):
        with app.app_context():
            _sqlite_pragmas(db.engine)
    CSRFProtect(app)
    _init_login(app)
    init_headers(app)
    from . import throttle

    throttle.init_app(app)

    from .dispatch import Dispatcher

    app.extensions["copylab_dispatch"] = Dispatcher(app)

    from .views import api, auth, instructor, student

    app.register_blueprint(auth.bp)
    app.register_blueprint(student.bp)
    app.register_blueprint(instructor.bp)
    app.register_blueprint(api.bp)
    app.extensions["csrf"].exempt(api.bp)  # bearer tokens only: no cookies, no CSRF

    from . import cli

    cli.register(app)
    _errors(app)
    _behind_proxy(app)
    from .views.common import register_filters

    register_filters(app)
    if not app.config.get("TESTING"):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return app


def _init_login(app: Flask) -> None:
    lm = LoginManager(app)
    lm.login_view = "auth.login"
    lm.login_message = "Please log in."
    lm.session_protection = "strong"

    @lm.user_loader
    def load(user_key: str):
        uid, _, epoch = user_key.partition(":")
        if not uid.isdigit() or not epoch.lstrip("-").isdigit():
            return None
        user = db.session.get(User, int(uid))
        if user is None or user.session_epoch != int(epoch) or not user.active:
            return None
        return user


def _behind_proxy(app: Flask) -> None:
    """Trust exactly PROXY_FIX_HOPS proxies' forwarding headers (request.remote_addr, request.is_secure and
    the host are then the client's as the nearest proxy saw it), and log each request with them."""
    hops = app.config["PROXY_FIX_HOPS"]
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
        raise ConfigError(f"PROXY_FIX_HOPS must be a whole number of proxies (0 or more), not {hops!r}")
    if hops:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    if app.config["ACCESS_LOG"]:
        access = logging.getLogger("copylab.access")

        @app.after_request
        def log_request(response):
            access.info("%s %s %s %s %s %s", request.remote_addr, request.scheme, request.host, request.method,
                        request.path, response.status_code)
            return response


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _errors(app: Flask) -> None:
    def respond(code: int, message: str):
        if _wants_json():
            return jsonify(error=message), code
        return render_template("error.html", code=code, message=message), code

    @app.errorhandler(CSRFError)
    def csrf(e):
        return respond(400, f"The form expired or was not sent by this site ({e.description}); reload the "
                            "page and try again.")

    @app.errorhandler(413)
    def too_large(e):
        limit = app.config["MAX_CONTENT_LENGTH"]
        if request.content_length is not None and request.content_length <= limit:
            # the form parser's limits, not the request's size
            return respond(413, f"The form has more than {app.config['MAX_FORM_PARTS']} fields or more than "
                                f"{app.config['MAX_FORM_MEMORY_SIZE']} bytes in a text field; send files as "
                                "file uploads.")
        return respond(413, f"The upload is larger than {limit} bytes.")

    @app.errorhandler(404)
    def not_found(e):
        return respond(404, "Not found.")

    @app.errorhandler(403)
    def forbidden(e):
        return respond(403, "You are not allowed to do that.")

    @app.errorhandler(405)
    def method(e):
        return respond(405, "Method not allowed.")

    @app.errorhandler(400)
    def bad(e):
        return respond(400, getattr(e, "description", None) or "Bad request.")

    @app.errorhandler(500)
    def server_error(e):
        return respond(500, "Internal error; it has been logged.")
