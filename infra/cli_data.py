"""``oasst snapshot``, ``oasst export`` and ``oasst import`` (registered by infra.cli)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
snapshot_app = typer.Typer(help="Reproducible dataset snapshots.", no_args_is_help=True)

STATES = typer.Option([], "--state", help="Tree states (repeat; default ready_for_export; 'any' for all).")
LANGS = typer.Option([], "--lang", help="Languages (repeat; default all).")
AT = typer.Option(None, "--at", help="Log position P (default: the last one now).")
POLICY = typer.Option(
    "oa",
    help="oa (Open-Assistant's rules), trust (trust-v1: trust-weighted) or trust-v2 (posteriors of annotator models).",
)
SYNTHETIC = typer.Option("exclude", help="Trees with synthetic messages: exclude, include or only.")


def _selection(
    state: list[str],
    lang: list[str],
    deleted: str = "exclude",
    spam: str = "exclude",
    synthetic: str = "exclude",
    **more,
):
    from projections.dataset import Selection

    for name, mode in (("deleted", deleted), ("spam", spam), ("synthetic", synthetic)):
        if mode not in ("exclude", "include", "only"):
            raise typer.BadParameter(f"--{name} must be exclude, include or only")
    states = () if state == ["any"] else tuple(state) or Selection.states
    return Selection(states=states, langs=tuple(lang), deleted=deleted, spam=spam, synthetic=synthetic, **more)


def _settings():
    from infra.settings import Settings

    return Settings.from_env()


@snapshot_app.command("create")
def snapshot_create(
    at: int | None = AT,
    policy: str = POLICY,
    state: list[str] = STATES,
    lang: list[str] = LANGS,
    deleted: str = typer.Option("exclude", help="Deleted messages: exclude or include."),
    spam: str = typer.Option("exclude", help="Messages not accepted by review: exclude or include."),
    synthetic: str = SYNTHETIC,
    min_review_count: int = typer.Option(0, help="Leave out messages with fewer reviews."),
    sft_max_rank: int | None = typer.Option(None, help="SFT: keep conversations whose last reply ranked < k."),
    from_id: str | None = typer.Option(None, "--from", help="Re-derive this snapshot (same P, policy, filters)."),
    exclusions: str = typer.Option("as_of_position", help="Spammers left out: as_of_position, or latest."),
) -> None:
    """Write a snapshot of the log up to P under a policy (the same inputs give the same bytes)."""
    from projections.snapshot import NoRoom, SnapshotError, create_snapshot, snapshot_spec

    settings = _settings()
    try:
        spec = snapshot_spec(
            settings.data_dir,
            from_id,
            exclusions,
            position=at,
            policy=policy,
            sft_max_rank=sft_max_rank,
            selection=_selection(state, lang, deleted, spam, synthetic, min_review_count=min_review_count),
        )
        manifest = create_snapshot(settings, spec)
    except NoRoom as e:
        typer.echo(f"snapshot not written: {e}", err=True)
        raise typer.Exit(1) from None
    except SnapshotError as e:
        raise typer.BadParameter(str(e)) from None
    table = Table(
        "stage", "rows", "seconds", "rows/s", title=f"snapshot {manifest['id']} at position {manifest['position']}"
    )
    for stage, t in manifest["timings"].items():
        table.add_row(stage, str(t["rows"]), f"{t['seconds']:.3f}", str(t["rows_per_second"] or ""))
    console.print(table)
    console.print(f"files: {settings.data_dir / 'snapshots' / manifest['id']}")


@snapshot_app.command("list")
def snapshot_list() -> None:
    """List the snapshots in $OASST_DATA_DIR/snapshots."""
    from projections.snapshot import list_snapshots

    table = Table("id", "position", "policy", "trees", "sft", "dpo", "parent")
    for m in (s.manifest for s in list_snapshots(_settings().data_dir)):
        c = m["counts"]
        table.add_row(
            m["id"],
            str(m["position"]),
            m["policy"]["version"],
            str(c["trees"]),
            str(c["sft.parquet"]),
            str(c["dpo.parquet"]),
            m["parent"] or "",
        )
    console.print(table)


@snapshot_app.command("show")
def snapshot_show(snapshot_id: str) -> None:
    """Print a snapshot's manifest."""
    from projections.snapshot import SnapshotError, load_manifest

    try:
        typer.echo(json.dumps(load_manifest(_settings().data_dir, snapshot_id), indent=2))
    except SnapshotError as e:
        raise typer.BadParameter(str(e)) from None


def export(
    out: Path | None = typer.Argument(None, help="Output file: .jsonl or .jsonl.gz (or --export-file)."),
    at: int | None = AT,
    policy: str = POLICY,
    state: list[str] = STATES,
    lang: list[str] = LANGS,
    deleted: str = typer.Option("exclude", help="Deleted messages: exclude, include or only."),
    spam: str = typer.Option("exclude", help="Messages not accepted by review: exclude, include or only."),
    synthetic: str = SYNTHETIC,
    user: str | None = typer.Option(None, help="Only this user's messages (flat lines)."),
    prompts_only: bool = typer.Option(False, help="Only initial prompts."),
    labels: bool = typer.Option(False, help="Include label means and counts."),
    events: bool = typer.Option(False, help="Include emoji, rating and ranking events."),
    limit: int | None = typer.Option(None, help="At most this many trees (or messages, when flat)."),
    anonymizer_seed: str | None = typer.Option(None, help="Replace ids with sha256(collection:id + seed)."),
    # Open-Assistant's exporter (backend/export.py) flags, accepted as aliases of the above.
    export_file: Path | None = typer.Option(None, help="OA's name for OUT."),
    include_deleted: bool = typer.Option(False, "--include-deleted", help="OA's name for --deleted include."),
    deleted_only: bool = typer.Option(False, "--deleted-only", help="OA's name for --deleted only."),
    include_spam: bool = typer.Option(False, "--include-spam", help="OA's name for --spam include."),
    spam_only: bool = typer.Option(False, "--spam-only", help="OA's name for --spam only."),
    include_synthetic: bool = typer.Option(False, "--include-synthetic", help="OA's name for --synthetic include."),
    synthetic_only: bool = typer.Option(False, "--synthetic-only", help="OA's name for --synthetic only."),
    export_labels: bool = typer.Option(False, "--export-labels", help="OA's name for --labels."),
    export_events: bool = typer.Option(False, "--export-events", help="OA's name for --events."),
) -> None:
    """Export trees (or messages) in Open-Assistant's format, with its exporter's options."""
    out = _one_output(out, export_file)
    deleted = _alias("deleted", deleted, include=include_deleted, only=deleted_only)
    spam = _alias("spam", spam, include=include_spam, only=spam_only)
    synthetic = _alias("synthetic", synthetic, include=include_synthetic, only=synthetic_only)
    labels, events = labels or export_labels, events or export_events
    from infra.oasst_format import dumps, open_text
    from infra.store import EventStore
    from projections.dataset import Dataset, fold_at

    settings = _settings()
    sel = _selection(state, lang, deleted, spam, synthetic, user=user, prompts_only=prompts_only, limit=limit)
    store = EventStore(settings.database_url)
    try:
        state_at = fold_at(store, at)
    finally:
        store.close()
    dataset = Dataset(
        state_at,
        policy,
        state_at.spammers,
        state_at.deleted_users,
        settings.tree,
        anonymiser_seed=anonymizer_seed,
        with_labels=labels,
        with_events=events,
    )
    n = _write_export(out, dataset.items(sel), dumps, open_text)
    typer.echo(f"wrote {n} {'messages' if sel.flat else 'trees'} to {out} (log position {state_at.position})")


def _write_export(out: Path, items, dumps, open_text) -> int:
    """Write beside ``out`` and rename: a full disk leaves no half file under its name (the
    partial file keeps ``out``'s ending, which says whether to gzip)."""
    from projections.snapshot import ROOM_ERRNOS

    partial = out.with_name(f".partial-{out.name}")
    n = 0
    try:
        with open_text(partial, "wt") as f:
            for item in items:
                f.write(dumps(item) + "\n")
                n += 1
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if exc.errno not in ROOM_ERRNOS:
            raise
        typer.echo(f"export not written: no room under {out.parent} ({exc.strerror}); nothing was kept", err=True)
        raise typer.Exit(1) from None
    return n


def _one_output(out: Path | None, export_file: Path | None) -> Path:
    if out and export_file and out != export_file:
        raise typer.BadParameter(f"two output files given: {out} and --export-file {export_file}")
    if not (out or export_file):
        raise typer.BadParameter("name the output file (OUT or --export-file)")
    return out or export_file


def _alias(name: str, value: str, include: bool, only: bool) -> str:
    """--NAME exclude|include|only from OA's --include-NAME / --NAME-only flags."""
    if include and only:
        raise typer.BadParameter(f"--include-{name} and --{name}-only exclude each other")
    flag = "include" if include else "only" if only else None
    if flag and value not in ("exclude", flag):
        raise typer.BadParameter(f"--{name} {value} contradicts OA's flag for {flag!r}")
    return flag or value


def import_(
    path: Path = typer.Argument(..., help="An oasst file: trees or flat messages, .jsonl or .jsonl.gz."),
    origin: str | None = typer.Option(None, help="Origin recorded on the trees (default: the file name)."),
    api_url: str | None = typer.Option(
        None, envvar="OASST_API_URL", help="Import through a running server (else straight into the store)."
    ),
    api_key: str | None = typer.Option(None, envvar="OASST_API_KEY", help="A trusted API key (with --api-url)."),
    batch: int = typer.Option(500, help="Trees per request (with --api-url)."),
) -> None:
    """Import an oasst file, as Open-Assistant's importer did (idempotent)."""
    from infra.oasst_format import FormatError, parse_items, read_lines

    try:
        items = list(read_lines(path))
        trees = parse_items(items)  # the whole file is checked before anything is written
    except FormatError as e:
        typer.echo(f"not imported: {e}", err=True)
        raise typer.Exit(1) from None
    origin = origin or path.name
    if api_url:
        totals = _import_over_http(api_url, api_key, origin, [i for _, i in items], batch)
    else:
        totals = asyncio.run(_import_direct(origin, trees))
    typer.echo(
        f"{path}: {totals['trees_imported']} trees imported ({totals['messages_imported']} messages), "
        f"{totals['trees_skipped']} already there"
    )


def _import_over_http(api_url: str, api_key: str | None, origin: str, items: list[dict], batch: int) -> dict:
    import httpx

    totals = {"trees_imported": 0, "trees_skipped": 0, "messages_imported": 0}
    with httpx.Client(base_url=api_url.rstrip("/"), headers={"X-API-Key": api_key or ""}, timeout=120) as client:
        for start in range(0, len(items), batch):
            r = client.post("/api/v1/admin/import", json={"origin": origin, "items": items[start : start + batch]})
            if r.status_code != 200:
                raise typer.BadParameter(f"the server refused the import: {r.status_code} {r.text}")
            for k, v in r.json().items():
                totals[k] += v
    return totals


async def _import_direct(origin: str, trees: list) -> dict:
    """Into the store with an in-process command service (no server may run meanwhile:
    it would not see the new trees until restarted; use --api-url then)."""
    import secrets

    from command_api.service import CommandService
    from domain import protocol as p
    from infra.store import EventStore

    settings = _settings()
    store = EventStore(settings.database_url)
    service = CommandService(settings, store)
    await service.start()
    try:
        client = next((c for c in service.model.clients.values() if c.frontend_type == "oasst-import"), None)
        if client is None:
            key = secrets.token_urlsafe(32)
            await service.create_api_client(
                p.CreateApiClientRequest("oasst import (CLI)", "oasst-import", trusted=True), key
            )
            client = service.client_for_key(key)
        return json.loads((await service.import_trees(client, origin, trees)).body)
    finally:
        await service.stop()
        store.close()


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
    app.command("export")(export)
    app.command("import")(import_)
