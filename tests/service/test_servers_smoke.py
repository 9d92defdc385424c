"""Smoke tests of the real-server fixtures in tests/service/servers.py.

The fixtures come from tests/service/conftest.py (``from tests.service.servers import ...``).
Do not import them here as well: a fixture imported into a test module is a second definition
with its own session cache, so this module would start a second PostgreSQL, Redis and Chromium.
"""
from __future__ import annotations

import pytest

from tests.service.servers import serving_pages  # a helper, not a fixture

PAGE = b"""<!doctype html>
<html><head><title>copylab smoke</title></head>
<body><h1 id="greeting">Hello from 127.0.0.1</h1></body></html>
"""


@pytest.fixture
def page_server():
    """A tiny http.server on a free 127.0.0.1 port serving PAGE at every path; yields its URL."""
    with serving_pages({}, PAGE) as url:
        yield url + "/"


def test_postgres_query_and_new_database(postgres_server):
    from sqlalchemy import create_engine, text

    assert postgres_server.url.startswith("postgresql+psycopg://copylab:")
    assert "@127.0.0.1:" in postgres_server.url
    engine = create_engine(postgres_server.url)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT current_user, current_database()")).one() == \
                ("copylab", "copylab_test")
            assert conn.execute(text("SELECT version()")).scalar().startswith("PostgreSQL 15.")
            conn.execute(text("CREATE TABLE t (id serial PRIMARY KEY, name text)"))
            conn.execute(text("INSERT INTO t (name) VALUES ('ä'), ('b')"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
    finally:
        engine.dispose()

    other_url = postgres_server.new_database("smoke_isolated")
    assert other_url.endswith("/smoke_isolated")
    other = create_engine(other_url)
    try:
        with other.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar() == "smoke_isolated"
            # a fresh database: the table made in the default one is not there
            assert conn.execute(text("SELECT to_regclass('t')")).scalar() is None
    finally:
        other.dispose()

    auto = postgres_server.new_database()
    assert auto != other_url and auto.rsplit("/", 1)[1].startswith("test_")


def test_postgres_requires_password(postgres_server):
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=postgres_server.port, user=postgres_server.user,
                        password="wrong", dbname=postgres_server.dbname, connect_timeout=5)


def test_redis_set_get(redis_server):
    import redis

    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        client.set("copylab:smoke", "ok", ex=60)
        assert client.get("copylab:smoke") == b"ok"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_chromium_reads_local_page(chromium_browser, page_server):
    context = chromium_browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(page_server, timeout=15_000)
        assert response is not None and response.ok
        assert page.title() == "copylab smoke"
        assert page.text_content("#greeting") == "Hello from 127.0.0.1"
    finally:
        context.close()


def test_chromium_stays_on_loopback(chromium_browser):
    """An outside URL fails at once inside Chromium (no DNS query, no packet off the host)."""
    from playwright.sync_api import Error

    page = chromium_browser.new_page()
    try:
        with pytest.raises(Error, match="ERR_PROXY_CONNECTION_FAILED"):
            page.goto("http://example.com/", timeout=10_000)
    finally:
        page.close()
