"""OA's ``/admin/backend_settings/full`` and ``/public``: this service's settings under the
names of Open-Assistant's backend ``Settings``, so OA's website shows them unchanged.

Differences, on purpose: secrets (the database password, root tokens, API keys) are masked,
where OA hands them to any trusted client; settings of OA's own machinery that this service
does not have (Redis, Alembic, embeddings, toxicity, the Discord bot) carry OA's defaults.
"""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import urlparse

from litestar import get
from litestar.di import NamedDependency

from command_api.auth import api_client, trusted_client
from command_api.rate_limits import REQUESTS_PER_API_CLIENT, TASK_TYPE_PER_USER, TASKS_PER_USER
from domain import labels
from domain.decide import MAX_TEXT
from domain.model import DUPLICATE_TEXT_WINDOW
from infra.settings import Settings

MASK = "********"
# OA's leaderboard refresh intervals (minutes); our boards are live, so these say how often OA would.
STATS_INTERVALS = {
    "USER_STATS_INTERVAL_DAY": 5,
    "USER_STATS_INTERVAL_WEEK": 15,
    "USER_STATS_INTERVAL_MONTH": 60,
    "USER_STATS_INTERVAL_TOTAL": 240,
}


def public_settings(settings: Settings) -> dict:
    """OA's PublicSettings: what any API client may read."""
    return {
        "PROJECT_NAME": "oasst data engine",
        "API_V1_STR": "/api/v1",
        "MESSAGE_SIZE_LIMIT": MAX_TEXT,
        "DEBUG_USE_SEED_DATA": False,
        "DEBUG_ALLOW_SELF_LABELING": False,
        "DEBUG_SKIP_EMBEDDING_COMPUTATION": True,
        "DEBUG_SKIP_TOXICITY_CALCULATION": True,
        "DEBUG_DATABASE_ECHO": False,
        **STATS_INTERVALS,
    }


def full_settings(settings: Settings) -> dict:
    """OA's Settings, for trusted clients."""
    db = urlparse(settings.database_url)
    tree = asdict(settings.tree)
    tree.update(
        labels_initial_prompt=labels.FULL_PROMPT_LABELS,
        labels_prompter_reply=labels.FULL_PROMPT_LABELS,
        labels_assistant_reply=labels.FULL_ASSISTANT_LABELS,
        mandatory_labels_initial_prompt=labels.MANDATORY_LABELS,
        mandatory_labels_prompter_reply=labels.MANDATORY_LABELS,
        mandatory_labels_assistant_reply=labels.MANDATORY_LABELS,
        init_prompt_disabled_langs="",
    )
    rate = {}
    for name, limit in (
        ("TASK_USER", TASKS_PER_USER),
        ("TASK_API", REQUESTS_PER_API_CLIENT),
        ("ASSISTANT_USER", TASK_TYPE_PER_USER["assistant_reply"]),
        ("PROMPTER_USER", TASK_TYPE_PER_USER["prompter_reply"]),
    ):
        rate[f"RATE_LIMIT_{name}_TIMES"] = limit.times
        rate[f"RATE_LIMIT_{name}_MINUTES"] = limit.seconds // 60
    return {
        **public_settings(settings),
        **rate,
        "DATABASE_URI": db._replace(netloc=db.netloc.replace(f":{db.password}@", f":{MASK}@")).geturl()
        if db.password
        else settings.database_url,
        "POSTGRES_HOST": db.hostname or "",
        "POSTGRES_PORT": str(db.port or ""),
        "POSTGRES_USER": db.username or "",
        "POSTGRES_PASSWORD": MASK,
        "POSTGRES_DB": db.path.lstrip("/"),
        "DATABASE_POOL_SIZE": 4,
        "DATABASE_MAX_OVERFLOW": 0,
        "DATABASE_MAX_TX_RETRY_COUNT": 3,
        "RATE_LIMIT": settings.rate_limits,
        "TASK_VALIDITY_MINUTES": settings.task_expire_minutes,
        "DUPLICATE_MESSAGE_FILTER_WINDOW_MINUTES": int(DUPLICATE_TEXT_WINDOW.total_seconds() // 60),
        "ROOT_TOKENS": [MASK] if settings.root_token else [],
        "OFFICIAL_WEB_API_KEY": MASK,
        "DEBUG_ALLOW_DUPLICATE_TASKS": False,
        "DEBUG_ALLOW_SELF_RANKING": False,
        "DEBUG_IGNORE_TOS_ACCEPTANCE": True,
        "DEBUG_USE_SEED_DATA_PATH": None,
        "ENABLE_PROM_METRICS": True,
        "CACHED_STATS_UPDATE_INTERVAL": 0,  # cached stats are live
        "USER_STREAK_UPDATE_INTERVAL": 0,
        "UPDATE_ALEMBIC": False,
        "HUGGING_FACE_API_KEY": MASK,
        "REDIS_HOST": "",
        "REDIS_PORT": "",
        "BACKEND_CORS_ORIGINS": [],
        "BACKEND_CORS_ORIGINS_CSV": None,
        "AUTH_INFO": "",
        "AUTH_SALT": MASK,
        "AUTH_LENGTH": 32,
        "AUTH_SECRET": MASK,
        "AUTH_COOKIE_NAME": "",
        "AUTH_ALGORITHM": "",
        "AUTH_ACCESS_TOKEN_EXPIRE_MINUTES": 0,
        "AUTH_DISCORD_CLIENT_ID": "",
        "AUTH_DISCORD_CLIENT_SECRET": MASK,
        "DISCORD_API_KEY": None,
        "DISCORD_CHANNEL_ID": None,
        "tree_manager": tree,
    }


@get(
    "/admin/backend_settings/full",
    summary="The service's settings, as OA's Settings (trusted)",
    guards=[trusted_client],
)
async def backend_settings_full(settings: NamedDependency[Settings]) -> dict:
    return full_settings(settings)


@get(
    "/admin/backend_settings/public",
    summary="The settings any client may read (OA's PublicSettings)",
    guards=[api_client],
)
async def backend_settings_public(settings: NamedDependency[Settings]) -> dict:
    return public_settings(settings)


settings_handlers = [backend_settings_full, backend_settings_public]
