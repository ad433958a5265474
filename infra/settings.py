"""Configuration from environment variables (documented in README.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class TreeConfig:
    """Open-Assistant's TreeManagerConfiguration; env ``OASST_TREE_<NAME>`` overrides."""

    max_active_trees: int = 10
    max_initial_prompt_review: int = 100
    max_tree_depth: int = 3
    max_children_count: int = 3
    num_prompter_replies: int = 1
    goal_tree_size: int = 12
    random_goal_tree_size: bool = False
    min_goal_tree_size: int = 5
    num_reviews_initial_prompt: int = 3
    num_reviews_reply: int = 3
    acceptance_threshold_initial_prompt: float = 0.6
    acceptance_threshold_reply: float = 0.6
    p_full_labeling_review_prompt: float = 1.0
    p_full_labeling_review_reply_assistant: float = 1.0
    p_full_labeling_review_reply_prompter: float = 0.1
    num_required_rankings: int = 3
    rank_prompter_replies: bool = False
    p_activate_backlog_tree: float = 0.1
    min_active_rankings_per_lang: int = 0
    auto_mod_enabled: bool = True
    auto_mod_red_flags: int = 4
    auto_mod_max_skip_reply: int = 25
    lonely_children_count: int = 2
    p_lonely_child_extension: float = 0.75
    recent_tasks_span_sec: int = 300
    max_pending_tasks_per_user: int = 8
    max_prompt_lottery_waiting: int = 250

    def acceptance_threshold(self, is_prompt: bool) -> float:
        """The review score a message must exceed to be accepted."""
        return self.acceptance_threshold_initial_prompt if is_prompt else self.acceptance_threshold_reply

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> TreeConfig:
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f"OASST_TREE_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(raw, f.type, f"OASST_TREE_{f.name.upper()}")
        return cls(**values)


def _parse(raw: str, type_name: str, var: str):
    try:
        if type_name == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return {"int": int, "float": float}[type_name](raw)
    except ValueError:
        raise SystemExit(f"{var}={raw!r} is not a valid {type_name}") from None


@dataclass(frozen=True)
class KafkaSettings:
    """Kafka (optional): ``OASST_KAFKA_<NAME>``; the relay runs inside ``oasst serve`` when
    ``bootstrap`` is set. ``client`` is JSON of extra kafka-python options for every client
    (e.g. security_protocol, sasl_mechanism, sasl_plain_username, ssl_cafile)."""

    bootstrap: str | None = None
    events_topic: str = "oasst.events"
    snapshots_topic: str = "oasst.snapshots"
    partitions: int = 8  # of the events topic; fixed once created (keys must keep their partition)
    replication: int = 1
    session_timeout_ms: int = 6000  # consumer groups join in seconds (the client default: ~25 s)
    relay_page: int = 20_000  # events read and published per produce request
    compression: str = "gzip"  # of the relay's record batches: gzip or none
    client: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        values: dict = {}
        for f in fields(cls):
            var = f"OASST_KAFKA_{f.name.upper()}"
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            if f.name == "client":
                try:
                    values["client"] = json.loads(raw)
                except ValueError:
                    raise SystemExit(f"{var} must be a JSON object of kafka-python options") from None
            else:
                values[f.name] = raw if f.type.startswith("str") else _parse(raw, f.type, var)
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/oasst.sqlite3"
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8080
    bootstrap_api_key: str | None = None
    root_token: str | None = None
    task_expire_minutes: int = 2880
    max_body_bytes: int = 1_000_000
    rate_limits: bool = True  # Open-Assistant's per-user and per-client limits
    checkpoint_every: int = 100_000  # events between write-model checkpoints (0: none written)
    checkpoint_dir: Path | None = None  # default: data_dir / "checkpoints"
    tree: TreeConfig = field(default_factory=TreeConfig)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)

    @property
    def checkpoints_folder(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("OASST_DATA_DIR", "var"))
        return cls(
            database_url=env.get("OASST_DATABASE_URL", f"sqlite:///{data_dir / 'oasst.sqlite3'}"),
            data_dir=data_dir,
            host=env.get("OASST_HOST", "127.0.0.1"),
            port=int(env.get("OASST_PORT", "8080")),
            bootstrap_api_key=env.get("OASST_BOOTSTRAP_API_KEY") or None,
            root_token=env.get("OASST_ROOT_TOKEN") or None,
            task_expire_minutes=int(env.get("OASST_TASK_EXPIRE_MINUTES", "2880")),
            max_body_bytes=int(env.get("OASST_MAX_BODY_BYTES", "1000000")),
            rate_limits=_parse(env.get("OASST_RATE_LIMITS", "on"), "bool", "OASST_RATE_LIMITS"),
            checkpoint_every=_parse(env.get("OASST_CHECKPOINT_EVERY", "100000"), "int", "OASST_CHECKPOINT_EVERY"),
            checkpoint_dir=Path(env["OASST_CHECKPOINT_DIR"]) if env.get("OASST_CHECKPOINT_DIR") else None,
            tree=TreeConfig.from_env(env),
            kafka=KafkaSettings.from_env(env),
        )
