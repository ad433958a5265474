"""The whole loop on tiny local models on CPU (``make pipeline``): seed a history, snapshot it,
sample completions for its prompts, let simulated rankers rank them through the command API,
snapshot again, then SFT, a reward model and GRPO on the second snapshot, printing each
step's lineage.

    .venv/bin/python -m trainers.pipeline [--workdir DIR] [--launcher train|task] [--seed 4]

The work dir (default ``$OASST_DATA_DIR/pipeline``, i.e. ``var/pipeline``, emptied at the start)
keeps the store, the snapshots, the samples and the models afterwards. Everything talks to a
real ``oasst serve`` (a subprocess on a free port with a SQLite store in the work dir), as a
frontend and a training pipeline would. The simulated rankers prefer
longer replies (more words), so the reward model has something to learn.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from devkit.brokers import free_port
from infra.settings import Settings

API_KEY = "pipeline-key"


def say(step: str, detail: str = "") -> None:
    print(f"\n== {step}" + (f": {detail}" if detail else ""), flush=True)


@contextlib.contextmanager
def serve(url: str, data_dir: Path, log: Path):
    """``oasst serve`` in its own process group; backlog trees activate whenever a tree finishes."""
    port = free_port()
    env = {
        **os.environ,
        "OASST_DATABASE_URL": url,
        "OASST_DATA_DIR": str(data_dir),
        "OASST_HOST": "127.0.0.1",
        "OASST_PORT": str(port),
        "OASST_BOOTSTRAP_API_KEY": API_KEY,
        "OASST_TREE_P_ACTIVATE_BACKLOG_TREE": "1.0",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": API_KEY}, timeout=120)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                api.get("/snapshots").raise_for_status()
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"oasst serve did not start; see {log}") from None
                time.sleep(0.2)
        yield api
    finally:
        api.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def snapshot(api: httpx.Client, **options) -> dict:
    answer = api.post("/snapshots", json=options)
    answer.raise_for_status()
    manifest = answer.json()
    counts = {k.removesuffix(".parquet"): v for k, v in manifest["counts"].items()}
    print(
        f"snapshot {manifest['id']} at log position {manifest['position']}, policy "
        f"{manifest['policy']['name']}@{manifest['policy']['version']}: {counts}"
    )
    return manifest


def preference(replies: list[dict]) -> list[int]:
    """A simulated ranker: more words first (ties: shorter text, then text)."""
    return sorted(
        range(len(replies)),
        key=lambda i: (-len(replies[i]["text"].split()), len(replies[i]["text"]), replies[i]["text"]),
    )


def rank_everything(api: httpx.Client, our_trees: set[str], rankers: int = 20, rounds: int = 25) -> dict:
    """Rankers ask for ranking tasks until none is left. A finished tree activates one of the
    sampled backlog trees; when nothing is being ranked, a moderator halts one sampled tree
    still in the backlog, which activates another (as OA's backlog works)."""
    users = [{"id": f"ranker-{i:02d}", "display_name": f"Ranker {i}", "auth_method": "local"} for i in range(rankers)]
    done = {"rankings": 0, "on_sampled_trees": 0, "halted": 0}
    for _ in range(rounds):
        progress = False
        for who in users:
            task = api.post("/tasks/", json={"type": "rank_assistant_replies", "user": who, "lang": "en"})
            if task.status_code != 200:
                continue
            task = task.json()
            frontend_id = f"fe-{task['id']}"
            api.post(f"/tasks/{task['id']}/ack", json={"message_id": frontend_id}).raise_for_status()
            api.post(
                "/tasks/interaction",
                json={
                    "type": "message_ranking",
                    "user": who,
                    "message_id": frontend_id,
                    "ranking": preference(task["reply_messages"]),
                    "not_rankable": False,
                },
            ).raise_for_status()
            done["rankings"] += 1
            done["on_sampled_trees"] += task["message_tree_id"] in our_trees
            progress = True
        if progress:
            continue
        waiting = [
            t for t in sorted(our_trees) if api.get(f"/messages/{t}/tree/state").json()["state"] == "backlog_ranking"
        ]
        if not waiting:
            break
        api.put(f"/messages/{waiting[0]}/tree/state", params={"halt": "true"}).raise_for_status()
        done["halted"] += 1
    states: dict[str, int] = {}
    for t in our_trees:
        state = api.get(f"/messages/{t}/tree/state").json()["state"]
        states[state] = states.get(state, 0) + 1
    return {**done, "sampled_trees_by_state": states}


def show(lineage: dict) -> None:
    """The lineage, short: where the model came from and how training went."""
    m = lineage["metrics"]
    brief = {
        "snapshot_id": lineage["snapshot_id"],
        "manifest_sha256": lineage["manifest_sha256"][:16] + "…",
        "policy": lineage["policy"],
        "data_file": lineage["data_file"],
        "base_model": lineage["base_model"],
        "reward_model": lineage["reward_model"],
        "trainer": lineage["trainer"]["class"],
        "launcher": lineage["launcher"]["kind"],
        "seed": lineage["seed"],
        "code_version": lineage["code_version"],
        "metrics": {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in m.items()
            if k
            in (
                "steps",
                "rows",
                "first_loss",
                "final_loss",
                "accuracy",
                "reward",
                "train_steps_per_second",
                "wall_seconds",
                "launch_overhead_seconds",
            )
        },
    }
    for ref in ("base_model", "reward_model"):
        if brief[ref] and brief[ref].get("manifest_sha256"):
            brief[ref] = {
                **brief[ref],
                "manifest_sha256": brief[ref]["manifest_sha256"][:16] + "…",
                "trainer": brief[ref]["trainer"]["kind"],
            }
    print(json.dumps(brief, indent=2, ensure_ascii=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="keep everything here (default: $OASST_DATA_DIR/pipeline, emptied first)")
    ap.add_argument("--launcher", default="train", choices=["train", "task", "local"])
    ap.add_argument("--trees", type=int, default=20)
    ap.add_argument("--users", type=int, default=15)
    ap.add_argument("--seed", type=int, default=4)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.workdir:
        work = Path(args.workdir)
    else:
        work = Settings.from_env().data_dir / "pipeline"
        shutil.rmtree(work, ignore_errors=True)  # each run seeds a new store: start from nothing
    work.mkdir(parents=True, exist_ok=True)
    run(work.resolve(), args)


def run(work: Path, args) -> None:
    import logging

    import polars as pl
    import ray

    from devkit.simulator import seed_history
    from devkit.tiny_lm import build_tiny_lm
    from samplers import sample_completions
    from trainers.jobs import pair_accuracy, quiet
    from trainers.launch import train

    quiet()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the sampler's per-dataset progress lines
    started = time.perf_counter()
    data_dir, url = work / "data", f"sqlite:///{work / 'oasst.sqlite3'}"
    data_dir.mkdir(exist_ok=True)
    say("1. seed a history", f"{args.trees} trees, {args.users} users, seed {args.seed}")
    s = seed_history(url, trees=args.trees, users=args.users, seed=args.seed)
    print(f"{s['events']:,} events: {s['messages']} messages, {s['labels']} labels, {s['rankings']} rankings")

    with serve(url, data_dir, work / "serve.log") as api:
        say("2. snapshot", "POST /api/v1/snapshots")
        first = snapshot(api)
        snap_dir = data_dir / "snapshots" / first["id"]
        texts = [
            t["content"]
            for f in ("sft", "prompts")
            for m in pl.read_parquet(snap_dir / f"{f}.parquet")["messages"].to_list()
            for t in m
        ]
        lm = build_tiny_lm(work / "tiny-lm", texts, seed=0)
        print(f"tiny Llama with a tokenizer trained on the snapshot's {len(texts)} turns: {lm}")

        ray.init(
            num_cpus=min(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False, logging_level="error"
        )
        try:
            say("3. sample completions", "transformers on Ray, posted as ranking-only trees")
            sampled = sample_completions(
                first["id"],
                lm,
                n=2,
                configs=("top_k_50", "temperature_0.8"),
                seed=0,
                max_new_tokens=24,
                api_url=str(api.base_url).rstrip("/"),
                api_key=API_KEY,
                data_dir=data_dir,
                out=work / "samples",
            )
            our_trees = set(pl.read_parquet(sampled["completions"])["tree_id"].to_list())
            print(
                f"{sampled['threads']} threads -> {sampled['replies']} unique replies in {len(our_trees)} trees; "
                f"posted: {sampled.get('posted')}"
            )

            say("4. simulate rankings", "request task -> ack -> message_ranking, as a frontend")
            print(rank_everything(api, our_trees))

            say("5. snapshot again", "with the ranked synthetic trees")
            second = snapshot(api, synthetic="include")

            common = dict(data_dir=data_dir, launcher=args.launcher, seed=0)
            say("6. SFT", "assistant-only loss on sft.parquet")
            sft = train("sft", second["id"], lm, work / "models" / "sft", max_steps=20, lr=1e-3, **common)
            show(sft)
            say("7. reward model", "TRL RewardTrainer on rm.parquet's chosen/rejected")
            rm = train("rm", second["id"], lm, work / "models" / "rm", epochs=8, lr=1e-3, **common)
            show(rm)
            rm_file = data_dir / "snapshots" / second["id"] / "rm.parquet"
            print(
                f"reward model orders {pair_accuracy(work / 'models' / 'rm', rm_file):.0%} of the snapshot's "
                "(best, worst) pairs right (its training data)"
            )
            say("8. GRPO", "the SFT model, rewarded by the reward model, on prompts.parquet")
            grpo = train(
                "grpo",
                second["id"],
                work / "models" / "sft",
                work / "models" / "grpo",
                reward_model=work / "models" / "rm",
                max_steps=8,
                lr=1e-4,
                num_generations=4,
                max_completion_length=24,
                **common,
            )
            show(grpo)
        finally:
            ray.shutdown()
    say(
        "done",
        f"in {time.perf_counter() - started:.0f} s; everything is under {work}, the models and their "
        f"lineage.json under {work / 'models'}",
    )


if __name__ == "__main__":
    main()
