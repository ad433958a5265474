"""CLI commands for Kafka (registered by infra.cli): ``oasst relay``, ``oasst snapshots follow``."""

from __future__ import annotations

import json
import signal
import time

import typer


def _settings():
    from infra.settings import Settings

    settings = Settings.from_env()
    if not settings.kafka.bootstrap:
        raise typer.BadParameter("set OASST_KAFKA_BOOTSTRAP (host:port of the Kafka brokers)")
    return settings


def _stop_flag() -> list:
    """SIGINT/SIGTERM only raise a flag: a page is never left half-published and unrecorded."""
    stopping: list = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    return stopping


def relay(
    once: bool = typer.Option(False, "--once", help="Publish what the log holds now, then exit."),
    page_size: int | None = typer.Option(None, help="Events per produce request (default OASST_KAFKA_RELAY_PAGE)."),
    poll: float = typer.Option(0.2, help="Seconds between reads of the log when idle."),
) -> None:
    """Publish every event of the log, in order, to Kafka (and snapshot manifests to the
    snapshots topic); resumes from its stored position."""
    from infra.relay import Relay
    from infra.store import EventStore

    settings = _settings()
    store = EventStore(settings.database_url)
    r = Relay(store, settings.kafka, page_size=page_size)
    stopping = _stop_flag()
    typer.echo(f"relay: log at {store.max_position()}, published up to {r.position}; "
               f"to {settings.kafka.events_topic} ({r.partitions} partitions) on {settings.kafka.bootstrap}")
    started = time.monotonic()
    try:
        done = r.run(stop=lambda: bool(stopping), poll=poll, until_idle=once)
    finally:
        r.close()
    seconds = time.monotonic() - started
    typer.echo(f"relay: published {done} events in {seconds:.1f} s, position {r.position}")


def follow(
    group: str = typer.Option("oasst-snapshots", help="Consumer group: each snapshot is shown once per group."),
    count: int | None = typer.Option(None, help="Stop after this many snapshots."),
    timeout: float | None = typer.Option(None, help="Stop after this many seconds without a new snapshot."),
    new_only: bool = typer.Option(False, "--new-only", help="A new group starts at the end (default: all)."),
) -> None:
    """Print each new snapshot manifest (one JSON line each) as it is published."""
    from infra.kafka import follow_snapshots

    settings = _settings()
    for n, snapshot in enumerate(follow_snapshots(settings.kafka, group, timeout=timeout,
                                                  from_beginning=not new_only), start=1):
        typer.echo(json.dumps(snapshot, sort_keys=True))
        if count is not None and n >= count:
            break


def register(app: typer.Typer) -> None:
    app.command("relay")(relay)
    snapshots = typer.Typer(help="Dataset snapshots published to Kafka.", no_args_is_help=True)
    snapshots.command("follow")(follow)
    app.add_typer(snapshots, name="snapshots")
