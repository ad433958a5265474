"""``oasst user erase``: crypto-shred a user from the command line (issue #19)."""

from __future__ import annotations

import asyncio

import typer

users_app = typer.Typer(help="Users: erasure.", no_args_is_help=True)


@users_app.command("erase")
def erase(
    user_id: str = typer.Argument(..., help="Our user id (as the API's user_id)."),
    reason: str = typer.Option("", help="Recorded in the user_erased event."),
) -> None:
    """Destroy the user's key: their texts and display name read as erased everywhere, in
    every replay; labels, rankings and trees stay. Appends user_erased (run it with the
    server stopped, or use POST /api/v1/admin/users/{id}/erase on a running one: one
    process owns the write model)."""
    from command_api.service import CommandService
    from domain.errors import OasstError
    from infra.checkpoints import Checkpoints
    from infra.settings import Settings
    from infra.store import EventStore

    async def run() -> int:
        settings = Settings.from_env()
        store = EventStore(settings.database_url)
        on_disk = ":memory:" not in settings.database_url
        checkpoints = Checkpoints(settings.checkpoints_folder) if on_disk else None  # (older ones go)
        service = CommandService(settings, store, checkpoints=checkpoints)
        await service.start()
        try:
            return (await service.erase_user(None, user_id, reason)).position
        finally:
            await service.stop()
            store.close()

    try:
        position = asyncio.run(run())
    except OasstError as exc:
        typer.echo(f"not erased: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"user {user_id} erased (log position {position})")


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="user")
