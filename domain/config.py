"""The tree manager's configuration: Open-Assistant's TreeManagerConfiguration, with its defaults.
Settings read it from the environment (``OASST_TREE_<NAME>``, infra/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass


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
