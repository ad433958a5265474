"""The page at ``/``: plain HTML pointing a newcomer to the API docs, the API and the metrics."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import make_settings


async def test_the_root_is_a_small_page_that_points_to_the_docs(tmp_path):
    async with AsyncTestClient(create_app(make_settings(f"sqlite:///{tmp_path / 'oasst.sqlite3'}", tmp_path))) as c:
        r = await c.get("/")  # no API key: the page is public
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for link in (
        'href="/console/"',
        'href="/schema/swagger"',
        'href="/schema/openapi.json"',
        'href="/api/v1/"',
        'href="/metrics"',
    ):
        assert link in r.text
    assert "issue #17" in r.text and "<script" not in r.text
