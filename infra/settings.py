"""Configuration from environment variables (documented in README.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from domain.config import TreeConfig  # noqa: F401 - also imported from here


def tree_config_from_env(env: dict[str, str] | None = None) -> TreeConfig:
    """``OASST_TREE_<NAME>`` overrides each of TreeConfig's fields."""
    env = os.environ if env is None else env
    values = {}
    for f in fields(TreeConfig):
        raw = env.get(f"OASST_TREE_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _parse(raw, f.type, f"OASST_TREE_{f.name.upper()}")
    return TreeConfig(**values)


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
            tree=tree_config_from_env(env),
            kafka=KafkaSettings.from_env(env),
        )
