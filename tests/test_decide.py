"""The domain core alone (domain/decide.py): typed commands against a write model in
memory, no database, no HTTP, no service. Each guard refuses with Open-Assistant's error
code and emits nothing; accepted commands emit what they should."""

from __future__ import annotations

from uuid import uuid4

from domain import commands as c
from domain import protocol as p
from domain.errors import ErrorCode
from tests.models import CLIENT, Core, person

ALICE, BOB, CAROL = person("alice"), person("bob"), person("carol")


def test_a_prompt_is_reviewed_and_wins_the_lottery():
    core = Core()
    core.do(ALICE, "initial_prompt", text="What is a good first programming language?")
    assert core.emitted == ["InitialPromptSubmitted", "TaskCompleted"]
    core.do(BOB, "label_initial_prompt")
    assert "MessageReviewed" in core.emitted and "TreeStateChanged" in core.emitted
    (tree,) = core.model.trees.values()
    assert tree.state == "growing"


def test_a_user_is_required_and_a_disabled_one_refused():
    core = Core()
    core.refused(c.RequestTask(client_id=CLIENT, user=None, task_type="initial_prompt"), ErrorCode.USER_NOT_SPECIFIED)
    core.run(
        c.UpsertFrontendUser(
            client_id=CLIENT, auth_method="local", username="alice", display_name="A", enabled=False, trusted=True
        )
    )  # OA: only trusted clients change a user
    core.refused(c.RequestTask(client_id=CLIENT, user=ALICE, task_type="initial_prompt"), ErrorCode.USER_DISABLED)


def test_text_guards():
    core = Core()
    core.do(ALICE, "initial_prompt", text="the same words")
    for text, code in (
        ("   ", ErrorCode.TASK_MESSAGE_TEXT_EMPTY),
        ("x" * 2001, ErrorCode.TASK_MESSAGE_TOO_LONG),
        ("the same words", ErrorCode.TASK_MESSAGE_DUPLICATED),
    ):
        task = core.task(ALICE, "initial_prompt")
        fid = f"fm-{uuid4()}"
        core.run(c.AckTask(client_id=CLIENT, task_id=task["id"], frontend_message_id=fid))
        body = p.TextReplyToMessage(user=ALICE, message_id=fid, user_message_id=f"um-{uuid4()}", text=text)
        core.refused(c.SubmitInteraction(client_id=CLIENT, interaction=body), code)


def test_nobody_labels_their_own_message_and_labels_must_be_valid():
    core = Core()
    core.do(ALICE, "initial_prompt")
    prompt = next(iter(core.model.messages))
    own = p.TextLabels(user=ALICE, text="", labels={"spam": 0.0}, message_id=str(prompt))
    core.run(c.LabelMessage(client_id=CLIENT, labels=own))  # OA checks self-labelling for task labels only
    bad = p.TextLabels(user=BOB, text="", labels={"spam": 1.5}, message_id=str(prompt))
    core.refused(c.LabelMessage(client_id=CLIENT, labels=bad), ErrorCode.TEXT_LABELS_INVALID_LABEL)
    task = core.task(BOB, "label_initial_prompt")
    core.run(c.AckTask(client_id=CLIENT, task_id=task["id"], frontend_message_id="fm-b"))
    missing = p.TextLabels(
        user=BOB, text="", labels={"quality": 1.0}, message_id=task["message_id"], task_id=task["id"]
    )
    core.refused(
        c.SubmitInteraction(client_id=CLIENT, interaction=missing), ErrorCode.TEXT_LABELS_MANDATORY_LABEL_MISSING
    )


def test_task_life_cycle_guards():
    core = Core()
    task = core.task(ALICE, "initial_prompt")
    body = p.TextReplyToMessage(user=ALICE, message_id="fm-1", user_message_id="um-1", text="hello there")
    core.refused(c.SubmitInteraction(client_id=CLIENT, interaction=body), ErrorCode.TASK_NOT_FOUND)  # not acked
    core.refused(c.AckTask(client_id=uuid4(), task_id=task["id"], frontend_message_id="fm-1"), ErrorCode.TASK_NOT_FOUND)
    core.run(c.AckTask(client_id=CLIENT, task_id=task["id"], frontend_message_id="fm-1"))
    assert core.run(c.AckTask(client_id=CLIENT, task_id=task["id"], frontend_message_id="fm-1")) is None
    assert core.emitted == []  # an ack retried appends nothing
    other = p.TextReplyToMessage(user=BOB, message_id="fm-1", user_message_id="um-1", text="hello there")
    core.refused(c.SubmitInteraction(client_id=CLIENT, interaction=other), ErrorCode.TASK_NOT_ASSIGNED_TO_USER)
    done = core.run(c.SubmitInteraction(client_id=CLIENT, interaction=body))
    assert core.run(c.SubmitInteraction(client_id=CLIENT, interaction=body)) == done and core.emitted == []  # a retry
    again = p.TextReplyToMessage(user=ALICE, message_id="fm-1", user_message_id="um-2", text="something else")
    core.refused(c.SubmitInteraction(client_id=CLIENT, interaction=again), ErrorCode.TASK_ALREADY_DONE)
    core.refused(c.NackTask(client_id=CLIENT, task_id=task["id"]), ErrorCode.TASK_ALREADY_DONE)


def test_pending_tasks_are_capped():
    core = Core(max_pending_tasks_per_user=2)
    core.task(ALICE, "initial_prompt")
    core.task(ALICE, "initial_prompt")
    core.refused(
        c.RequestTask(client_id=CLIENT, user=ALICE, task_type="initial_prompt"), ErrorCode.TASK_TOO_MANY_PENDING
    )


def test_replies_rankings_and_reactions():
    core = Core(max_children_count=2, goal_tree_size=3)
    core.do(ALICE, "initial_prompt")
    core.do(BOB, "label_initial_prompt")
    core.refused(
        c.RequestTask(client_id=CLIENT, user=ALICE, task_type="rank_assistant_replies"),
        ErrorCode.TASK_REQUESTED_TYPE_NOT_AVAILABLE,
    )
    core.do(BOB, "assistant_reply")
    core.do(CAROL, "assistant_reply")
    bobs = next(m for m in core.model.messages.values() if m.user_id == core.model.user(CLIENT, "local", "bob").id)
    own = core.run(c.React(client_id=CLIENT, message_id=str(bobs.id), user=BOB, emoji="+1"))
    assert core.emitted == [] and own["emojis"] == {}  # thumbs on one's own message: ignored (OA)
    assert core.run(c.React(client_id=CLIENT, message_id=str(bobs.id), user=ALICE, emoji="+1"))["emojis"] == {"+1": 1}
    core.do(ALICE, "label_assistant_reply")
    core.do(ALICE, "label_assistant_reply")
    (tree,) = core.model.trees.values()
    assert tree.state == "ranking"
    task = core.task(ALICE, "rank_assistant_replies")
    core.run(c.AckTask(client_id=CLIENT, task_id=task["id"], frontend_message_id="fm-rank"))
    bad = p.MessageRanking(user=ALICE, message_id="fm-rank", ranking=[0, 0])
    core.refused(c.SubmitInteraction(client_id=CLIENT, interaction=bad), ErrorCode.INVALID_RANKING_VALUE)
    core.run(
        c.SubmitInteraction(
            client_id=CLIENT, interaction=p.MessageRanking(user=ALICE, message_id="fm-rank", ranking=[1, 0])
        )
    )
    assert tree.state == "ready_for_export" and "RanksComputed" in core.emitted


def test_moderation_commands_are_idempotent():
    core = Core()
    core.do(ALICE, "initial_prompt")
    prompt = str(next(iter(core.model.messages)))
    core.run(c.DeleteMessage(client_id=CLIENT, message_id=prompt))
    assert core.emitted[0] == "MessageDeleted"
    core.run(c.DeleteMessage(client_id=CLIENT, message_id=prompt))
    assert core.emitted == []
    core.refused(c.DeleteMessage(client_id=CLIENT, message_id="nope"), ErrorCode.MESSAGE_NOT_FOUND)
    core.refused(c.SetSpammer(client_id=CLIENT, user_id=str(uuid4()), spammer=True), ErrorCode.USER_NOT_FOUND)
    uid = str(core.model.user(CLIENT, "local", "alice").id)
    core.run(c.SetSpammer(client_id=CLIENT, user_id=uid, spammer=True))
    core.run(c.SetSpammer(client_id=CLIENT, user_id=uid, spammer=True))
    assert core.emitted == [] and core.model.users[core.model.user(CLIENT, "local", "alice").id].spammer
