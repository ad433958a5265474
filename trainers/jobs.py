"""One training run: a TRL trainer on one snapshot file. Runs inside a Ray worker (a Ray Train
worker or a plain Ray task) or in-process; the driver side is trainers.launch.

Each run saves the model and tokenizer to ``out`` and the loss curve (the trainer's log
history) to ``out/metrics.jsonl``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

KINDS = ("sft", "rm", "dpo", "grpo", "rloo")
TRAINER_CLASS = {
    "sft": "SFTTrainer",
    "rm": "RewardTrainer",
    "dpo": "DPOTrainer",
    "grpo": "GRPOTrainer",
    "rloo": "RLOOTrainer",
}
SUMMARY = "_summary.json"  # rank 0's timings, picked up (and removed) by the driver


@dataclass
class TrainSpec:
    """Everything a run depends on (it goes to the worker and into lineage.json)."""

    kind: str
    data_file: str
    model: str
    out: str
    seed: int = 0
    max_steps: int = -1  # -1: train for ``epochs``
    epochs: float = 1.0
    lr: float | None = None  # None: TRL's default for the trainer
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int | None = 512
    logging_steps: int = 1
    use_gpu: bool = False
    bf16: bool = False
    assistant_only_loss: bool = True  # sft: loss on the assistant's tokens only (the template marks them)
    rm_loss: str = "trl"  # rm: "trl" (chosen/rejected) or "oa" (all ordered pairs over ``replies``)
    oa_l2: float = 0.001  # rm, oa loss: weight of the r² term (OA's RMLoss beta)
    max_replies: int = 5  # rm, oa loss: OA read at most 5 replies per prompt
    beta: float | None = None  # dpo/grpo/rloo: KL weight (None: TRL's default)
    reward_model: str | None = None  # grpo/rloo
    num_generations: int = 4  # grpo/rloo: completions per prompt
    max_completion_length: int = 32  # grpo/rloo
    temperature: float = 1.0  # grpo/rloo

    @classmethod
    def from_dict(cls, data: dict) -> TrainSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def oa_rank_loss(rewards, cu_lengths: list[int], l2: float = 0.001):
    """Open-Assistant's reward-model loss (model_training RMLoss): for each prompt, whose
    replies are rewards[start:end] best first, the mean over every ordered pair (better, worse)
    of −log σ(r_better − r_worse) + l2·½(r_better² + r_worse²); then the mean over prompts."""
    import torch
    import torch.nn.functional as F

    losses = []
    for start, end in zip(cu_lengths[:-1], cu_lengths[1:], strict=True):
        pairs = torch.combinations(torch.arange(end - start, device=rewards.device), 2)
        better, worse = rewards[start + pairs[:, 0]], rewards[start + pairs[:, 1]]
        penalty = 0.5 * (better**2 + worse**2)
        losses.append((-F.logsigmoid(better - worse) + l2 * penalty).mean())
    return torch.stack(losses).mean()


def _tokenize_replies(dataset, processing_class, max_replies: int, max_length: int | None):
    """OA's ranking rows as token ids: a prompt's replies (best first, at most ``max_replies``),
    each in the chat template after the prompt."""

    def tokenize(row):
        ids = [
            processing_class.apply_chat_template(
                row["prompt"] + [{"role": "assistant", "content": r}], tokenize=True, return_dict=True
            )["input_ids"]
            for r in row["replies"][:max_replies]
        ]
        return {"replies_ids": ids}

    dataset = dataset.map(tokenize, remove_columns=dataset.column_names)
    if max_length is not None:  # as RewardTrainer: drop what does not fit, never cut a reply
        dataset = dataset.filter(lambda row: max(map(len, row["replies_ids"])) <= max_length)
    return dataset


def _collate_replies(rows, pad_token_id: int) -> dict:
    """Every reply of the rows, padded, with where each prompt's replies start (cu_lengths)."""
    import torch

    seqs = [torch.tensor(ids) for row in rows for ids in row["replies_ids"]]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)], mask[i, : len(s)] = s, 1
    cu = [0]
    for row in rows:
        cu.append(cu[-1] + len(row["replies_ids"]))
    return {"input_ids": input_ids, "attention_mask": mask, "cu_lengths": torch.tensor(cu)}


def _ordered_share(rewards, cu: list[int]) -> float:
    """Share of ordered pairs in the right order, as RewardTrainer's accuracy."""
    import torch

    right = total = 0
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        pairs = torch.combinations(torch.arange(end - start), 2)
        right += (rewards[start + pairs[:, 0]] > rewards[start + pairs[:, 1]]).sum().item()
        total += len(pairs)
    return right / max(total, 1)


def _oa_trainer_class():
    """RewardTrainer with OA's ranking loss over all ranked replies of a prompt (built lazily:
    importing TRL takes seconds)."""
    import torch
    from trl import RewardTrainer

    class OARankTrainer(RewardTrainer):
        def __init__(self, *args, l2: float = 0.001, max_replies: int = 5, **kwargs):
            self.l2, self.max_replies = l2, max_replies
            super().__init__(*args, data_collator=self._collate, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "replies_ids" in dataset.column_names:
                return dataset
            return _tokenize_replies(dataset, processing_class, self.max_replies, args.max_length)

        def _set_signature_columns_if_needed(self):
            self._signature_columns = ["replies_ids"]

        def _collate(self, rows):
            return _collate_replies(rows, self.processing_class.pad_token_id)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            cu = inputs.pop("cu_lengths").tolist()
            outputs = model(**inputs, use_cache=False)
            rewards = outputs.logits.squeeze(-1)
            loss = oa_rank_loss(rewards, cu, self.l2)
            with torch.no_grad():
                self._metrics[mode]["accuracy"].append(_ordered_share(rewards, cu))
                self._metrics[mode]["mean_reward"].append(rewards.mean().item())
            return (loss, outputs) if return_outputs else loss

    return OARankTrainer


def _common_args(spec: TrainSpec) -> dict:
    args = dict(
        output_dir=spec.out,
        seed=spec.seed,
        data_seed=spec.seed,
        max_steps=spec.max_steps,
        num_train_epochs=spec.epochs,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        logging_steps=spec.logging_steps,
        save_strategy="no",
        report_to=[],
        use_cpu=not spec.use_gpu,
        bf16=spec.bf16,
        gradient_checkpointing=False,  # TRL turns it on by default: only slower for small models
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if spec.lr is not None:
        args["learning_rate"] = spec.lr
    return args


def build_trainer(spec: TrainSpec):
    """The TRL trainer for a spec, its dataset read straight from the snapshot's parquet file."""
    import trl
    from datasets import load_dataset

    data = load_dataset("parquet", data_files=spec.data_file, split="train")
    common = _common_args(spec)
    if spec.kind == "sft":
        config = trl.SFTConfig(assistant_only_loss=spec.assistant_only_loss, max_length=spec.max_length, **common)
        return trl.SFTTrainer(model=spec.model, args=config, train_dataset=data)
    if spec.kind == "rm":
        config = trl.RewardConfig(max_length=spec.max_length, **common)
        if spec.rm_loss == "oa":
            return _oa_trainer_class()(
                model=spec.model, args=config, train_dataset=data, l2=spec.oa_l2, max_replies=spec.max_replies
            )
        return trl.RewardTrainer(model=spec.model, args=config, train_dataset=data)
    if spec.kind == "dpo":
        extra = {"beta": spec.beta} if spec.beta is not None else {}
        # A model path (not an in-memory model): DPOTrainer loads its reference model from it.
        config = trl.DPOConfig(max_length=spec.max_length, **extra, **common)
        return trl.DPOTrainer(model=spec.model, args=config, train_dataset=data)
    if spec.kind in ("grpo", "rloo"):
        if not spec.reward_model:
            raise ValueError(f"{spec.kind} needs a reward model (--reward-model DIR)")
        extra = {"beta": spec.beta} if spec.beta is not None else {}
        cls, config_cls = {"grpo": (trl.GRPOTrainer, trl.GRPOConfig), "rloo": (trl.RLOOTrainer, trl.RLOOConfig)}[
            spec.kind
        ]
        config = config_cls(
            num_generations=spec.num_generations,
            max_completion_length=spec.max_completion_length,
            temperature=spec.temperature,
            **extra,
            **common,
        )
        prompts = data.select_columns(["messages"]).rename_column("messages", "prompt")
        return cls(model=spec.model, reward_funcs=spec.reward_model, args=config, train_dataset=prompts)
    raise ValueError(f"unknown trainer {spec.kind!r}; one of {KINDS}")


def _plain(value):
    return value if isinstance(value, (int, float, str, bool, type(None))) else float(value)


def quiet() -> None:
    """No progress bars or info logs from datasets/transformers: a pipeline prints lineage."""
    import warnings

    import datasets
    import transformers

    # TRL 1.16 still sets `gradient_checkpointing`, which transformers 5 renamed
    warnings.filterwarnings("ignore", message=".*will be removed in v6.*", category=FutureWarning)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def run_job(spec_dict: dict) -> dict:
    """Train, save the model and metrics.jsonl, and return a summary (on every rank; only the
    first process writes files)."""
    import os

    import transformers

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    spec = TrainSpec.from_dict(spec_dict)
    out = Path(spec.out)
    quiet()
    trainer = build_trainer(spec)
    trainer.remove_callback(transformers.PrinterCallback)  # the curve goes to metrics.jsonl, not stdout
    ready = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    trainer.save_model(spec.out)  # every rank calls it; it writes on the main process only
    history = [{k: _plain(v) for k, v in entry.items()} for entry in trainer.state.log_history]
    losses = [e["loss"] for e in history if "loss" in e]
    last = next((e for e in reversed(history) if "loss" in e), {})
    summary = {
        "steps": trainer.state.global_step,
        "rows": len(trainer.train_dataset) if hasattr(trainer.train_dataset, "__len__") else None,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_steps_per_second": trainer.state.global_step / (trained - ready) if trained > ready else None,
        "setup_seconds": ready - started,
        "train_seconds": trained - ready,
        "save_seconds": time.perf_counter() - trained,
        "world_size": trainer.args.world_size,
        **{
            k: last[k]
            for k in (
                "accuracy",
                "margin",
                "reward",
                "reward_std",
                "rewards/margins",
                "rewards/accuracies",
                "mean_token_accuracy",
                "kl",
            )
            if k in last
        },
    }
    summary["job_seconds"] = time.perf_counter() - started
    # what TRL's defaults made of the settings left open (the whole config: trl_config.json)
    summary["resolved"] = {
        k: getattr(trainer.args, k)
        for k in ("learning_rate", "beta", "max_length")
        if getattr(trainer.args, k, None) is not None
    }
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        (out / "trl_config.json").write_text(trainer.args.to_json_string())
        with open(out / "metrics.jsonl", "w") as f:
            for entry in history:
                f.write(json.dumps(entry) + "\n")
        (out / SUMMARY).write_text(json.dumps(summary))
    return summary


def reward_scores(model_dir: str | Path, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
    """Scores of a saved reward model for whole conversations (prompt + reply)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    scores: list[float] = []
    for i in range(0, len(conversations), batch_size):
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[i : i + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            scores += model(**batch).logits.squeeze(-1).tolist()
    return scores


def pair_accuracy(model_dir: str | Path, rm_file: str | Path) -> float:
    """Share of an rm.parquet's (chosen, rejected) pairs that a reward model orders right."""
    import polars as pl

    rows = pl.read_parquet(rm_file).to_dicts()
    chosen = reward_scores(model_dir, [r["prompt"] + r["chosen"] for r in rows])
    rejected = reward_scores(model_dir, [r["prompt"] + r["rejected"] for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(len(rows), 1)


ONLY = {
    "assistant_only_loss": ("sft",),
    "rm_loss": ("rm",),
    "oa_l2": ("rm",),
    "max_replies": ("rm",),
    "beta": ("dpo", "grpo", "rloo"),
    "num_generations": ("grpo", "rloo"),
    "max_completion_length": ("grpo", "rloo"),
    "temperature": ("grpo", "rloo"),
}


def spec_settings(spec: TrainSpec) -> dict:
    """The settings that shaped this run (paths are recorded elsewhere in lineage.json)."""
    return {
        k: v
        for k, v in asdict(spec).items()
        if k not in ("data_file", "model", "out", "reward_model", "kind") and spec.kind in ONLY.get(k, (spec.kind,))
    }
