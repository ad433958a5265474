"""Unit tests of the write model and the tree manager: no database, no HTTP."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from domain import events as ev
from domain.config import TreeConfig
from domain.model import WriteModel, stream_of
from domain.tree_manager import TreeManager

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class World:
    """A write model fed by hand, recording the tree manager's decisions."""

    def __init__(self, **config):
        self.model = WriteModel(TreeConfig(**config))
        self.manager = TreeManager(self.model, self.model.cfg)
        self.decisions: list[ev.Event] = []
        self.log: list[tuple[ev.Event, UUID, int]] = []
        self.clock = T0

    def emit(self, cls, user_id: UUID | None = None, **fields) -> ev.Event:
        self.clock += timedelta(seconds=1)
        event = cls(id=uuid4(), at=self.clock, user_id=user_id, **fields)
        stream = stream_of(event)
        version = self.model.next_version(stream)
        self.model.apply(event, stream, version)
        self.log.append((event, stream, version))
        return event

    def command(self, cls, user_id: UUID | None = None, **fields) -> ev.Event:
        event = self.emit(cls, user_id, **fields)
        queue = [event]
        while queue:
            before = len(self.decisions)

            def decide(c, **f):
                e = self.emit(c, **f)
                self.decisions.append(e)
                return e

            self.manager.react(queue.pop(0), decide)
            queue.extend(self.decisions[before:])
        return event

    def prompt(self, author: UUID, lang: str = "en") -> UUID:
        mid = uuid4()
        self.command(
            ev.InitialPromptSubmitted,
            author,
            message_id=mid,
            frontend_message_id=str(mid),
            task_id=None,
            text=f"prompt {mid}",
            lang=lang,
        )
        return mid

    def label(self, labeller: UUID, mid: UUID, spam: float) -> None:
        self.command(ev.LabelsSubmitted, labeller, message_id=mid, labels={"spam": spam}, kind="task")

    def user(self, name: str):
        uid = uuid4()
        self.emit(ev.UserSeen, uid, subject_id=uid, auth_method="local", username=name, display_name=name)
        return self.model.users[uid]


def test_three_reviews_one_spam_vote_accepts_two_reject():
    w = World()
    alice, *reviewers = [uuid4() for _ in range(4)]
    accepted, rejected = w.prompt(alice), w.prompt(alice)
    for r, spam in zip(reviewers, (1.0, 0.0, 0.0), strict=True):
        w.label(r, accepted, spam)
    for r, spam in zip(reviewers, (1.0, 1.0, 0.0), strict=True):
        w.label(r, rejected, spam)
    assert w.model.messages[accepted].review_result is True
    assert w.model.messages[rejected].review_result is False
    assert w.model.trees[accepted].state == "growing"  # accepted, then won the lottery at once
    assert w.model.trees[rejected].state == "aborted_low_grade"


def test_lottery_respects_max_active_trees_and_replays_the_same():
    w = World(max_active_trees=2, num_reviews_initial_prompt=1)
    authors = [uuid4() for _ in range(5)]
    prompts = [w.prompt(a) for a in authors]
    for p in prompts:
        w.label(uuid4(), p, 0.0)
    growing = {t.id for t in w.model.trees_in("growing")}
    assert len(growing) == 2 and len(w.model.trees_in("prompt_lottery_waiting")) == 3
    # the decisions are events: folding the log again gives the same model, deciding nothing
    replay = WriteModel(w.model.cfg)
    for event, stream, version in w.log:
        replay.apply(ev.decode(ev.encode(event)), stream, version)
    assert {t.id for t in replay.trees_in("growing")} == growing
    assert {t.id: t.state for t in replay.trees.values()} == {t.id: t.state for t in w.model.trees.values()}
    assert replay.versions == w.model.versions


def test_lottery_draw_is_seeded_by_the_triggering_event():
    def winners(seed_event_id: UUID) -> set:
        w = World(max_active_trees=1, num_reviews_initial_prompt=1)
        prompts = [w.prompt(UUID(int=i + 1)) for i in range(4)]
        for p in prompts[:-1]:
            w.label(uuid4(), p, 1.0)  # rejected: nothing waits yet
        trigger = ev.TreeStateChanged(
            id=seed_event_id,
            at=T0,
            tree_id=prompts[-1],
            old_state=None,
            new_state="prompt_lottery_waiting",
            reason="test",
        )
        chosen = []
        w.manager._lottery("en", trigger, lambda c, **f: chosen.append(f["tree_id"]))
        return set(chosen)

    seed = uuid4()
    assert winners(seed) == winners(seed)


def test_candidates_exclude_own_messages_and_done_reviews():
    w = World(num_reviews_initial_prompt=2)
    alice, bob, carol = w.user("alice"), w.user("bob"), w.user("carol")
    mid = w.prompt(alice.id)
    assert "label_initial_prompt" not in w.manager.candidates(alice, None, w.clock)
    assert w.manager.candidates(bob, None, w.clock)["label_initial_prompt"] == [mid]
    w.label(bob.id, mid, 0.0)
    assert "label_initial_prompt" not in w.manager.candidates(bob, None, w.clock)  # already reviewed
    assert "label_initial_prompt" in w.manager.candidates(carol, None, w.clock)
    assert "label_initial_prompt" not in w.manager.candidates(carol, "de", w.clock)  # other language


def test_random_task_weights_prefer_ranking_and_labels():
    w = World()
    bob = w.user("bob")
    w.prompt(uuid4())
    kinds = [w.manager.plan(bob, "random", None, w.clock, random.Random(i)).task_type for i in range(200)]
    # only an initial prompt (weight 0.01) and a label task (weight 5) are possible
    assert kinds.count("label_initial_prompt") > 190


def test_growing_tree_moves_to_ranking_then_ready_for_export():
    w = World(num_reviews_initial_prompt=1, num_reviews_reply=1, goal_tree_size=3, num_required_rankings=1)
    author, reviewer = uuid4(), uuid4()
    root = w.prompt(author)
    w.label(reviewer, root, 0.0)
    replies = []
    for i in range(2):
        rid = uuid4()
        w.command(
            ev.ReplySubmitted,
            uuid4(),
            message_id=rid,
            frontend_message_id=str(rid),
            task_id=None,
            parent_id=root,
            tree_id=root,
            role="assistant",
            depth=1,
            text=f"reply {i}",
            lang="en",
        )
        replies.append(rid)
        w.label(reviewer, rid, 0.0)
    assert w.model.trees[root].state == "ranking"
    w.command(ev.RankingSubmitted, reviewer, parent_id=root, task_id=uuid4(), ranked_message_ids=replies[::-1])
    assert w.model.trees[root].state == "ready_for_export"
    assert [w.model.messages[r].rank for r in replies] == [1, 0]
    assert [type(d).__name__ for d in w.decisions][-3:] == ["TreeStateChanged", "RanksComputed", "TreeStateChanged"]


def test_a_spammers_review_does_not_take_a_review_slot_and_their_new_prompts_are_halted():
    w = World(num_reviews_initial_prompt=2)
    alice, bob, carol, mallory = (w.user(n) for n in ("alice", "bob", "carol", "mallory"))
    mid = w.prompt(alice.id)
    w.label(mallory.id, mid, 1.0)
    w.command(ev.UserMarkedSpammer, None, subject_id=mallory.id)
    w.label(bob.id, mid, 0.0)
    # two labels given, one of them a spammer's: the prompt still waits for a second honest review
    assert w.model.messages[mid].review_result is None
    assert "label_initial_prompt" in w.manager.candidates(carol, None, w.clock)
    w.label(carol.id, mid, 0.0)
    assert w.model.messages[mid].review_result is True
    spam = w.prompt(mallory.id)
    assert w.model.trees[spam].state == "halted_by_moderator"


def test_a_rejected_reply_gives_its_place_back():
    w = World(num_reviews_initial_prompt=1, num_reviews_reply=1, max_children_count=1)
    root = w.prompt(uuid4())
    w.label(uuid4(), root, 0.0)
    bob = w.user("bob")
    rid = uuid4()
    w.command(
        ev.ReplySubmitted,
        uuid4(),
        message_id=rid,
        frontend_message_id=str(rid),
        task_id=None,
        parent_id=root,
        tree_id=root,
        role="assistant",
        depth=1,
        text="junk",
        lang="en",
    )
    assert "assistant_reply" not in w.manager.candidates(bob, None, w.clock)
    w.label(uuid4(), rid, 1.0)  # rejected as spam
    assert w.manager.candidates(bob, None, w.clock)["assistant_reply"] == [root]


def test_no_reply_tasks_once_the_tree_reaches_its_goal_size_with_replies_in_review():
    w = World(num_reviews_initial_prompt=1, num_reviews_reply=1, goal_tree_size=3, max_children_count=5)
    root = w.prompt(uuid4())
    w.label(uuid4(), root, 0.0)
    for i in range(2):  # two replies, neither reviewed yet: 3 messages count toward the goal
        rid = uuid4()
        w.command(
            ev.ReplySubmitted,
            uuid4(),
            message_id=rid,
            frontend_message_id=str(rid),
            task_id=None,
            parent_id=root,
            tree_id=root,
            role="assistant",
            depth=1,
            text=f"reply {i}",
            lang="en",
        )
    assert "assistant_reply" not in w.manager.candidates(w.user("bob"), None, w.clock)


def test_lottery_favours_recent_first_ranks_and_keeps_its_author_list():
    w = World(max_active_trees=0, num_reviews_initial_prompt=1)  # nothing ever grows: all wait
    a, b, c = UUID(int=1), UUID(int=2), UUID(int=3)
    prompts = {author: [w.prompt(author) for _ in range(2)] for author in (a, b, c)}
    for mids in prompts.values():
        for mid in mids:
            w.label(uuid4(), mid, 0.0)
    assert sorted(w.model.lottery_authors["en"]) == [a, b, c]
    w.model.rank1_recent[a] = 3  # weight 4 against 1 and 1
    rng = random.Random(7)
    picks = [w.manager._draw_author("en", w.model.lottery["en"], rng) for _ in range(6000)]
    assert abs(picks.count(a) / 6000 - 4 / 6) < 0.03 and abs(picks.count(b) / 6000 - 1 / 6) < 0.03
    for mid in prompts[b]:  # b's prompts leave the lottery: b leaves the list, the others keep their places
        w.command(
            ev.TreeStateChanged,
            tree_id=mid,
            old_state="prompt_lottery_waiting",
            new_state="aborted_low_grade",
            reason="test",
        )
    authors, places = w.model.lottery_authors["en"], w.model.lottery_places["en"]
    assert sorted(authors) == [a, c] and all(authors[places[x]] == x for x in authors)


def test_a_task_target_is_drawn_uniformly_among_those_the_user_may_take():
    w = World(num_reviews_initial_prompt=2, max_initial_prompt_review=100)
    authors = [w.user(f"author{i}") for i in range(12)]
    reviewer = w.user("reviewer")
    prompts = [w.prompt(a.id) for a in authors]
    mine = w.prompt(reviewer.id)  # in the pool, but not for its own author
    for mid in prompts[:4]:  # already reviewed by this user: not for them either
        w.model.messages[mid].task_labels[reviewer.id] = (0.0, 0.0)
    pool = w.manager._pool("label_initial_prompt", None)
    assert len(pool) == 13
    rng = random.Random(3)
    picks = [w.manager._draw("label_initial_prompt", pool, reviewer.id, w.clock, rng)[0] for _ in range(4000)]
    allowed = set(prompts[4:])
    assert set(picks) == allowed and mine not in picks
    assert all(abs(picks.count(t) / 4000 - 1 / len(allowed)) < 0.03 for t in allowed)
    nobody_else = w.manager._draw("label_initial_prompt", pool[:4], reviewer.id, w.clock, rng)
    assert nobody_else is None  # the fallback filters the whole pool and finds nothing
