"""The settings the tests run the app under: small trees, a known API key and root token."""

from __future__ import annotations

from pathlib import Path

from domain.config import TreeConfig
from infra.settings import Settings

SMALL_TREE = TreeConfig(
    num_reviews_initial_prompt=2,
    num_reviews_reply=2,
    goal_tree_size=4,  # with depth 2 and 2 children: the root always gets two assistant replies to rank
    num_required_rankings=2,
    max_children_count=2,
    max_tree_depth=2,
    p_full_labeling_review_reply_prompter=1.0,
    p_lonely_child_extension=0.0,
)
API_KEY = "test-key"
ROOT_TOKEN = "test-root"


def make_settings(url: str, tmp_path: Path, tree: TreeConfig = SMALL_TREE) -> Settings:
    # rate limits off: tests drive many requests per user; tests/test_rate_limits.py turns them on
    return Settings(
        database_url=url,
        data_dir=tmp_path,
        bootstrap_api_key=API_KEY,
        root_token=ROOT_TOKEN,
        tree=tree,
        rate_limits=False,
    )
