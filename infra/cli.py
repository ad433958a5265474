"""The ``oasst`` command line: the one entry point."""

from __future__ import annotations

import asyncio
import json
import os

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Event-sourced data engine for human feedback on chat models.", no_args_is_help=True)
console = Console()


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (default OASST_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default OASST_PORT or 8080)."),
    only: str | None = typer.Option(None, help="Serve only 'commands' or 'queries'."),
) -> None:
    """Serve the HTTP API (one process: it owns the write model)."""
    import uvicorn

    from infra.app import create_app
    from infra.settings import Settings

    settings = Settings.from_env()
    host = host or settings.host
    port = port or settings.port
    backend = settings.database_url.split(":", 1)[0]
    console.print(f"[bold]oasst[/] serving on [cyan]http://{host}:{port}/api/v1[/] ({backend} store)")
    console.print(f"API docs: [cyan]http://{host}:{port}/schema/swagger[/]  (OpenAPI: /schema/openapi.json)")
    if settings.bootstrap_api_key:
        console.print(f"API key: [green]{settings.bootstrap_api_key}[/] (send it as X-API-Key)")
    uvicorn.run(create_app(settings, only=only), host=host, port=port, log_level="warning",
                loop="uvloop", http="httptools", access_log=False)


@app.command()
def events(after: int = 0, limit: int = 20, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print events of the log after a position."""
    from command_api import events as ev
    from infra.settings import Settings
    from infra.store import EventStore

    store = EventStore(Settings.from_env().database_url)
    rows = store.read(after, limit)
    if as_json:
        for position, event in rows:
            typer.echo(json.dumps({"position": position, "event": ev.to_builtins(event)}))
        return
    table = Table("position", "type", "at", "user")
    for position, event in rows:
        table.add_row(str(position), ev.topic(event), event.at.isoformat(), str(event.user_id or ""))
    console.print(table)


@app.command("api-client")
def api_client(description: str = "frontend", frontend_type: str = "web", trusted: bool = False) -> None:
    """Create an API client and print its key."""
    from command_api.protocol import CreateApiClientRequest
    from command_api.service import CommandService
    from infra.settings import Settings
    from infra.store import EventStore

    async def run() -> str:
        settings = Settings.from_env()
        service = CommandService(settings, EventStore(settings.database_url))
        await service.start()
        try:
            result = await service.create_api_client(CreateApiClientRequest(description, frontend_type, trusted))
        finally:
            await service.stop()
        return json.loads(result.body)

    typer.echo(asyncio.run(run()))


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()


if __name__ == "__main__":
    main()
