"""The page at ``/``: where a newcomer finds the console, the API docs, the API and the metrics. Plain
HTML, no JavaScript, so that it reads in any browser or with curl."""

from __future__ import annotations

from litestar import MediaType, get

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>oasst data engine</title></head>
<body>
<h1>oasst data engine</h1>
<p>An event-sourced data engine for human feedback on chat models, speaking
Open-Assistant's backend protocol.</p>
<ul>
<li><a href="/console/">The console</a> for moderators (issue #17): overview, trees replayed event
by event, users and their trust, spam marks with a preview, the moderation queue, boards and
snapshots (sign in with a trusted API client's key)</li>
<li><a href="/schema/swagger">API docs</a> (Swagger UI) and the
<a href="/schema/openapi.json">OpenAPI schema</a></li>
<li><a href="/api/v1/">/api/v1/</a>: the API (send your key as <code>X-API-Key</code>)</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
</body>
</html>
"""


@get("/", media_type=MediaType.HTML, include_in_schema=False)
async def landing() -> str:
    return PAGE
