"""``oasst sql``: read-only SQL over the SQL read models or a snapshot (registered by infra.cli)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
SHOWN = 200  # rows printed; --out writes them all


def sql(
    query: str = typer.Argument(..., help='A SELECT, e.g. "SELECT lang, count(*) FROM messages GROUP BY lang".'),
    snapshot: str | None = typer.Option(
        None, "--snapshot", help="Run over this snapshot's parquet files (id, path or latest)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write the answer to a .csv or .parquet file."),
) -> None:
    """Read-only SQL over the live tables (messages, trees, users), or over a snapshot."""
    from infra.settings import Settings
    from projections.snapshot import open_snapshot
    from projections.sql import SQLError, live_query, snapshot_query

    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter("--out must end in .csv or .parquet")
    settings = Settings.from_env()
    try:
        if snapshot:
            frame = snapshot_query(open_snapshot(snapshot, settings.data_dir).dir, query)
        else:
            frame = live_query(settings.database_url, query)
    except (SQLError, FileNotFoundError) as exc:
        console.print(f"[red]query failed[/] (oasst sql only reads): {exc}")
        raise typer.Exit(1) from exc
    if out is None:
        _print(frame)
    elif out.suffix == ".csv":
        frame.write_csv(out)
    else:
        frame.write_parquet(out)
    if out is not None:
        console.print(f"{len(frame)} rows written to {out}")


def _print(frame) -> None:
    table = Table(*frame.columns)
    for row in frame.head(SHOWN).iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    if len(frame) > SHOWN:
        console.print(f"{len(frame)} rows, {SHOWN} shown (--out FILE writes them all)")


def register(app: typer.Typer) -> None:
    app.command("sql")(sql)
