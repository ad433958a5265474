"""Open-Assistant's tree manager: which tasks a user can get, and what the tree does
next after each event (reviews, state changes, lottery, ranks, auto-moderation).

Task selection reads the write model; every decision it takes is emitted as an event,
so replaying the log never re-decides. Randomness is seeded from event data (the
new task's id, or the id of the event that triggered a decision).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from domain import events as ev
from domain import labels as lab
from domain.config import TreeConfig
from domain.model import ACTIVE_STATES, Message, Tree, User, WriteModel
from domain.rules import acceptance_score, ranked_pairs
from domain.shapes import conversation_message

# OA's weights for a "random" task request, by kind of task
RANDOM_WEIGHTS = {"rank": 10.0, "label_reply": 5.0, "label_prompt": 5.0, "reply": 2.0, "initial_prompt": 0.01}
KIND_OF = {
    "rank_assistant_replies": "rank",
    "rank_prompter_replies": "rank",
    "label_assistant_reply": "label_reply",
    "label_prompter_reply": "label_reply",
    "label_initial_prompt": "label_prompt",
    "assistant_reply": "reply",
    "prompter_reply": "reply",
    "initial_prompt": "initial_prompt",
}

Emit = Callable[..., ev.Event]


@dataclass
class TaskPlan:
    """Everything a TaskAssigned event needs, except the envelope."""

    task_type: str
    payload: dict
    target_message_id: UUID | None = None
    tree_id: UUID | None = None
    label_mode: str | None = None
    ranked_message_ids: list[UUID] | None = None


@dataclass(slots=True)
class TreeWork:
    """What one tree offers to task selection, computed once per change of the tree (its
    revision) or of whose votes count (the spam epoch) rather than on every request."""

    revision: int
    spam_epoch: int
    size: int  # messages that count toward the goal size: accepted or still in review, live
    to_label: list[tuple[Message, int]]  # live, awaiting review, short of reviews: (message, honest reviews)
    reply_parents: list[Message]  # live messages with room for another reply
    rank_parents: dict[UUID, list[UUID]]  # parent -> its accepted live replies (more than one)
    rankings: dict[UUID, int]  # parent -> rankings by users not marked spammers


def change_state(emit: Emit, tree_id: UUID, old_state: str, new_state: str, reason: str) -> None:
    """A tree's state changes, and why (one decision event)."""
    emit(ev.TreeStateChanged, tree_id=tree_id, old_state=old_state, new_state=new_state, reason=reason)


class TreeManager:
    def __init__(self, model: WriteModel, config: TreeConfig):
        self.model = model
        self.cfg = config
        self._pools: dict[tuple[str, str | None], tuple[int, int, list[tuple]]] = {}

    # --- candidates -------------------------------------------------------------------

    def _recent_pending(self, message_id: UUID, now: datetime, prefix: str) -> int:
        span = timedelta(seconds=self.cfg.recent_tasks_span_sec)
        tasks = self.model.tasks
        return sum(
            1
            for t in self.model.pending_by_target.get(message_id, ())
            if tasks[t].type.startswith(prefix) and now - tasks[t].created_at < span
        )

    def work(self, tree: Tree) -> TreeWork:
        found = tree.work  # kept on the tree while it is active
        if found is None or found.revision != tree.revision or found.spam_epoch != self.model.spam_epoch:
            found = tree.work = self._tree_work(tree)
        return found

    def _tree_work(self, tree: Tree) -> TreeWork:
        m, cfg = self.model, self.cfg
        hidden: dict[UUID, bool] = {}
        size = 0
        for mid in tree.message_ids:  # parents come before their children
            x = m.messages[mid]
            hidden[mid] = x.deleted or x.user_id in m.spammers or (x.parent_id is not None and hidden[x.parent_id])
            if not hidden[mid] and not x.late and x.review_result is not False:
                size += 1
        to_label = []
        for x in tree.awaiting_review.values():
            needed = cfg.num_reviews_initial_prompt if x.parent_id is None else cfg.num_reviews_reply
            honest = self.honest_review_count(x)
            if not hidden[x.id] and honest < needed:
                to_label.append((x, honest))
        rank_parents = {}
        for mid in tree.message_ids:
            parent = m.messages[mid]
            if parent.role == "assistant" and not cfg.rank_prompter_replies:
                continue
            replies = [
                c for c in parent.children if m.messages[c].review_result and not m.messages[c].late and not hidden[c]
            ]
            if len(replies) > 1:
                rank_parents[mid] = replies
        return TreeWork(
            tree.revision,
            m.spam_epoch,
            size,
            to_label,
            [x for x in tree.reply_parents.values() if not hidden[x.id]],
            rank_parents,
            {p: len(self.honest_rankings(tree, p)) for p in rank_parents},
        )

    def _pool(self, task_type: str, lang: str | None) -> list[tuple]:
        """What the active trees offer for one task type, before asking who wants it:
        entries (target, ...) that ``_allowed`` checks for one user. Kept until any tree
        changes (requests and acks change none, so most requests reuse it)."""
        m = self.model
        cached = self._pools.get((task_type, lang))
        if cached is not None and cached[0] == m.revision and cached[1] == m.spam_epoch:
            return cached[2]
        pool = self._build_pool(task_type, lang)
        self._pools[(task_type, lang)] = (m.revision, m.spam_epoch, pool)
        return pool

    def _build_pool(self, task_type: str, lang: str | None) -> list[tuple]:
        m, cfg = self.model, self.cfg
        if task_type == "initial_prompt":
            waiting = len(m.trees_by_state.get("prompt_lottery_waiting", ()))
            in_review = len(m.trees_by_state.get("initial_prompt_review", ()))
            ok = in_review < cfg.max_initial_prompt_review and waiting < cfg.max_prompt_lottery_waiting
            return [(None,)] if ok else []
        if task_type == "label_initial_prompt":
            return [
                (tree.id, msg, honest)
                for tree in m.trees_in("initial_prompt_review", lang)
                for msg, honest in self.work(tree).to_label
                if msg.parent_id is None
            ]
        if task_type in ("label_assistant_reply", "label_prompter_reply"):
            role = task_type.split("_")[1]
            return [
                (msg.id, msg, honest)
                for tree in m.trees_in("growing", lang)
                for msg, honest in self.work(tree).to_label
                if msg.role == role and msg.parent_id
            ]
        if task_type in ("assistant_reply", "prompter_reply"):
            parent_role = "prompter" if task_type == "assistant_reply" else "assistant"
            pool = []
            for tree in m.trees_in("growing", lang):
                work = self.work(tree)
                if work.size < tree.goal_tree_size:  # OA: no new replies once accepted + in review reach the goal
                    pool.extend((msg.id, msg) for msg in work.reply_parents if msg.role == parent_role)
            return pool
        if task_type in ("rank_assistant_replies", "rank_prompter_replies"):
            role = task_type.split("_")[1]
            pool = []
            for tree in m.trees_in("ranking", lang):
                work = self.work(tree)
                pool.extend(
                    (parent_id, tree, replies, work.rankings[parent_id])
                    for parent_id, replies in work.rank_parents.items()
                    if m.messages[replies[0]].role == role
                )
            return pool
        return []

    def _allowed(self, task_type: str, entry: tuple, uid: UUID, now: datetime) -> bool:
        """May this user take this entry of the pool?"""
        if task_type == "initial_prompt":
            return True
        if task_type.startswith("label_"):
            cfg = self.cfg
            needed = cfg.num_reviews_initial_prompt if task_type == "label_initial_prompt" else cfg.num_reviews_reply
            return self._can_label(entry[1], entry[2], uid, needed, now)
        if task_type.startswith("rank_"):
            return self._can_rank(entry[1], entry[0], entry[2], entry[3], uid, now)
        return self._can_reply(entry[1], uid, now)

    def targets(self, task_type: str, user: User, lang: str | None, now: datetime) -> Iterator[UUID | None]:
        """The possible targets of one task type for this user, lazily (the first one
        is enough to know the type is available). Only active trees are looked at."""
        if task_type in KIND_OF:
            for entry in self._pool(task_type, lang):
                if self._allowed(task_type, entry, user.id, now):
                    yield entry[0]

    def candidates(self, user: User, lang: str | None, now: datetime) -> dict[str, list[UUID | None]]:
        """Task type -> all possible targets for this user (empty types left out)."""
        found = {t: list(self.targets(t, user, lang, now)) for t in KIND_OF}
        return {t: targets for t, targets in found.items() if targets}

    def _can_label(self, msg: Message, honest: int, uid: UUID, needed: int, now: datetime) -> bool:
        """``msg`` is live, awaiting review, with ``honest`` reviews: may this user review it?"""
        return (
            msg.user_id != uid
            and uid not in msg.task_labels
            and uid not in msg.emojis.get("_skip_labeling", ())
            and honest + self._recent_pending(msg.id, now, "label") < needed
        )

    def _can_reply(self, msg: Message, uid: UUID, now: datetime) -> bool:
        """``msg`` is live with room for a reply: may this user reply?"""
        if (msg.id, uid) in self.model.replied or uid in msg.emojis.get("_skip_reply", ()):
            return False
        return self._recent_pending(msg.id, now, "") == 0

    def _can_rank(self, tree: Tree, parent_id: UUID, replies: list[UUID], done: int, uid: UUID, now: datetime) -> bool:
        m = self.model
        if (parent_id, uid) in tree.rankers or uid in m.messages[parent_id].emojis.get("_skip_ranking", ()):
            return False
        if any(m.messages[r].user_id == uid for r in replies):
            return False  # nobody ranks their own reply
        return done + self._recent_pending(parent_id, now, "rank") < self.cfg.num_required_rankings

    def rank_parents(self, tree: Tree) -> dict[UUID, list[UUID]]:
        """Parents whose accepted live replies (more than one) need ranking."""
        return self.work(tree).rank_parents

    # --- building a task ----------------------------------------------------------------

    def plan(self, user: User, requested: str, lang: str | None, now: datetime, rng: random.Random) -> TaskPlan | None:
        random_request = requested == "random"
        if random_request:
            requested = self._random_type(user, lang, now, rng)
            if requested is None:
                return None
        pool = self._pool(requested, lang) if requested in KIND_OF else []
        entry = None
        if requested == "assistant_reply" and rng.random() < self.cfg.p_lonely_child_extension:
            lonely = [e for e in pool if 0 < len(e[1].children) < self.cfg.lonely_children_count]
            entry = self._draw(requested, lonely, user.id, now, rng)
        entry = entry or self._draw(requested, pool, user.id, now, rng)
        return self._build(requested, entry[0], user, lang, rng, random_request) if entry else None

    def _random_type(self, user: User, lang: str | None, now: datetime, rng: random.Random) -> str | None:
        """OA's weighted pick among the kinds of task available to the user, by drawing
        kinds without replacement until one is available (the same distribution as a
        weighted draw among the available kinds, but usually checks one or two kinds);
        within a kind, a uniform pick among its available types."""
        kinds = sorted(RANDOM_WEIGHTS)
        while kinds:
            kind = rng.choices(kinds, weights=[RANDOM_WEIGHTS[k] for k in kinds])[0]
            kinds.remove(kind)
            types = sorted(t for t, k in KIND_OF.items() if k == kind)
            rng.shuffle(types)
            for task_type in types:
                if next(self.targets(task_type, user, lang, now), False) is not False:
                    return task_type
        return None

    def _draw(self, task_type: str, pool: list[tuple], uid: UUID, now: datetime, rng: random.Random) -> tuple | None:
        """A uniform pick among the entries this user may take. It draws from the whole pool
        and rejects what the user may not take (still uniform over the allowed ones), so a
        request checks a few entries rather than all; when most are not for this user it
        falls back to filtering the pool."""
        for _ in range(min(8, len(pool))):
            entry = pool[rng.randrange(len(pool))]
            if self._allowed(task_type, entry, uid, now):
                return entry
        allowed = [e for e in pool if self._allowed(task_type, e, uid, now)]
        return rng.choice(allowed) if allowed else None

    def conversation(self, msg: Message, user: User) -> dict:
        return {"messages": [conversation_message(x, user.id) for x in self.model.thread(msg)]}

    def _build(
        self,
        task_type: str,
        target: UUID | None,
        user: User,
        lang: str | None,
        rng: random.Random,
        random_request: bool = True,
    ) -> TaskPlan:
        m = self.model
        if task_type == "initial_prompt":
            return TaskPlan(task_type, {"type": task_type, "hint": None})
        msg = m.messages[target]
        if task_type in ("assistant_reply", "prompter_reply"):
            payload = {"type": task_type, "conversation": self.conversation(msg, user)}
            if task_type == "prompter_reply":
                payload["hint"] = None
            return TaskPlan(task_type, payload, msg.id, msg.tree_id)
        if task_type.startswith("label_"):
            p_full = {
                "label_initial_prompt": self.cfg.p_full_labeling_review_prompt,
                "label_assistant_reply": self.cfg.p_full_labeling_review_reply_assistant,
                "label_prompter_reply": self.cfg.p_full_labeling_review_reply_prompter,
            }[task_type]
            # OA: a reply gets a simple (spam) review only when a random task was asked for
            may_simplify = random_request or task_type == "label_initial_prompt"
            mode = "simple" if may_simplify and rng.random() > p_full else "full"
            names = lab.valid_labels(task_type, mode)
            payload = {
                "type": task_type,
                "message_id": str(msg.id),
                "valid_labels": names,
                "mandatory_labels": lab.MANDATORY_LABELS,
                "mode": mode,
                "disposition": "spam" if mode == "simple" else "quality",
                "labels": lab.describe(names),
                "conversation": self.conversation(msg, user),
            }
            payload["prompt" if task_type == "label_initial_prompt" else "reply"] = msg.text
            return TaskPlan(task_type, payload, msg.id, msg.tree_id, label_mode=mode)
        # ranking: replies in a shuffled order; the answer indexes into reply_messages
        tree = m.trees[msg.tree_id]
        replies = list(self.rank_parents(tree)[msg.id])
        rng.shuffle(replies)
        reply_msgs = [m.messages[r] for r in replies]
        reveal = all(r.synthetic for r in reply_msgs)
        reply_messages = [conversation_message(r, user.id) for r in reply_msgs]
        if not reveal:  # OA hides the flag unless every reply is synthetic
            for r in reply_messages:
                r["synthetic"] = None
        payload = {
            "type": task_type,
            "conversation": self.conversation(msg, user),
            "replies": [r.text for r in reply_msgs],
            "reply_messages": reply_messages,
            "message_tree_id": str(tree.id),
            "ranking_parent_id": str(msg.id),
            "reveal_synthetic": reveal,
        }
        return TaskPlan(task_type, payload, msg.id, tree.id, ranked_message_ids=replies)

    # --- reacting to events ----------------------------------------------------------------

    def react(self, event: ev.Event, emit: Emit) -> None:
        """Emit the tree manager's decisions that follow from ``event`` (already applied)."""
        reaction = _REACTIONS.get(type(event))  # one lookup per event: this runs for every event emitted
        if reaction is not None:
            reaction(self, event, emit)

    # one reaction per event type (``_REACTIONS`` below); events not listed need none

    def _on_tree_imported(self, event: ev.TreeImported, emit: Emit) -> None:
        if event.state == "backlog_ranking":
            self._keep_rankings_active(event.lang, event, emit)

    def _on_labels_submitted(self, event: ev.LabelsSubmitted, emit: Emit) -> None:
        if event.kind == "task":
            self._review(self.model.messages[event.message_id], emit)
        elif event.kind == "report":
            self._auto_moderate_flags(self.model.messages[event.message_id], emit)

    def _on_emoji_added(self, event: ev.EmojiAdded, emit: Emit) -> None:
        if event.emoji == "red_flag":
            self._auto_moderate_flags(self.model.messages[event.message_id], emit)
        elif event.emoji == "_skip_reply":
            self._auto_moderate_skips(self.model.messages[event.message_id], emit)

    def _auto_moderate_skips(self, msg: Message, emit: Emit) -> None:
        """OA halts a tree whose replies were skipped too often while it was still open."""
        tree = self.model.trees[msg.tree_id]
        if (
            self.cfg.auto_mod_enabled
            and tree.skip_replies >= self.cfg.auto_mod_max_skip_reply
            and tree.state in ("initial_prompt_review", "growing")
        ):
            change_state(emit, tree.id, tree.state, "halted_by_moderator", "auto_mod_skip_reply")

    def _on_message_reviewed(self, event: ev.MessageReviewed, emit: Emit) -> None:
        msg = self.model.messages[event.message_id]
        tree = self.model.trees[msg.tree_id]
        if tree.state == "initial_prompt_review":
            new = "prompt_lottery_waiting" if event.accepted else "aborted_low_grade"
            change_state(emit, tree.id, tree.state, new, "initial_prompt_review")
        elif msg.parent_id is None:
            self._prompt_review_changed(tree, event, emit)
        else:
            self._recheck(tree, emit)

    def _on_message_deleted(self, event: ev.MessageDeleted, emit: Emit) -> None:
        msg = self.model.messages[event.message_id]
        tree = self.model.trees[msg.tree_id]
        if msg.parent_id is None and tree.state not in ("halted_by_moderator", "aborted_low_grade", "ready_for_export"):
            change_state(emit, tree.id, tree.state, "halted_by_moderator", "all_messages_deleted")
        else:
            self._recheck(tree, emit)

    def _recheck(self, tree: Tree, emit: Emit) -> None:
        """A message's review or deletion may end a growing tree's growth or its ranking."""
        if tree.state == "growing":
            self._check_growing(tree, emit)
        elif tree.state == "ranking":
            self._check_ranking(tree, emit)

    def _on_ranking_submitted(self, event: ev.RankingSubmitted, emit: Emit) -> None:
        tree = self.model.trees[self.model.messages[event.parent_id].tree_id]
        if tree.state == "ranking":
            self._check_ranking(tree, emit)

    def _on_initial_prompt_submitted(self, event: ev.InitialPromptSubmitted, emit: Emit) -> None:
        if event.user_id in self.model.spammers:
            # nobody will review it (it is hidden): do not let it hold a review slot
            change_state(
                emit, event.message_id, "initial_prompt_review", "halted_by_moderator", "author_marked_spammer"
            )

    def _on_user_marked_spammer(self, event: ev.UserMarkedSpammer, emit: Emit) -> None:
        self._apply_spam_mark(event.subject_id, True, emit)

    def _on_user_unmarked_spammer(self, event: ev.UserUnmarkedSpammer, emit: Emit) -> None:
        self._apply_spam_mark(event.subject_id, False, emit)

    def _on_tree_halted(self, event: ev.TreeHalted, emit: Emit) -> None:
        tree = self.model.trees[event.tree_id]
        if tree.halted_from == "growing":
            self._lottery(tree.lang, event, emit)
        self._activate_backlog(tree.lang, event, emit)

    def honest_review_count(self, msg: Message) -> int:
        """Review labels that count: those of users not marked spammers."""
        return sum(1 for u in msg.task_labels if u not in self.model.spammers)

    def honest_rankings(self, tree: Tree, parent_id: UUID) -> list[list[UUID]]:
        """A parent's rankings, without those of users marked spammers."""
        return [order for user, order in tree.rankings.get(parent_id, ()) if user not in self.model.spammers]

    def _review(self, msg: Message, emit: Emit, again: bool = False) -> None:
        """OA's acceptance over the review labels of users not marked spammers. ``again``:
        re-decide a message reviewed before (a spam mark changed whose labels count)."""
        needed = self.cfg.num_reviews_initial_prompt if msg.parent_id is None else self.cfg.num_reviews_reply
        labels = [
            {k: v for k, v in zip(("spam", "lang_mismatch"), msg.task_labels[u], strict=True) if v is not None}
            for u in sorted(msg.task_labels)
            if u not in self.model.spammers
        ]
        if msg.late or (len(labels) < needed and not (again and labels)):
            return
        threshold = self.cfg.acceptance_threshold(msg.parent_id is None)
        score = round(acceptance_score(labels), 6)
        if again and msg.review_result == (score > threshold):
            return
        emit(ev.MessageReviewed, message_id=msg.id, review_count=len(labels), score=score, accepted=score > threshold)

    def _prompt_review_changed(self, tree: Tree, event: ev.MessageReviewed, emit: Emit) -> None:
        """A prompt's acceptance changed after its review (a spam mark changed whose labels
        count): a prompt rejected by its review comes back, one accepted goes out again."""
        if event.accepted and tree.state == "aborted_low_grade" and tree.aborted_by_review:
            change_state(emit, tree.id, tree.state, "prompt_lottery_waiting", "review_changed")
        elif not event.accepted and tree.state in ("prompt_lottery_waiting", "growing"):
            change_state(emit, tree.id, tree.state, "aborted_low_grade", "review_changed")

    def preview_spam_mark(self, user_id: UUID, marked: bool) -> list[tuple[type[ev.Event], dict]]:
        """The re-decisions a spam mark (or unmark) would emit, as (event type, fields), without
        emitting or applying them: the mark is put on the model's spammers only while they are
        worked out. What those decisions set off in turn is decided when they are applied."""
        spammers, was = self.model.spammers, user_id in self.model.spammers
        planned: list[tuple[type[ev.Event], dict]] = []
        (spammers.add if marked else spammers.discard)(user_id)
        try:
            self._apply_spam_mark(user_id, marked, lambda cls, **fields: planned.append((cls, fields)))
        finally:
            (spammers.add if was else spammers.discard)(user_id)
        return planned

    def _apply_spam_mark(self, user_id: UUID, marked: bool, emit: Emit) -> None:
        """Re-decide what the user's contributions decided: acceptance of the messages they
        reviewed, ranks of the replies they ranked, and the state of trees they started."""
        m = self.model
        for mid in sorted(m.labelled_by.get(user_id, ()), key=str):
            msg = m.messages[mid]
            if msg.review_result is not None:
                self._review(msg, emit, again=True)
        for parent_id in sorted(m.ranked_by.get(user_id, ()), key=str):
            parent = m.messages[parent_id]
            tree = m.trees[parent.tree_id]
            if tree.state != "ready_for_export":
                continue
            current = sorted(
                (c for c in parent.children if m.messages[c].rank is not None), key=lambda c: m.messages[c].rank
            )
            rankings = self.honest_rankings(tree, parent_id)
            order = ranked_pairs(rankings)
            if order != current:
                emit(
                    ev.RanksComputed,
                    tree_id=tree.id,
                    parent_id=parent_id,
                    ranked_message_ids=order,
                    ranking_count=len(rankings),
                )
        for mid in m.authored.get(user_id, ()):
            tree = m.trees.get(mid)  # a tree's id is its prompt's id
            if tree is None:
                continue
            if marked and tree.state in ("initial_prompt_review", "prompt_lottery_waiting", "growing", "ranking"):
                change_state(emit, tree.id, tree.state, "halted_by_moderator", "author_marked_spammer")
            elif not marked and tree.state == "halted_by_moderator" and tree.spam_halted_from:
                change_state(emit, tree.id, tree.state, tree.spam_halted_from, "author_unmarked_spammer")

    def _auto_moderate_flags(self, msg: Message, emit: Emit) -> None:
        tree = self.model.trees[msg.tree_id]
        if not self.cfg.auto_mod_enabled or msg.red_flags < self.cfg.auto_mod_red_flags:
            return
        if tree.state not in ("initial_prompt_review", "growing"):
            return
        if msg.parent_id is None:
            change_state(emit, tree.id, tree.state, "aborted_low_grade", "auto_mod_red_flags")
        elif not msg.deleted:
            emit(ev.MessageDeleted, message_id=msg.id, reason="auto_mod_red_flags")

    def _check_growing(self, tree: Tree, emit: Emit) -> None:
        m = self.model
        live = [m.messages[i] for i in tree.message_ids if not m.messages[i].late and not m.is_hidden(m.messages[i])]
        if any(x.review_result is None for x in live):
            return
        if sum(1 for x in live if x.review_result) >= tree.goal_tree_size:
            change_state(emit, tree.id, "growing", "ranking", "goal_tree_size_reached")

    def _check_ranking(self, tree: Tree, emit: Emit) -> None:
        parents = self.rank_parents(tree)
        needed = self.cfg.num_required_rankings
        if any(len(self.honest_rankings(tree, p)) < needed for p in parents):
            return
        change_state(emit, tree.id, "ranking", "ready_for_scoring", "rankings_complete")
        try:
            results = {p: ranked_pairs(self.honest_rankings(tree, p)) for p in sorted(parents)}
        except Exception:  # noqa: BLE001 - OA's scoring_failed state exists for this
            change_state(emit, tree.id, "ready_for_scoring", "scoring_failed", "ranking_consensus_failed")
            return
        for parent_id, order in results.items():
            emit(
                ev.RanksComputed,
                tree_id=tree.id,
                parent_id=parent_id,
                ranked_message_ids=order,
                ranking_count=len(self.honest_rankings(tree, parent_id)),
            )
        change_state(emit, tree.id, "ready_for_scoring", "ready_for_export", "scored")

    def _after_state_change(self, event: ev.TreeStateChanged, emit: Emit) -> None:
        tree = self.model.trees[event.tree_id]
        if event.new_state not in ACTIVE_STATES:
            tree.work = None
        if event.new_state == "ranking":
            self._check_ranking(tree, emit)
        if event.new_state == "prompt_lottery_waiting" or event.old_state == "growing":
            self._lottery(tree.lang, event, emit)
        if event.new_state in ("ready_for_export", "aborted_low_grade", "halted_by_moderator", "scoring_failed"):
            self._activate_backlog(tree.lang, event, emit)

    def _lottery(self, lang: str, trigger: ev.Event, emit: Emit) -> None:
        """Start waiting trees while fewer than max_active_trees of ``lang`` grow."""
        m, rng = self.model, random.Random(trigger.id.int)
        while len(m.trees_in("growing", lang)) < self.cfg.max_active_trees:
            by_author = m.lottery.get(lang)  # author -> waiting trees, in the order they came
            if not by_author:
                return
            author = self._draw_author(lang, by_author, rng)
            winner = rng.choice(list(by_author[author].values()))
            goal = self.cfg.goal_tree_size
            if self.cfg.random_goal_tree_size and self.cfg.min_goal_tree_size < goal:
                goal = rng.randint(self.cfg.min_goal_tree_size, goal)
            emit(
                ev.TreeStateChanged,
                tree_id=winner.id,
                old_state="prompt_lottery_waiting",
                new_state="growing",
                reason="lottery",
                goal_tree_size=goal,
            )

    def _draw_author(self, lang: str, by_author: dict, rng: random.Random) -> UUID | None:
        """OA's weighted pick among authors with waiting prompts: weight 1 + their replies
        ranked first in the last 30 days. Most weigh 1: a uniform pick is one index into the
        list of authors; only the recent winners among them are walked for the rest."""
        authors = self.model.lottery_authors[lang]
        extra = [(a, n) for a, n in self.model.rank1_recent.items() if a in by_author]
        r = rng.random() * (len(authors) + sum(n for _, n in extra))
        if r < len(authors):
            return authors[int(r)]
        r -= len(authors)
        for author, n in extra:
            if r < n:
                return author
            r -= n
        return extra[-1][0]  # (float rounding)

    def _activate_backlog(self, lang: str, trigger: ev.Event, emit: Emit) -> None:
        backlog = self.model.trees_in("backlog_ranking", lang)  # in the order the trees came
        rng = random.Random(trigger.id.int ^ 0xB4C)
        if backlog and rng.random() < self.cfg.p_activate_backlog_tree:
            tree = rng.choice(list(backlog))
            change_state(emit, tree.id, "backlog_ranking", "ranking", "backlog_activated")
        self._keep_rankings_active(lang, trigger, emit)

    def _keep_rankings_active(self, lang: str, trigger: ev.Event, emit: Emit) -> None:
        """OA's min_active_rankings_per_lang: backlog trees (oldest first) fill the ranking
        state up to that many trees of the language."""
        missing = self.cfg.min_active_rankings_per_lang - len(self.model.trees_in("ranking", lang))
        if missing <= 0:
            return
        for tree in list(itertools.islice(self.model.trees_in("backlog_ranking", lang), missing)):
            change_state(emit, tree.id, "backlog_ranking", "ranking", "backlog_activated")


# the tree manager's reaction to each event type (exact types: events are never subclassed)
_REACTIONS: dict[type[ev.Event], Callable[[TreeManager, Any, Emit], None]] = {
    ev.TreeImported: TreeManager._on_tree_imported,
    ev.LabelsSubmitted: TreeManager._on_labels_submitted,
    ev.EmojiAdded: TreeManager._on_emoji_added,
    ev.MessageReviewed: TreeManager._on_message_reviewed,
    ev.MessageDeleted: TreeManager._on_message_deleted,
    ev.RankingSubmitted: TreeManager._on_ranking_submitted,
    ev.TreeStateChanged: TreeManager._after_state_change,
    ev.InitialPromptSubmitted: TreeManager._on_initial_prompt_submitted,
    ev.UserMarkedSpammer: TreeManager._on_user_marked_spammer,
    ev.UserUnmarkedSpammer: TreeManager._on_user_unmarked_spammer,
    ev.TreeHalted: TreeManager._on_tree_halted,
}
