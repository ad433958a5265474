"""Training on snapshots (issue #8): TRL's SFT, reward model (TRL's and OA's loss), DPO,
GRPO and RLOO on a tiny Llama built here (tokenizer trained locally, nothing downloaded),
a few steps each on CPU through one local Ray: Ray Train's TorchTrainer once, Ray tasks
otherwise. A generated, separable snapshot (trainers.toy) checks that the reward model
learns; a real snapshot of a seeded history checks the files as written."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devkit.tiny_lm import build_tiny_lm
from trainers.jobs import TrainSpec, build_trainer, oa_rank_loss, pair_accuracy
from trainers.launch import train, train_follow
from trainers.snapshots import follow, open_snapshot
from trainers.toy import TOPICS, toy_texts, write_toy_snapshot

FAST = dict(launcher="task", lr=1e-3, batch_size=8)


@pytest.fixture(scope="module")
def ray_session():
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ours = not ray.is_initialized()
    if ours:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    if ours:
        ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A data dir with a toy snapshot to train on; held-out pairs on other topics beside it."""
    root = tmp_path_factory.mktemp("training")
    write_toy_snapshot(root / "snapshots", n=64, seed=0, snapshot_id="toy-train", topics=TOPICS[:20])
    write_toy_snapshot(root / "heldout", n=40, seed=1, snapshot_id="toy-heldout", topics=TOPICS[20:])
    return root


@pytest.fixture(scope="module")
def lm(work) -> Path:
    return build_tiny_lm(work / "lm", toy_texts())


def losses(out: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


def read_lineage(out: Path) -> dict:
    return json.loads((out / "lineage.json").read_text())


@pytest.fixture(scope="module")
def sft_run(work, lm, ray_session) -> dict:
    """SFT through Ray Train's TorchTrainer (a worker group of one, torch process group and all)."""
    return train(
        "sft", "toy-train", lm, work / "out" / "sft", launcher="train", data_dir=work, max_steps=6, lr=1e-3, seed=0
    )


@pytest.fixture(scope="module")
def rm_run(work, lm, ray_session) -> dict:
    return train("rm", "toy-train", lm, work / "out" / "rm", data_dir=work, max_steps=20, seed=0, **FAST)


# --- the loss, by hand -------------------------------------------------------------------------


def test_oa_rank_loss_matches_a_hand_computation():
    import torch

    rewards = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.7])  # two prompts: 3 replies best first, then 2
    l2 = 0.01

    def term(better, worse):
        return math.log1p(math.exp(-(better - worse))) + l2 * 0.5 * (better**2 + worse**2)

    first = (term(2.0, 0.5) + term(2.0, -1.0) + term(0.5, -1.0)) / 3
    second = term(0.3, 0.7)
    assert oa_rank_loss(rewards, [0, 3, 5], l2).item() == pytest.approx((first + second) / 2, rel=1e-6)
    # a right order costs less than the reverse
    assert oa_rank_loss(torch.tensor([1.0, 0.0]), [0, 2]) < oa_rank_loss(torch.tensor([0.0, 1.0]), [0, 2])


# --- SFT through Ray Train: model, metrics, lineage --------------------------------------------------


def test_sft_on_ray_train_writes_the_model_the_loss_curve_and_lineage(sft_run, work, lm):
    from transformers import AutoModelForCausalLM

    out = work / "out" / "sft"
    snap = open_snapshot("toy-train", work)
    lineage = read_lineage(out)
    assert lineage == sft_run
    assert lineage["snapshot_id"] == "toy-train" == snap.manifest["id"]
    assert lineage["manifest_sha256"] == hashlib.sha256((snap.dir / "manifest.json").read_bytes()).hexdigest()
    assert lineage["policy"] == snap.manifest["policy"]
    assert lineage["data_file"] == {"name": "sft.parquet", **snap.manifest["files"]["sft.parquet"], "rows": 64}
    assert lineage["base_model"] == {"path": str(lm)}
    assert lineage["trainer"]["kind"] == "sft" and lineage["trainer"]["class"] == "SFTTrainer"
    assert lineage["launcher"]["kind"] == "ray.train.torch.TorchTrainer"
    assert lineage["seed"] == 0 and lineage["settings"]["assistant_only_loss"] is True
    assert "rm_loss" not in lineage["settings"] and lineage["code_version"]
    metrics = lineage["metrics"]
    assert metrics["steps"] == 6 and metrics["world_size"] == 1 and metrics["launch_overhead_seconds"] > 0
    curve = losses(out)
    assert len(curve) == 6 and curve[-1] < curve[0] and metrics["final_loss"] == curve[-1]
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0


def test_same_seed_same_loss_curve_on_either_launcher(sft_run, work, lm):
    again = train("sft", "toy-train", lm, work / "out" / "sft-again", data_dir=work, max_steps=6, seed=0, **FAST)
    other = train("sft", "toy-train", lm, work / "out" / "sft-seed1", data_dir=work, max_steps=6, seed=1, **FAST)
    assert again["launcher"]["kind"] == "ray task"
    assert losses(work / "out" / "sft-again") == losses(work / "out" / "sft")
    assert losses(work / "out" / "sft-seed1") != losses(work / "out" / "sft")
    assert other["seed"] == 1


def test_sft_loss_is_on_the_assistant_turn_only(work, lm, tmp_path):
    spec = TrainSpec(
        kind="sft",
        data_file=str(work / "snapshots" / "toy-train" / "sft.parquet"),
        model=str(lm),
        out=str(tmp_path),
        max_steps=1,
        batch_size=2,
    )
    trainer = build_trainer(spec)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    learned = trainer.processing_class.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    whole = trainer.processing_class.decode([t for t in ids if t != trainer.processing_class.pad_token_id])
    # the thread is "<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n<reply><|im_end|>\n": only <reply><|im_end|>
    assert whole.startswith("<|im_start|>user\n") and whole.endswith(f"<|im_start|>assistant\n{learned}\n")
    assert learned.endswith("<|im_end|>") and "<|im_start|>" not in learned and "happy to help" in learned


# --- reward model ----------------------------------------------------------------------------------


def test_reward_model_ranks_held_out_pairs_better_than_chance(rm_run, work):
    assert rm_run["trainer"]["class"] == "RewardTrainer"
    assert rm_run["data_file"]["name"] == "rm.parquet"
    assert pair_accuracy(work / "out" / "rm", work / "heldout" / "toy-heldout" / "rm.parquet") >= 0.75


def test_reward_model_with_oa_loss_through_the_cli(work, lm, ray_session, monkeypatch):
    from infra.cli import app

    out = work / "out" / "rm-oa"
    args = [
        "train",
        "rm",
        "--snapshot",
        "toy-train",
        "--model",
        str(lm),
        "--out",
        str(out),
        "--loss",
        "oa",
        "--launcher",
        "task",
        "--max-steps",
        "20",
        "--lr",
        "1e-3",
        "--data-dir",
        str(work),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lineage = json.loads(result.output)
    assert lineage == read_lineage(out) and lineage["trainer"]["class"] == "OARankTrainer(RewardTrainer)"
    assert lineage["settings"]["rm_loss"] == "oa" and lineage["settings"]["max_replies"] == 5
    assert pair_accuracy(out, work / "heldout" / "toy-heldout" / "rm.parquet") >= 0.75


def test_cli_refuses_grpo_without_a_reward_model(work, lm):
    from infra.cli import app

    result = CliRunner().invoke(
        app,
        [
            "train",
            "grpo",
            "--snapshot",
            "toy-train",
            "--model",
            str(lm),
            "--out",
            str(work / "out" / "nope"),
            "--data-dir",
            str(work),
        ],
    )
    assert result.exit_code == 2 and "--reward-model" in result.output


# --- DPO, GRPO, RLOO --------------------------------------------------------------------------------


def test_dpo_learns_the_preference_pairs(work, lm, ray_session):
    lineage = train("dpo", "toy-train", lm, work / "out" / "dpo", data_dir=work, max_steps=8, seed=0, **FAST)
    curve = losses(work / "out" / "dpo")
    assert lineage["trainer"]["class"] == "DPOTrainer" and lineage["data_file"]["name"] == "dpo.parquet"
    assert curve[0] == pytest.approx(math.log(2), abs=1e-3) and curve[-1] < curve[0]
    assert lineage["metrics"]["rows"] == 64 * 3  # every ordered pair of three ranked replies


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_grpo_and_rloo_with_the_trained_reward_model(kind, sft_run, rm_run, work, ray_session):
    out = work / "out" / kind
    lineage = train(
        kind,
        "toy-train",
        work / "out" / "sft",
        out,
        data_dir=work,
        reward_model=work / "out" / "rm",
        max_steps=2,
        num_generations=4,
        max_completion_length=12,
        seed=0,
        **FAST,
    )
    assert lineage["data_file"]["name"] == "prompts.parquet"
    # both models it started from say where they came from
    assert lineage["base_model"]["snapshot_id"] == "toy-train" and lineage["base_model"]["trainer"]["kind"] == "sft"
    assert lineage["reward_model"]["manifest_sha256"] == rm_run["manifest_sha256"]
    assert lineage["reward_model"]["trainer"]["kind"] == "rm"
    assert lineage["metrics"]["steps"] == 2 and "reward" in lineage["metrics"]
    assert len(losses(out)) == 2 and (out / "model.safetensors").is_file()


# --- snapshots: checks, real ones, following -----------------------------------------------------------


def test_a_file_that_no_longer_matches_its_manifest_is_refused(work, lm, tmp_path):
    copy = tmp_path / "snapshots" / "toy-train"
    shutil.copytree(work / "snapshots" / "toy-train", copy)
    write_toy_snapshot(tmp_path / "other", n=8, seed=9, snapshot_id="x")
    shutil.copy(tmp_path / "other" / "x" / "sft.parquet", copy / "sft.parquet")
    with pytest.raises(ValueError, match="sha256"):
        train("sft", "toy-train", lm, tmp_path / "out", data_dir=tmp_path, launcher="local", max_steps=1)


def test_training_on_a_real_snapshot_of_a_seeded_history(lm, ray_session, tmp_path):
    """The files as ``oasst snapshot create`` writes them go straight into TRL's trainers
    (datasets' parquet loader, extra columns and all)."""
    from devkit.simulator import seed_history
    from infra.settings import Settings
    from projections.snapshot import create_snapshot

    url = f"sqlite:///{tmp_path / 'oasst.sqlite3'}"
    seed_history(url, trees=20, users=15, seed=4)
    manifest = create_snapshot(Settings(database_url=url, data_dir=tmp_path))
    for kind, file in (("sft", "sft.parquet"), ("rm", "rm.parquet"), ("dpo", "dpo.parquet")):
        lineage = train(kind, manifest["id"], lm, tmp_path / kind, data_dir=tmp_path, max_steps=2, **FAST)
        assert lineage["snapshot_id"] == manifest["id"] and lineage["snapshot_position"] == manifest["position"]
        assert lineage["policy"] == manifest["policy"]
        manifest_file = tmp_path / "snapshots" / manifest["id"] / "manifest.json"
        assert lineage["manifest_sha256"] == hashlib.sha256(manifest_file.read_bytes()).hexdigest()
        assert lineage["data_file"]["rows"] == manifest["counts"][file] and lineage["metrics"]["steps"] == 2
        assert 0 < lineage["metrics"]["rows"] <= manifest["counts"][file]  # too long for max_length: left out


def test_follow_trains_each_new_snapshot_once(lm, ray_session, tmp_path):
    write_toy_snapshot(tmp_path / "snapshots", n=16, seed=2, snapshot_id="first")
    trained: list[str] = []
    first_done = threading.Event()

    def on_trained(lineage):
        trained.append(lineage["snapshot_id"])
        first_done.set()

    def run():
        train_follow(
            "rm",
            lm,
            tmp_path / "models",
            data_dir=tmp_path,
            poll=0.1,
            max_snapshots=2,
            on_trained=on_trained,
            max_steps=1,
            **FAST,
        )

    follower = threading.Thread(target=run)
    follower.start()
    assert first_done.wait(120)
    write_toy_snapshot(tmp_path / "snapshots", n=16, seed=3, snapshot_id="second")
    follower.join(120)
    assert not follower.is_alive() and trained == ["first", "second"]
    assert read_lineage(tmp_path / "models" / "second")["snapshot_id"] == "second"
    # a restarted follower skips what it trained; `start` skips older snapshots
    write_toy_snapshot(tmp_path / "snapshots", n=16, seed=4, snapshot_id="third")
    again = train_follow(
        "rm", lm, tmp_path / "models", data_dir=tmp_path, poll=0.1, max_snapshots=1, max_steps=1, **FAST
    )
    assert [lin["snapshot_id"] for lin in again] == ["third"]


def test_follow_through_the_snapshots_api_downloads_the_files(work, tmp_path):
    """Polling GET /snapshots of a running `oasst serve`; the files a trainer needs (and the
    manifest, byte for byte) are downloaded with a trusted key."""
    from tests.servers import oasst_serve

    served = tmp_path / "served"
    shutil.copytree(work / "snapshots" / "toy-train", served / "snapshots" / "toy-train")
    with oasst_serve(served, "train-key") as api:
        local = tmp_path / "local"
        got = next(follow(local, names=["rm.parquet"], api_url=api, api_key="train-key", poll=0.1))
    assert got.id == "toy-train" and got.dir == local / "snapshots" / "toy-train"
    original = work / "snapshots" / "toy-train"
    assert (got.dir / "manifest.json").read_bytes() == (original / "manifest.json").read_bytes()
    assert (got.dir / "rm.parquet").read_bytes() == (original / "rm.parquet").read_bytes()
    assert not (got.dir / "sft.parquet").exists()


def test_follow_through_kafka_when_it_is_configured(work, tmp_path, monkeypatch):
    """With OASST_KAFKA_BOOTSTRAP set, news of snapshots come from the snapshots topic (a real
    Kafka-protocol broker, Tansu); the files are read from the snapshots folder."""
    from kafka import KafkaProducer

    from devkit import brokers
    from infra import kafka
    from infra.settings import KafkaSettings

    with brokers.tansu(log_path=str(tmp_path / "tansu.log")) as bootstrap:
        cfg = KafkaSettings(
            bootstrap=bootstrap, events_topic="events-train", snapshots_topic="snapshots-train", session_timeout_ms=2000
        )
        kafka.ensure_topics(cfg)
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send(cfg.snapshots_topic, json.dumps({"snapshot_id": "toy-train", "position": 64}).encode())
        producer.flush()
        producer.close()
        for name, value in (
            ("BOOTSTRAP", bootstrap),
            ("SNAPSHOTS_TOPIC", cfg.snapshots_topic),
            ("EVENTS_TOPIC", cfg.events_topic),
            ("SESSION_TIMEOUT_MS", "2000"),
        ):
            monkeypatch.setenv(f"OASST_KAFKA_{name}", value)
        news = follow(work, names=["rm.parquet"], group="trainer-test")
        got = next(news)
        news.close()
    assert got.id == "toy-train" and got.dir == work / "snapshots" / "toy-train"
