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
    if only is None:  # the console reads the views and acts through commands: the whole server
        console.print(f"Console: [cyan]http://{host}:{port}/console/[/]  (sign in with a trusted API key)")
    if settings.bootstrap_api_key:
        console.print(f"API key: [green]{settings.bootstrap_api_key}[/] (send it as X-API-Key)")
    uvicorn.run(
        create_app(settings, only=only),
        host=host,
        port=port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        access_log=False,
    )


@app.command()
def events(after: int = 0, limit: int = 20, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print events of the log after a position."""
    from domain import events as ev
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
    from command_api.service import CommandService
    from domain.protocol import CreateApiClientRequest
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


project = typer.Typer(help="Projections: run the runner alone, rebuild views.", no_args_is_help=True)
app.add_typer(project, name="project")


def _store():
    from infra.settings import Settings
    from infra.store import EventStore

    return EventStore(Settings.from_env().database_url)


@project.command("run")
def project_run(
    poll: float = typer.Option(0.2, help="Seconds between polls of the log when idle."),
    source: str = typer.Option("log", help="'log' (the local event store) or 'kafka' (the relay's topic)."),
    group: str = typer.Option("oasst-projectors", help="With --source kafka: the consumer group sharing the work."),
) -> None:
    """Keep the views up to date, alone (without serving HTTP). Ctrl-C stops after a flush.
    With --source kafka, processes of one group share the partitions of the events topic."""
    import signal
    import time

    stopping = []  # Ctrl-C only raises a flag: a fold is never cut in half
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    if source == "kafka":
        from infra.settings import Settings
        from projections.kafka_source import connect

        settings = Settings.from_env()
        if not settings.kafka.bootstrap:
            raise typer.BadParameter("--source kafka needs OASST_KAFKA_BOOTSTRAP")
        projector = connect(_store(), settings.kafka, group, lambda: bool(stopping))  # waits for the broker
        if projector is None:
            return
        projector.on_assigned = lambda partitions: print(f"partitions {partitions}", flush=True)
        print(f"projecting {settings.kafka.events_topic} in group {group} (Ctrl-C to stop)", flush=True)
        try:
            projector.run(stop=lambda: bool(stopping))
        finally:
            projector.close()
        console.print(f"stopped; folded {projector.folded} events")
        return
    if source != "log":
        raise typer.BadParameter("--source is 'log' or 'kafka'")
    from projections.runner import ProjectionRunner

    runner = ProjectionRunner(_store())
    runner.restore()
    print(f"views at position {runner.position}; following the log (Ctrl-C to stop)", flush=True)
    while not stopping:
        if not runner.catch_up(stop=lambda: bool(stopping)):
            time.sleep(poll)
    runner.flush()
    console.print(f"stopped at position {runner.position}")


@project.command("rebuild")
def project_rebuild(
    name: str | None = typer.Argument(None, help="message_tree, consensus, leaderboard or history"),
    all_views: bool = typer.Option(False, "--all", help="Rebuild every view."),
) -> None:
    """Build a view anew from the whole log beside the live one, then switch atomically."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from projections.rebuild import rebuild, view_names

    names = view_names() if all_views else [n for n in view_names() if n == name]
    if not names:
        raise typer.BadParameter(f"name one of {view_names()} or pass --all")
    store = _store()
    columns = [TextColumn("rebuilding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("events", total=store.max_position())
        done = rebuild(store, names, progress=lambda n: bar.advance(task, n))
    console.print(f"folded {done['events']} events in {done['fold_seconds']:.1f} s")
    for live, seconds in done["switch_seconds"].items():
        console.print(f"[green]{live}[/] rebuilt from {done['events']} events, switched ({seconds:.1f} s)")


@app.command()
def replay(
    user: str | None = typer.Option(None, help="A user id."),
    tree: str | None = typer.Option(None, help="A tree id (its prompt's id)."),
    message: str | None = typer.Option(None, help="A message id."),
    until: int | None = typer.Option(None, help="Stop at this log position."),
) -> None:
    """Print a readable timeline of everything that concerns a user, tree or message."""
    from uuid import UUID

    from domain import events as ev
    from projections.history import HistoryView

    given = [v for v in (user, tree, message) if v]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --user, --tree, --message")
    entity = str(UUID(given[0]))
    store, index, after = _store(), HistoryView(), 0
    table = Table("position", "at", "event", "actor", "details")
    while True:
        page = store.read_stored(after, 10_000)
        page = [n for n in page if until is None or n.id <= until]
        if not page:
            break
        for n in page:
            event = ev.decode(n.state)
            index.apply(n.id, event)
            if any(str(e) == entity for e, _ in index.take_entries()):
                details = {
                    k: v
                    for k, v in ev.to_builtins(event).items()
                    if k not in ("type", "id", "at", "user_id", "api_client_id", "schema", "payload")
                }
                table.add_row(
                    str(n.id),
                    event.at.strftime("%Y-%m-%d %H:%M:%S"),
                    n.topic,
                    str(event.user_id or "system")[:8],
                    json.dumps(details, default=str)[:120],
                )
        after = page[-1].id
    console.print(table)


@app.command()
def seed(
    trees: int = typer.Option(100, help="Initial prompts to write."),
    users: int = typer.Option(50, help="Simulated users (diligent, lazy, spammer, random ranker, troll)."),
    seed: int = typer.Option(0, help="Same seed, same history (ids, times, order)."),
    scale: str | None = typer.Option(
        None, help="'oa' for an Open-Assistant-sized history (~5M events), 'oa/N' for 1/N."
    ),
) -> None:
    """Generate a realistic synthetic history through the domain rules into an empty store."""
    from devkit.simulator import seed_command

    seed_command(trees=trees, users=users, seed=seed, scale=scale)


def _register_plugins() -> None:
    """Commands that live beside their code (snapshots, SQL, report, Kafka, sampling, training)."""
    import importlib

    for module in (
        "infra.cli_data",
        "infra.cli_sql",
        "infra.cli_report",
        "infra.cli_kafka",
        "infra.cli_users",
        "samplers.cli",
        "trainers.cli",
    ):
        importlib.import_module(module).register(app)


_register_plugins()


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    app()


if __name__ == "__main__":
    main()
