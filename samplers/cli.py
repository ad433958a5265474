"""CLI commands (registered by infra.cli): ``oasst sample`` and ``oasst sample-post``."""

from __future__ import annotations

import json

import typer

from samplers.configs import CONFIGS


def register(app: typer.Typer) -> None:
    app.command("sample")(sample)
    app.command("sample-post")(sample_post)


def sample(
    snapshot: str = typer.Option(
        ..., "--snapshot", help="Snapshot id (under OASST_DATA_DIR/snapshots) or its directory."
    ),
    model: str = typer.Option(..., "--model", help="A local model directory (transformers/vLLM loadable)."),
    backend: str = typer.Option("transformers", "--backend", help="transformers (CPU) or vllm (GPU)."),
    n: int = typer.Option(4, "--n", help="Completions per thread and config (greedy: one)."),
    config: list[str] = typer.Option(
        ["top_k_50"], "--config", help=f"Generation config, repeatable: {', '.join(CONFIGS)}."
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same completions."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A Ray cluster (default: start Ray locally)."),
    api_url: str | None = typer.Option(
        None, "--api-url", help="Post the replies here, e.g. http://127.0.0.1:8080/api/v1"
    ),
    api_key: str | None = typer.Option(None, "--api-key", help="A trusted API client's key (X-API-Key)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens"),
    out: str | None = typer.Option(
        None, "--out", help="Directory for completions.parquet (default: OASST_DATA_DIR/samples/<snapshot>-<run>)."
    ),
    actors: int = typer.Option(1, "--actors", help="Generator actors (each loads the model; vllm: one GPU each)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Threads per map_batches call."),
) -> None:
    """Sample completions for a snapshot's threads on Ray and post them as ranking-only trees."""
    from samplers.job import sample_completions

    summary = sample_completions(
        snapshot,
        model,
        backend=backend,
        n=n,
        configs=config,
        seed=seed,
        max_new_tokens=max_new_tokens,
        out=out,
        api_url=api_url,
        api_key=api_key,
        ray_address=ray_address,
        actors=actors,
        batch_size=batch_size,
    )
    typer.echo(json.dumps(summary, indent=2))
    if not api_url:
        typer.echo("not posted (no --api-url); post later with: oasst sample-post " + summary["completions"])


def sample_post(
    path: str = typer.Argument(..., help="A completions.parquet written by oasst sample."),
    api_url: str = typer.Option(..., "--api-url", help="e.g. http://127.0.0.1:8080/api/v1"),
    api_key: str = typer.Option(..., "--api-key", help="A trusted API client's key."),
    batch_size: int = typer.Option(50, "--batch-size", help="Trees per request."),
) -> None:
    """Post a completions file again (idempotent: trees already imported are skipped)."""
    from samplers.job import post_completions

    typer.echo(json.dumps(post_completions(path, api_url=api_url, api_key=api_key, batch_size=batch_size)))
