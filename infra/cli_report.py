"""``oasst report``: a self-contained HTML page of charts (registered by infra.cli)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def report(
    out: Path = typer.Option(Path("report.html"), "--out", help="Where to write the page (.html)."),
    snapshot: str | None = typer.Option(
        None, "--snapshot", help="Chart this snapshot (id, path or latest) instead of the live tables."
    ),
) -> None:
    """Charts of the data: messages per day, tree-state funnel, labels, agreement, trust, activity."""
    from infra.settings import Settings
    from projections.report import write_report
    from projections.snapshot import open_snapshot
    from projections.sql import SQLError

    if out.suffix.lower() not in (".html", ".htm"):
        raise typer.BadParameter("--out must end in .html")
    settings = Settings.from_env()
    started = time.perf_counter()
    try:
        if snapshot:
            write_report(out, snapshot_dir=open_snapshot(snapshot, settings.data_dir).dir)
        else:
            write_report(out, database_url=settings.database_url)
    except (SQLError, FileNotFoundError) as exc:
        console.print(f"[red]no report[/]: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"report written to {out} ({out.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s)")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
