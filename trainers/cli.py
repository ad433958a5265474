"""``oasst train sft|rm|dpo|grpo|rloo`` (registered by infra.cli)."""

from __future__ import annotations

import json

import typer

from trainers.jobs import KINDS

HELP = {
    "sft": "Supervised fine-tuning on the snapshot's conversations (sft.parquet), loss on assistant tokens only.",
    "rm": "Reward model on ranked replies (rm.parquet): TRL's RewardTrainer on chosen/rejected, or --loss oa.",
    "dpo": "DPO on every ordered preference pair of the ranking consensus (dpo.parquet).",
    "grpo": "GRPO on the snapshot's prompts (prompts.parquet), rewarded by a trained reward model.",
    "rloo": "RLOO on the snapshot's prompts (prompts.parquet), rewarded by a trained reward model.",
}


def _command(kind: str):
    def command(
        snapshot: str | None = typer.Option(
            None, "--snapshot", help="Snapshot id, its folder, or 'latest' (with --follow: start there)."
        ),
        model: str = typer.Option(
            ..., "--model", help="Model folder to start from (for rm: a causal LM gets a new reward head)."
        ),
        out: str = typer.Option(..., "--out", help="Output folder (with --follow: one sub-folder per snapshot)."),
        num_workers: int = typer.Option(1, "--num-workers", help="Ray Train workers (DDP)."),
        use_gpu: bool = typer.Option(False, "--use-gpu", help="One GPU per worker."),
        seed: int = typer.Option(0, "--seed", help="Same seed, same data order, same loss curve."),
        max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many optimizer steps (-1: epochs)."),
        epochs: float = typer.Option(1.0, "--epochs"),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: TRL's for the trainer)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Per worker (grpo/rloo: completions)."),
        grad_accum: int = typer.Option(1, "--grad-accum"),
        max_length: int = typer.Option(512, "--max-length", help="Longer examples are dropped (sft: cut)."),
        logging_steps: int = typer.Option(1, "--logging-steps", help="Steps between metrics.jsonl lines."),
        bf16: bool = typer.Option(False, "--bf16", help="bf16 mixed precision (GPU)."),
        loss: str = typer.Option(
            "trl",
            "--loss",
            help="rm: 'trl' (chosen vs rejected) or 'oa' (Open-Assistant's: "
            "all ordered pairs over the ranked replies, plus an r² term).",
        ),
        oa_l2: float = typer.Option(0.001, "--oa-l2", help="rm --loss oa: weight of the r² term."),
        beta: float | None = typer.Option(None, "--beta", help="dpo/grpo/rloo: KL weight (default: TRL's)."),
        reward_model: str | None = typer.Option(
            None, "--reward-model", help="grpo/rloo: a reward model folder (from `oasst train rm`)."
        ),
        num_generations: int = typer.Option(4, "--num-generations", help="grpo/rloo: completions per prompt."),
        max_completion_length: int = typer.Option(32, "--max-completion-length", help="grpo/rloo."),
        launcher: str = typer.Option(
            "train",
            "--launcher",
            help="train (Ray Train TorchTrainer), task (one Ray "
            "task: no worker-group start-up, one process) or local (no Ray).",
        ),
        cpus_per_worker: float = typer.Option(1, "--cpus-per-worker"),
        ray_address: str | None = typer.Option(
            None, "--ray-address", help="A Ray cluster (default: start Ray locally, or RAY_ADDRESS)."
        ),
        data_dir: str | None = typer.Option(None, "--data-dir", help="Default: OASST_DATA_DIR."),
        follow: bool = typer.Option(
            False,
            "--follow",
            help="Wait for new snapshots and train on each (Kafka when "
            "OASST_KAFKA_BOOTSTRAP is set, else --api-url, else the snapshots folder).",
        ),
        api_url: str | None = typer.Option(
            None,
            "--api-url",
            help="--follow: poll GET /snapshots here and download missing files, e.g. http://127.0.0.1:8080/api/v1",
        ),
        api_key: str | None = typer.Option(None, "--api-key", help="--follow: a trusted API key (file downloads)."),
        poll: float = typer.Option(2.0, "--poll", help="--follow: seconds between polls."),
        max_snapshots: int | None = typer.Option(None, "--max-snapshots", help="--follow: stop after this many."),
    ) -> None:
        from trainers.launch import train, train_follow

        if kind == "rm" and loss not in ("trl", "oa"):
            raise typer.BadParameter("--loss must be trl or oa")
        if kind in ("grpo", "rloo") and not reward_model:
            raise typer.BadParameter(f"{kind} needs --reward-model DIR (train one with `oasst train rm`)")
        if kind in ("grpo", "rloo") and (batch_size * grad_accum) % num_generations:
            raise typer.BadParameter("--batch-size × --grad-accum must be a multiple of --num-generations")
        options = dict(
            launcher=launcher,
            num_workers=num_workers,
            cpus_per_worker=cpus_per_worker,
            use_gpu=use_gpu,
            seed=seed,
            data_dir=data_dir,
            ray_address=ray_address,
            max_steps=max_steps,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            grad_accum=grad_accum,
            max_length=max_length,
            logging_steps=logging_steps,
            bf16=bf16,
            rm_loss=loss,
            oa_l2=oa_l2,
            beta=beta,
            reward_model=reward_model,
            num_generations=num_generations,
            max_completion_length=max_completion_length,
        )
        if follow:
            typer.echo(f"following snapshots for {kind}; models go to {out}/<snapshot id> (Ctrl-C stops)")
            train_follow(
                kind,
                model,
                out,
                start=snapshot,
                api_url=api_url,
                api_key=api_key,
                poll=poll,
                max_snapshots=max_snapshots,
                on_trained=lambda lin: typer.echo(_brief(lin)),
                **options,
            )
            return
        if not snapshot:
            raise typer.BadParameter("give --snapshot ID (or --follow)")
        typer.echo(json.dumps(train(kind, snapshot, model, out, **options), indent=2))

    command.__doc__ = HELP[kind]
    return command


def _brief(lineage: dict) -> str:
    m = lineage["metrics"]
    return json.dumps(
        {
            "snapshot_id": lineage["snapshot_id"],
            "trainer": lineage["trainer"]["kind"],
            "steps": m["steps"],
            "final_loss": m["final_loss"],
            "wall_seconds": round(m["wall_seconds"], 1),
        }
    )


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(
        help="Train on snapshots with TRL on Ray (lineage.json beside every model).", no_args_is_help=True
    )
    for kind in KINDS:
        train_app.command(kind)(_command(kind))
    app.add_typer(train_app, name="train")
