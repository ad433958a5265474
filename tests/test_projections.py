"""Views as pure folds (hand-made events, no database), every view through the
ProjectionRunner on both stores (catch-up, restore, crash and restart), and
ConsensusView.agreement (Krippendorff's alpha)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import msgspec
import pytest

from domain import events as ev
from infra.store import EventStore
from projections.consensus import ConsensusView
from projections.history import HistoryView
from projections.leaderboard import LEVELS, STATS, LeaderboardView, leader_score, level, troll_score
from projections.message_tree import MessageTreeView
from projections.runner import ProjectionRunner
from tests.histories import make_history

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 6, 15, 12, 30, tzinfo=UTC)
CLIENT = UUID(int=0xC1)
A, B, C, D = (UUID(int=0xA0 + i) for i in range(4))  # users
P, R1, R2, R3 = (UUID(int=0x100 + i) for i in range(4))  # prompt, replies
T1, T2, T3 = (UUID(int=0x200 + i) for i in range(3))  # tasks

_n = 0


def mk(cls, user: UUID | None = None, at: datetime = NOW, **fields):
    """A hand-made event with a fresh id."""
    global _n
    _n += 1
    return cls(id=UUID(int=0xE0000 + _n), at=at, user_id=user, api_client_id=CLIENT, **fields)


def fold(view, events, start: int = 1):
    for i, e in enumerate(events, start=start):
        view.apply(i, e)
    return view


def seen(user: UUID, name: str, at: datetime = NOW):
    return mk(ev.UserSeen, user, at, subject_id=user, auth_method="local", username=name, display_name=name.title())


def prompt(user: UUID, mid: UUID = P, at: datetime = NOW, text: str = "hi"):
    return mk(
        ev.InitialPromptSubmitted,
        user,
        at,
        message_id=mid,
        frontend_message_id=f"fe-{mid.int}",
        task_id=None,
        text=text,
        lang="en",
    )


def reply(user: UUID, mid: UUID, parent: UUID, role: str, depth: int, tree: UUID = P, at: datetime = NOW):
    return mk(
        ev.ReplySubmitted,
        user,
        at,
        message_id=mid,
        frontend_message_id=f"fe-{mid.int}",
        task_id=None,
        parent_id=parent,
        tree_id=tree,
        role=role,
        depth=depth,
        text=f"reply {mid.int}",
        lang="en",
    )


def labels(user: UUID, mid: UUID, kind: str = "task", at: datetime = NOW, mode: str = "full", **values):
    return mk(
        ev.LabelsSubmitted, user, at, message_id=mid, labels=values, kind=kind, mode=mode if kind == "task" else None
    )


def basic_tree() -> list:
    """Users A-D; A's prompt P, assistant replies R1 (B) and R2 (C), prompter reply R3 (D) under R1."""
    return [
        seen(A, "alice"),
        seen(B, "bob"),
        seen(C, "carol"),
        seen(D, "dave"),
        prompt(A),
        reply(B, R1, P, "assistant", 1),
        reply(C, R2, P, "assistant", 1),
        reply(D, R3, R1, "prompter", 2),
    ]


def encoded_rows(view) -> dict:
    enc = msgspec.msgpack.Encoder(uuid_format="bytes")  # as views store rows
    return {(t.name, k): enc.encode(row) for t in view.tables.values() for k, row in t.rows.items()}


# --- MessageTreeView ---------------------------------------------------------------------


def test_message_tree_builds_messages_trees_and_users():
    view = fold(MessageTreeView(), basic_tree())
    assert view.position == 8
    assert set(view.users.rows) == {A, B, C, D}
    assert (view.users[A].username, view.users[A].display_name, view.users[A].api_client_id) == (
        "alice",
        "Alice",
        CLIENT,
    )
    assert view.users[A].last_activity_date == NOW  # from the prompt
    root = view.messages[P]
    assert (root.parent_id, root.tree_id, root.role, root.depth, root.children) == (None, P, "prompter", 0, [R1, R2])
    assert view.messages[R1].children == [R3] and view.messages[R3].role == "prompter"
    assert view.trees[P].message_ids == [P, R1, R2, R3] and view.trees[P].state == "initial_prompt_review"
    assert view.by_frontend_id[(CLIENT, f"fe-{R2.int}")] == R2
    assert view.users_by_name[(CLIENT, "local", "carol")] == C
    assert [m.id for m in view.thread(view.messages[R3])] == [P, R1, R3]


def test_message_tree_reviews_labels_rankings_ranks_and_emojis():
    view = fold(
        MessageTreeView(),
        [
            *basic_tree(),
            labels(B, P, spam=0.0),
            labels(C, P, spam=0.0),
            labels(D, P, kind="free", spam=1.0),
            mk(ev.MessageReviewed, None, message_id=P, review_count=2, score=1.0, accepted=True),
            mk(ev.RankingSubmitted, A, parent_id=P, task_id=T1, ranked_message_ids=[R2, R1]),
            mk(ev.RankingSubmitted, D, parent_id=P, task_id=T2, ranked_message_ids=[R1, R2]),
            mk(ev.RanksComputed, None, tree_id=P, parent_id=P, ranked_message_ids=[R1, R2], ranking_count=2),
            mk(ev.EmojiAdded, A, message_id=R1, emoji="+1"),
            mk(ev.EmojiAdded, D, message_id=R1, emoji="+1"),
            mk(ev.EmojiAdded, A, message_id=R1, emoji="_skip_reply"),
            mk(ev.EmojiRemoved, D, message_id=R1, emoji="+1"),
            mk(ev.MessageEdited, A, message_id=P, text="edited"),
        ],
    )
    root, r1, r2 = view.messages[P], view.messages[R1], view.messages[R2]
    assert (root.review_count, root.review_result) == (2, True)  # free labels are no review
    assert (r1.ranking_count, r2.ranking_count, r1.rank, r2.rank) == (2, 2, 0, 1)
    assert r1.emojis == {"+1": [A], "_skip_reply": [A]}
    assert (root.text, root.edited) == ("edited", True)


def test_deleting_hides_the_subtree_and_undeleting_restores_the_ancestors():
    view = fold(MessageTreeView(), [*basic_tree(), mk(ev.MessageDeleted, None, message_id=R1)])
    assert [view.is_hidden(view.messages[m]) for m in (P, R1, R2, R3)] == [False, True, False, True]
    assert view.messages[R3].deleted is False  # derived, not copied down
    fold(view, [mk(ev.MessageDeleted, None, message_id=P)], start=10)
    assert all(view.is_hidden(view.messages[m]) for m in (P, R1, R2, R3))
    fold(view, [mk(ev.MessageUndeleted, None, message_id=R3)], start=11)  # R3 and its ancestors R1, P
    assert [view.messages[m].deleted for m in (P, R1, R3)] == [False, False, False]
    assert not any(view.is_hidden(view.messages[m]) for m in (P, R1, R2, R3))


def test_tree_states_halt_and_resume_like_the_write_model():
    # halted before the lottery: back to review; after winning it: back to growing
    view = fold(MessageTreeView(), [seen(A, "alice"), prompt(A), prompt(A, mid=R1)])
    fold(
        view,
        [
            mk(ev.TreeHalted, None, tree_id=P),
            mk(ev.TreeResumed, None, tree_id=P),
            mk(
                ev.TreeStateChanged,
                None,
                tree_id=R1,
                old_state="initial_prompt_review",
                new_state="prompt_lottery_waiting",
                reason="initial_prompt_review",
            ),
            mk(
                ev.TreeStateChanged,
                None,
                tree_id=R1,
                old_state="prompt_lottery_waiting",
                new_state="growing",
                reason="lottery",
                goal_tree_size=7,
            ),
            mk(ev.TreeHalted, None, tree_id=R1),
        ],
        start=4,
    )
    assert view.trees[P].state == "initial_prompt_review"
    assert (view.trees[R1].state, view.trees[R1].goal_tree_size) == ("halted_by_moderator", 7)
    fold(view, [mk(ev.TreeResumed, None, tree_id=R1)], start=9)
    assert view.trees[R1].state == "growing"


def test_user_lifecycle():
    view = fold(
        MessageTreeView(),
        [
            seen(A, "alice"),
            mk(ev.UserRenamed, A, subject_id=A, display_name="Al"),
            mk(ev.UserSettingsChanged, None, subject_id=A, notes="n", show_on_leaderboard=False, tos_accepted=True),
            mk(ev.UserDisabled, None, subject_id=A),
        ],
    )
    u = view.users[A]
    assert (u.display_name, u.notes, u.show_on_leaderboard, u.tos_acceptance_date, u.enabled) == (
        "Al",
        "n",
        False,
        NOW,
        False,
    )
    fold(view, [mk(ev.UserEnabled, None, subject_id=A), mk(ev.UserMarkedSpammer, None, subject_id=A, ban=True)], 5)
    assert (u.enabled, u.spammer) == (False, True)
    fold(view, [mk(ev.UserUnmarkedSpammer, None, subject_id=A), mk(ev.UserDeleted, None, subject_id=A)], 7)
    assert (u.spammer, u.deleted, u.enabled, u.show_on_leaderboard) == (False, True, False, False)
    assert u.display_name.startswith("Deleted User")


# --- ConsensusView -----------------------------------------------------------------------


def test_consensus_keeps_each_annotators_latest_labels_and_reports():
    view = fold(
        ConsensusView(),
        [
            labels(A, P, spam=1.0, quality=0.5),
            labels(B, P, spam=0.0, quality=1.0),
            labels(A, P, kind="free", spam=0.0, quality=0.25),  # A changes their mind
            labels(C, P, kind="report", spam=1.0),
            labels(D, P, kind="report", pii=1.0),
        ],
    )
    facts = view.labels[P]
    assert facts.reports == 2 and facts.task_users == [A, B]
    assert view.label_aggregates(P) == {"quality": {"value": 0.625, "count": 2}, "spam": {"value": 0.0, "count": 2}}
    assert view.label_aggregates(P, exclude=frozenset({B})) == {
        "quality": {"value": 0.25, "count": 1},
        "spam": {"value": 0.0, "count": 1},
    }
    assert view.label_aggregates(R1) == {} and view.acceptance(R1) is None


def test_acceptance_follows_oa_rule_over_review_task_labels_only():
    view = fold(
        ConsensusView(),
        [
            labels(A, P, spam=1.0),
            labels(B, P, spam=0.0),
            labels(C, P, spam=0.0, lang_mismatch=0.0),
            labels(D, P, kind="free", spam=1.0),  # not a review
        ],
    )
    assert view.acceptance(P) == pytest.approx(1 - 1 / 3)
    assert view.acceptance(P, exclude=frozenset({A})) == 1.0
    assert view.acceptance(P, exclude=frozenset({A, B, C})) is None
    # a reviewer's later free labels do not rewrite their review (the write model decided on the review)
    fold(view, [labels(B, P, kind="free", spam=1.0)], start=10)
    assert view.acceptance(P) == pytest.approx(1 - 1 / 3)


def test_ranking_consensus_is_ranked_pairs_over_every_ranking():
    view = fold(
        ConsensusView(),
        [
            mk(ev.RankingSubmitted, A, parent_id=P, task_id=T1, ranked_message_ids=[R2, R1, R3]),
            mk(ev.RankingSubmitted, B, parent_id=P, task_id=T2, ranked_message_ids=[R2, R3, R1]),
            mk(ev.RankingSubmitted, C, parent_id=P, task_id=T3, ranked_message_ids=[R1, R3, R2]),
        ],
    )
    assert view.ranking_consensus(P) == [R2, R1, R3]  # R2>R1 2:1, R2>R3 2:1, R1 vs R3 tie -> lower id
    assert view.ranking_consensus(P, exclude=frozenset({A, B})) == [R1, R3, R2]
    assert view.ranking_consensus(R1) == []


def _labelled(matrix: list[list[float | None]]) -> ConsensusView:
    """Annotator i gives message j matrix[i][j] as 'quality' (None: no label)."""
    view = ConsensusView()
    events = [
        labels(UUID(int=0xA00 + i), UUID(int=0x500 + j), quality=v)
        for i, row in enumerate(matrix)
        for j, v in enumerate(row)
        if v is not None
    ]
    return fold(view, events)


def test_agreement_is_krippendorffs_alpha():
    perfect = _labelled([[0.0, 1.0, 0.5, 1.0], [0.0, 1.0, 0.5, 1.0], [0.0, 1.0, 0.5, None]])
    assert perfect.agreement("quality") == {
        "label": "quality",
        "alpha": pytest.approx(1.0),
        "units": 4,
        "annotators": 3,
    }
    # two coders who always disagree on a binary value: Do = 1, De = 2/3, alpha = 1 - 3/2
    assert _labelled([[1.0, 0.0], [0.0, 1.0]]).agreement("quality")["alpha"] == pytest.approx(-0.5)
    # units with a single annotator do not count; fewer than two units: no alpha
    sparse = _labelled([[1.0, 0.0, 1.0], [1.0, None, None]])
    assert sparse.agreement("quality") == {"label": "quality", "alpha": None, "units": 1, "annotators": 2}
    assert perfect.agreement("spam")["alpha"] is None


def test_agreement_without_any_variation_is_undefined_not_an_error():
    # everybody says 0.0 everywhere (typical for 'spam'): alpha is 0/0
    assert _labelled([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).agreement("quality")["alpha"] is None


# --- LeaderboardView ---------------------------------------------------------------------


def test_leaderboard_counts_oa_stats_for_a_known_history():
    view = fold(
        LeaderboardView(),
        [
            *basic_tree(),
            labels(B, P, spam=0.0),
            labels(C, P, mode="simple", spam=0.0),
            labels(D, P, kind="free", quality=1.0),
            mk(ev.MessageReviewed, None, message_id=P, review_count=2, score=1.0, accepted=True),
            mk(ev.MessageReviewed, None, message_id=R1, review_count=2, score=1.0, accepted=True),
            mk(ev.MessageReviewed, None, message_id=R2, review_count=2, score=1.0, accepted=True),
            mk(ev.MessageReviewed, None, message_id=R3, review_count=2, score=0.0, accepted=False),
            mk(ev.RankingSubmitted, A, parent_id=P, task_id=T1, ranked_message_ids=[R2, R1]),
            mk(ev.RankingSubmitted, D, parent_id=P, task_id=T2, ranked_message_ids=[R1, R2]),
            mk(ev.RanksComputed, None, tree_id=P, parent_id=P, ranked_message_ids=[R1, R2], ranking_count=2),
        ],
    )
    stats = {u: view.stats(u, "total", NOW) for u in (A, B, C, D)}
    expect = {
        A: dict(prompts=1, accepted_prompts=1, rankings_total=1),  # A's first choice R2 is not the consensus'
        B: dict(replies_assistant=1, accepted_replies_assistant=1, labels_full=1, reply_ranked_1=1, reply_ranked_2=1),
        C: dict(replies_assistant=1, accepted_replies_assistant=1, labels_simple=1, reply_ranked_1=1, reply_ranked_2=1),
        D: dict(replies_prompter=1, rankings_total=1, rankings_good=1),  # free labels are not counted
    }
    for user, counts in expect.items():
        assert stats[user] == {name: counts.get(name, 0) for name in STATS}, user
    # OA's formula by hand
    assert [leader_score(stats[u]) for u in (A, B, C, D)] == [1, 2 + 4 + 4 + 9 + 3, 1 + 4 + 4 + 9 + 3, 1 + 1 + 1]
    # a new consensus re-decides rankings_good
    fold(
        view,
        [mk(ev.RanksComputed, None, tree_id=P, parent_id=P, ranked_message_ids=[R2, R1], ranking_count=2)],
        start=20,
    )
    assert view.stats(A, "total", NOW)["rankings_good"] == 1 and view.stats(D, "total", NOW)["rankings_good"] == 0


def test_levels_follow_oa_thresholds():
    assert LEVELS[:5] == [0, 4, 9, 16, 24] and len(LEVELS) == 100
    assert [level(s) for s in (0, 3, 4, 8, 9, 23, 24)] == [1, 1, 2, 2, 3, 4, 5]
    assert level(10**9) == 100


def test_review_flips_and_deletion_move_accepted_counts():
    view = fold(
        LeaderboardView(),
        [*basic_tree(), mk(ev.MessageReviewed, None, message_id=R1, review_count=2, score=1, accepted=True)],
    )
    assert view.stats(B, "total", NOW)["accepted_replies_assistant"] == 1
    fold(view, [mk(ev.MessageReviewed, None, message_id=R1, review_count=3, score=0.3, accepted=False)], 10)
    assert view.stats(B, "total", NOW)["accepted_replies_assistant"] == 0
    fold(
        view,
        [
            mk(ev.MessageReviewed, None, message_id=R1, review_count=4, score=1, accepted=True),
            mk(ev.MessageReviewed, None, message_id=P, review_count=2, score=1, accepted=True),
            mk(ev.MessageDeleted, None, message_id=R1),
        ],
        11,
    )
    assert view.stats(B, "total", NOW)["accepted_replies_assistant"] == 0
    assert view.stats(B, "total", NOW)["replies_assistant"] == 1
    fold(view, [mk(ev.MessageDeleted, None, message_id=P)], 14)
    assert (view.stats(A, "total", NOW)["prompts"], view.stats(A, "total", NOW)["accepted_prompts"]) == (0, 0)


def test_undeleting_a_reply_restores_its_deleted_ancestors_on_the_board():
    """message_undeleted restores the message *and its ancestors* (the event contract, the
    write model and the message-tree view agree): the board must count the prompt again."""
    view = fold(
        LeaderboardView(),
        [
            *basic_tree(),
            mk(ev.MessageReviewed, None, message_id=P, review_count=2, score=1, accepted=True),
            mk(ev.MessageReviewed, None, message_id=R1, review_count=2, score=1, accepted=True),
            mk(ev.MessageDeleted, None, message_id=R1),
            mk(ev.MessageDeleted, None, message_id=P),
        ],
    )
    assert (view.stats(A, "total", NOW)["prompts"], view.stats(A, "total", NOW)["accepted_prompts"]) == (0, 0)
    fold(view, [mk(ev.MessageUndeleted, None, message_id=R3)], start=20)  # R3 -> R1 -> P
    assert (view.stats(A, "total", NOW)["prompts"], view.stats(A, "total", NOW)["accepted_prompts"]) == (1, 1)
    assert view.stats(B, "total", NOW)["accepted_replies_assistant"] == 1


def test_time_frames_sum_hour_buckets():
    hour = timedelta(hours=1)
    view = fold(
        LeaderboardView(),
        [
            seen(A, "alice"),
            prompt(A, mid=P, at=NOW - 40 * 24 * hour),
            reply(A, R1, P, "assistant", 1, at=NOW - 10 * 24 * hour),
            reply(A, R2, P, "assistant", 1, at=NOW - 3 * 24 * hour),
            reply(A, R3, P, "assistant", 1, at=NOW - 2 * hour),
        ],
    )
    got = {f: view.stats(A, f, NOW) for f in ("day", "week", "month", "total")}
    assert [got[f]["replies_assistant"] for f in ("day", "week", "month", "total")] == [1, 2, 3, 3]
    assert [got[f]["prompts"] for f in ("day", "week", "month", "total")] == [0, 0, 0, 1]
    # day = the last 24 hours (in hour buckets)
    assert view.stats(A, "day", NOW + 21 * hour)["replies_assistant"] == 1  # 23 hours old
    assert view.stats(A, "day", NOW + 23 * hour)["replies_assistant"] == 0  # 25 hours old


def test_streak_counts_consecutive_days_and_resets_after_36_hours():
    day = timedelta(days=1)
    view = fold(
        LeaderboardView(),
        [
            seen(A, "alice"),
            prompt(A, P, NOW - 5 * day, "a"),
            prompt(A, R1, NOW - 2 * day, "b"),
            prompt(A, R2, NOW - day, "c"),
            prompt(A, R3, NOW, "d"),
        ],
    )
    assert view.streak(A, NOW) == (2, NOW)  # three days in a row: two full days (OA: 0 on the first)
    assert view.streak(A, NOW + timedelta(hours=35)) == (2, NOW)
    assert view.streak(A, NOW + timedelta(hours=37)) == (0, None)
    assert view.streak(B, NOW) == (0, None)


def test_trollboard_facts():
    view = fold(
        LeaderboardView(),
        [
            *basic_tree(),
            labels(C, R1, spam=1.0, lang_mismatch=1.0, pii=1.0, toxicity=0.5),
            labels(D, R1, kind="report", spam=1.0),
            mk(ev.EmojiAdded, A, message_id=R1, emoji="-1"),
            mk(ev.EmojiAdded, C, message_id=R1, emoji="red_flag"),
            mk(ev.EmojiAdded, D, message_id=R1, emoji="+1"),
            mk(ev.EmojiRemoved, D, message_id=R1, emoji="+1"),
            mk(
                ev.TreeStateChanged,
                None,
                tree_id=P,
                old_state="initial_prompt_review",
                new_state="aborted_low_grade",
                reason="auto_mod_red_flags",
            ),
        ],
    )
    t = view.troll_stats(B, "total", NOW)
    assert (t["red_flags"], t["downvotes"], t["upvotes"], t["spam"], t["lang_mismatch"], t["pii"], t["toxicity"]) == (
        2,
        1,
        0,
        2,
        1,
        1,
        0.5,
    )
    assert troll_score(t) == 3 * 2 + 1 + 1 + 1  # red flags, downvote, lang_mismatch, pii
    assert view.troll_stats(A, "total", NOW)["spam_prompts"] == 1


# --- HistoryView ---------------------------------------------------------------------------


def test_history_indexes_users_trees_messages_and_tasks():
    view = fold(
        HistoryView(),
        [
            *basic_tree(),  # positions 1-8
            labels(C, R3, spam=0.0),  # 9
            mk(
                ev.TaskAssignedSummary,
                A,
                task_id=T1,
                task_type="rank_assistant_replies",
                collective=False,
                lang="en",
                expires_at=None,
                target_message_id=P,
                tree_id=P,
                ranked_message_ids=[R1, R2],
            ),  # 10
            mk(ev.UserRenamed, A, subject_id=B, display_name="x"),  # 11
            mk(ev.TreeHalted, None, tree_id=P),  # 12
        ],
    )
    index: dict[UUID, list[int]] = {}
    for entity, position in view.take_entries():
        index.setdefault(UUID(int=entity), []).append(position)
    assert sorted(index[P]) == [5, 6, 7, 8, 9, 10, 12]  # the tree (= its prompt) and the prompt message
    assert sorted(index[R3]) == [8, 9]
    assert sorted(index[R1]) == [6, 8]  # submitted, parent of R3 (a candidate of a task is not indexed)
    assert sorted(index[R2]) == [7]
    assert sorted(index[A]) == [1, 5, 10, 11]
    assert sorted(index[B]) == [2, 6, 11]
    assert index[T1] == [10]
    view.entries_written(True)
    assert view.take_entries() == [] and view.tree_of[R3].tree_id == P


# --- dirty tracking: every changed row is written at the next flush -------------------------


def _random_history(n: int = 90, seed: int = 1):
    rng = random.Random(seed)
    kinds = ["task"] * 7 + ["emoji", "delete", "halt", "spammer", "report", "nack"]
    actions = []
    for _ in range(n):
        kind = rng.choice(kinds)
        if kind == "task":
            actions.append(("task", rng.randrange(5), float(rng.random() < 0.15)))
        elif kind == "emoji":
            actions.append(("emoji", rng.randrange(5), rng.choice(["+1", "-1", "red_flag", "heart_eyes"])))
        elif kind in ("delete", "halt", "spammer"):
            actions.append((kind, rng.randrange(50), rng.random() < 0.6))
        elif kind == "report":
            actions.append(("report", rng.randrange(5), rng.randrange(50)))
        else:
            actions.append(("nack", rng.randrange(5), 0.0))
    return actions


@pytest.fixture
def sqlite_history(tmp_path):
    store = asyncio.run(make_history(f"sqlite:///{tmp_path / 'log.sqlite3'}", _random_history()))
    yield store
    store.close()


def test_every_changed_row_is_marked_dirty(sqlite_history):
    """A handler that changes a row without put/touch would lose the change at restore."""
    notes = sqlite_history.read_stored(0, 100_000)
    assert len(notes) > 100
    for view in ProjectionRunner(sqlite_history).views:
        before = encoded_rows(view)
        for n in notes:
            for t in view.tables.values():
                t.dirty.clear()
            view.apply(n.id, ev.decode_summary(n.state))
            after = encoded_rows(view)
            changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
            dirty = {(t.name, k) for t in view.tables.values() for k in t.dirty}
            assert changed <= dirty, (view.name, n.topic, changed - dirty)
            before = after


# --- the runner on both stores -----------------------------------------------------------


def snapshot(runner: ProjectionRunner) -> dict:
    enc = msgspec.msgpack.Encoder(uuid_format="bytes")  # as views store rows
    return {
        (v.key, t.name, str(k)): enc.encode(row)
        for v in runner.views
        for t in v.tables.values()
        for k, row in t.rows.items()
    }


def stored_rows(runner: ProjectionRunner) -> dict:
    return {(v.key, table, key): value for v in runner.views for table, key, value in runner.storage.rows(v.key)}


def stored_history(runner: ProjectionRunner) -> Counter:
    return Counter(runner.storage.history_entries("history@v1"))


def clean_rebuild(store: EventStore) -> tuple[dict, Counter]:
    fresh = ProjectionRunner(store)
    fresh.fold(store.read_stored(0, 1_000_000))
    history = Counter((str(UUID(int=e)), p) for e, p in fresh.by_name["history"].entries)
    return snapshot(fresh), history


@pytest.fixture
def history_store(store_url):
    store = asyncio.run(make_history(store_url, _random_history(70, seed=2)))
    yield store
    store.close()


def test_catch_up_then_restore_gives_equal_rows(history_store):
    runner = ProjectionRunner(history_store, page_size=37, flush_every=50)
    done = runner.catch_up()
    assert done == len(history_store.read_stored(0, 1_000_000)) > 50
    assert runner.position == history_store.max_position()
    rows = snapshot(runner)
    assert {v.name for v in runner.views} == {"message_tree", "consensus", "leaderboard", "history"}
    restored = ProjectionRunner(history_store)
    restored.restore()
    assert restored.position == runner.position
    assert all(v.position == runner.position for v in restored.views)
    assert snapshot(restored) == rows
    # what is stored is exactly what is in memory, and what a rebuild gives
    enc_stored = stored_rows(restored)
    assert enc_stored == rows
    assert (rows, stored_history(restored)) == clean_rebuild(history_store)
    # derived indexes come back too
    tree = restored.by_name["message_tree"]
    assert tree.by_frontend_id == runner.by_name["message_tree"].by_frontend_id
    assert tree.users_by_name == runner.by_name["message_tree"].users_by_name
    # nothing new: a second catch-up folds nothing and changes nothing
    assert restored.catch_up() == 0 and snapshot(restored) == rows


class Crash(Exception):
    pass


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.95])
def test_a_crash_inside_a_fold_then_a_restart_equals_a_clean_rebuild(history_store, fraction):
    dry = LeaderboardView()
    dry_calls = 0

    def count(e):
        nonlocal dry_calls
        dry_calls += 1

    dry._active = count
    fold(dry, [ev.decode_summary(n.state) for n in history_store.read_stored(0, 1_000_000)])
    crash_after = max(1, int(dry_calls * fraction))
    runner = ProjectionRunner(history_store, page_size=16, flush_every=32)
    runner.restore()
    board = runner.by_name["leaderboard"]
    calls = 0
    real_active = board._active

    def crashing_active(e):  # called after a handler already changed counters: a half-applied event
        nonlocal calls
        calls += 1
        if calls == crash_after:
            raise Crash
        real_active(e)

    board._active = crashing_active
    with pytest.raises(Crash):
        runner.catch_up()
    # the process is gone; a new one starts from what was stored
    restarted = ProjectionRunner(history_store, page_size=16, flush_every=32)
    restarted.restore()
    assert restarted.position < history_store.max_position()
    restarted.catch_up()
    assert (snapshot(restarted), stored_history(restarted)) == clean_rebuild(history_store)
    assert stored_rows(restarted) == snapshot(restarted)


def test_a_failed_flush_then_a_restart_equals_a_clean_rebuild(history_store):
    runner = ProjectionRunner(history_store, page_size=16, flush_every=32)
    real_write = runner.storage.write
    writes = 0

    def failing_write(*args):
        nonlocal writes
        writes += 1
        if writes == 3:
            raise Crash  # the transaction never commits
        real_write(*args)

    runner.storage.write = failing_write
    with pytest.raises(Crash):
        runner.catch_up()
    restarted = ProjectionRunner(history_store)
    restarted.restore()
    assert 0 < restarted.position < history_store.max_position()
    restarted.catch_up()
    assert (snapshot(restarted), stored_history(restarted)) == clean_rebuild(history_store)


CATCH_UP_SCRIPT = """
import sys, time
from infra.store import EventStore
from projections.runner import ProjectionRunner
runner = ProjectionRunner(EventStore(sys.argv[1]), page_size=5, flush_every=5)
runner.restore()
def progress(n):
    print(runner.position, flush=True)
    time.sleep(0.002)
runner.catch_up(progress)
print("done", flush=True)
time.sleep(60)
"""


def test_sigkill_during_catch_up_then_a_restart_equals_a_clean_rebuild(history_store, store_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CATCH_UP_SCRIPT, store_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(6)]
        assert all(line.strip().isdigit() for line in lines), (lines, proc.stderr.read() if proc.poll() else "")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    restarted = ProjectionRunner(history_store)
    restarted.restore()
    assert 0 < restarted.position < history_store.max_position()  # it was killed midway, after some flushes
    restarted.catch_up()
    assert (snapshot(restarted), stored_history(restarted)) == clean_rebuild(history_store)


# --- known bugs outside the views (projections/runner.py, projections/base.py, infra/cli.py) ----


def test_a_failed_flush_retried_by_the_same_runner_loses_no_rows(sqlite_history):
    runner = ProjectionRunner(sqlite_history, page_size=16, flush_every=32)
    real_write = runner.storage.write
    writes = 0

    def flaky_write(*args):  # e.g. a dropped connection, once
        nonlocal writes
        writes += 1
        if writes == 2:
            raise Crash
        real_write(*args)

    runner.storage.write = flaky_write
    with pytest.raises(Crash):
        runner.catch_up()
    runner.catch_up()  # the same process goes on (as ProjectionRunner._run / stop() would)
    restarted = ProjectionRunner(sqlite_history)
    restarted.restore()
    restarted.catch_up()
    assert (snapshot(restarted), stored_history(restarted)) == clean_rebuild(sqlite_history)


def test_ctrl_c_stops_oasst_project_run_between_pages_and_keeps_exactly_once(sqlite_history):
    """`oasst project run` takes Ctrl-C as a request to stop between pages, then flushes."""
    import os
    import signal
    import subprocess

    from devkit.servers import OASST

    env = {**os.environ, "OASST_DATABASE_URL": sqlite_history.url}
    proc = subprocess.Popen(
        [*OASST, "project", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert "following the log" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped at position" in out
    restarted = ProjectionRunner(sqlite_history)
    restarted.restore()
    restarted.catch_up()
    assert snapshot(restarted) == clean_rebuild(sqlite_history)[0]
