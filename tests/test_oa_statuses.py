"""Routes answer as Open-Assistant's newest backend does (issue #14): shapes, statuses and
error codes, and the contents of tasks. Each case names the OA source it follows; both backends."""

from __future__ import annotations

import dataclasses

import pytest
from litestar.testing import AsyncTestClient

from infra.app import create_app
from tests.config import API_KEY, ROOT_TOKEN, SMALL_TREE, make_settings
from tests.frontend import acked_task, answer_for, do_task, events, log_position, request, user
from tests.oa_contract import CONTRACT

ALICE, BOB, CAROL = user("alice"), user("bob"), user("carol")
INTERACTION = "/api/v1/tasks/interaction"
SCHEMAS = CONTRACT["components"]["schemas"]
TASK_REQUEST_TYPES = SCHEMAS["TaskRequestType"]["enum"]  # OA's, in its order
MESSAGE_KEYS = set(SCHEMAS["Message"]["properties"]) - {"user"}  # OA's Message, all of it but `user`


async def refused(client, method: str, url: str, status: int, code: int, **kw) -> dict:
    before = await log_position(client)
    r = await client.request(method, url, **kw)
    assert (r.status_code, r.json()["error_code"]) == (status, code), r.text
    assert await log_position(client) == before  # a refusal appends nothing
    return r.json()


async def read(client, url: str, position, **params) -> dict:
    r = await client.get(url, params={"min_position": str(position), **params})
    assert r.status_code == 200, r.text
    return r.json()


async def prompt_of(client, who: dict) -> dict:
    """``who``'s new prompt, as its initial_prompt_submitted event."""
    await do_task(client, who, "initial_prompt")
    return next(e["event"] for e in reversed(await events(client)) if e["type"] == "initial_prompt_submitted")


async def ranking_task(client) -> dict:
    from tests.frontend import USERS

    await do_task(client, USERS[0], "initial_prompt")
    for _ in range(100):
        for who in USERS[:4]:
            await do_task(client, who)
        r = await request(client, CAROL, "rank_assistant_replies")
        if r.status_code == 200:
            return r.json()
    raise AssertionError("no ranking task appeared")


@pytest.fixture
def tree_client(store_url, tmp_path):
    """The app with SMALL_TREE changed as given (an async context manager)."""

    def make(**tree):
        app = create_app(make_settings(store_url, tmp_path, dataclasses.replace(SMALL_TREE, **tree)))
        client = AsyncTestClient(app)
        client.headers["X-API-Key"] = API_KEY
        return client

    return make


# --- A. shapes -----------------------------------------------------------------------------------


async def test_emoji_answers_oas_message(client):
    """messages.py post_message_emoji: 202 and utils.prepare_message of the message."""
    prompt = await prompt_of(client, ALICE)
    r = await client.post(f"/api/v1/messages/{prompt['message_id']}/emoji", json={"user": BOB, "emoji": "+1"})
    assert r.status_code == 202
    answer = r.json()
    assert set(answer) == MESSAGE_KEYS | {"user"} and answer["user"] is None
    assert (answer["emojis"], answer["user_emojis"], answer["user_is_author"]) == ({"+1": 1}, ["+1"], False)
    got = await read(client, f"/api/v1/messages/{prompt['message_id']}", r.headers["X-Log-Position"])
    assert {k: answer[k] for k in MESSAGE_KEYS if k not in ("user_emojis", "user_is_author")} == {
        k: got[k] for k in MESSAGE_KEYS if k not in ("user_emojis", "user_is_author")
    }


async def test_goal_tree_size_is_an_integer_in_review(client):
    """tree_manager.py TreeMessageCountStats.goal_tree_size: int (set when OA creates the tree)."""
    await prompt_of(client, ALICE)
    stats = await read(client, "/api/v1/stats/tree_manager", await log_position(client))
    (row,) = stats["message_counts"]
    assert row["state"] == "initial_prompt_review" and row["goal_tree_size"] == SMALL_TREE.goal_tree_size
    counts = await read(client, "/api/v1/stats/tree_manager/message_counts", await log_position(client))
    assert counts == stats["message_counts"]


async def test_availability_has_all_twelve_task_types(client):
    """tree_manager.py _determine_task_availability_internal: every TaskRequestType, 0 where none."""
    r = await client.post("/api/v1/tasks/availability", json=ALICE)
    assert r.status_code == 200 and list(r.json()) == TASK_REQUEST_TYPES
    assert r.json() == {t: 1 if t in ("random", "initial_prompt") else 0 for t in TASK_REQUEST_TYPES}
    await prompt_of(client, ALICE)
    counts = (await client.post("/api/v1/tasks/availability", json=BOB)).json()
    assert (counts["label_initial_prompt"], counts["random"]) == (1, 2)


async def test_frontend_user_answers_the_stored_user_and_updates_it(client):
    """frontend_users.py create_frontend_user + user_repository.update_user."""
    url = "/api/v1/frontend_users/"
    made = await client.post(url, json={**BOB, "notes": "new", "show_on_leaderboard": False, "tos_acceptance": True})
    assert made.status_code == 200
    bob = made.json()
    assert (bob["notes"], bob["show_on_leaderboard"], bob["streak_days"], bob["last_activity_date"]) == (
        "new",
        False,
        0,
        None,
    )
    assert bob["tos_acceptance_date"] and bob["created_date"]
    assert await read(client, "/api/v1/frontend_users/local/bob", made.headers["X-Log-Position"]) == bob

    # an existing user: notes, leaderboard and ToS as OA's update_user applies them
    r = await client.post(url, json={**BOB, "notes": "changed", "show_on_leaderboard": True})
    assert r.status_code == 200
    assert (r.json()["notes"], r.json()["show_on_leaderboard"], r.json()["tos_acceptance_date"]) == (
        "changed",
        True,
        bob["tos_acceptance_date"],
    )
    assert await read(client, "/api/v1/frontend_users/local/bob", r.headers["X-Log-Position"]) == r.json()
    r = await client.post(url, json=BOB)  # nothing differs: nothing changes
    assert r.json()["notes"] == "changed"

    # an active user: the activity the views show
    await do_task(client, ALICE, "initial_prompt")
    r = await client.post(url, json=ALICE)
    alice = r.json()
    assert alice["last_activity_date"] and alice["streak_days"] == 0  # OA: no full day yet
    assert await read(client, "/api/v1/frontend_users/local/alice", await log_position(client)) == alice

    # OA's update_user is for trusted clients only
    key = (
        await client.post(
            "/api/v1/admin/api_client",
            json={"description": "bot", "frontend_type": "discord"},
            headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
        )
    ).json()
    other = {"X-API-Key": key}
    assert (await client.post(url, json=CAROL, headers=other)).status_code == 200  # OA's defaults: no update
    await refused(client, "POST", url, 403, 2, json={**CAROL, "notes": "x"}, headers=other)


# --- B. statuses and error codes -------------------------------------------------------------------


async def test_interactions_on_missing_or_foreign_tasks(client):
    """prompt_repository.py _validate_task: not found (before an ack too) 400/2100, another user's 400/2106."""
    task = (await request(client, ALICE, "initial_prompt")).json()
    await refused(client, "POST", INTERACTION, 400, 2100, json=answer_for(task, ALICE, "not-acked-yet"))
    await refused(client, "POST", INTERACTION, 400, 2100, json=answer_for(task, ALICE, "no-such-id"))
    labels = {
        "type": "text_labels",
        "user": BOB,
        "message_id": "00000000-0000-0000-0000-000000000000",
        "task_id": "00000000-0000-0000-0000-000000000000",
        "text": "",
        "labels": {"spam": 0},
    }
    await refused(client, "POST", INTERACTION, 400, 2100, json=labels)
    await refused(client, "POST", "/api/v1/tasks/00000000-0000-0000-0000-000000000000/nack", 400, 2100, json={})
    await refused(
        client, "POST", "/api/v1/tasks/00000000-0000-0000-0000-000000000000/ack", 404, 2100, json={"message_id": "x"}
    )  # task_repository.bind_frontend_message_id: 404
    assert (await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": "fe-alice"})).status_code == 204
    await refused(client, "POST", INTERACTION, 400, 2106, json=answer_for(task, BOB, "fe-alice"))


async def test_nack_of_a_done_task(client):
    """prompt_repository.py skip_task: _validate_task without the ack check: done is 400/2105."""
    task = await do_task(client, ALICE, "initial_prompt")
    await refused(client, "POST", f"/api/v1/tasks/{task['id']}/nack", 400, 2105, json={"reason": "late"})


async def test_close_takes_collective_tasks_only(client):
    """task_repository.py close_task: unknown 404/2100, not collective 400/2106, closed 400/2105."""
    await refused(client, "POST", "/api/v1/tasks/close", 404, 2100, json={"message_id": "nothing"})
    _, fid = await acked_task(client, ALICE, "initial_prompt")
    await refused(client, "POST", "/api/v1/tasks/close", 400, 2106, json={"message_id": fid})
    r = await client.post("/api/v1/tasks/", json={"type": "initial_prompt", "user": BOB, "collective": True})
    task = r.json()
    assert (await client.post(f"/api/v1/tasks/{task['id']}/ack", json={"message_id": "fe-c"})).status_code == 204
    r = await client.post("/api/v1/tasks/close", json={"message_id": "fe-c"})
    assert r.status_code == 200 and r.json() == {"type": "task_done", "id": task["id"]}
    await refused(client, "POST", "/api/v1/tasks/close", 400, 2105, json={"message_id": "fe-c"})


async def test_too_many_pending_tasks_is_400(client):
    """tree_manager.py next_task: TASK_TOO_MANY_PENDING with OA's default status, 400 (not 429)."""
    for _ in range(8):
        assert (await request(client, CAROL, "initial_prompt")).status_code == 200
    await refused(client, "POST", "/api/v1/tasks/", 400, 1012, json={"type": "initial_prompt", "user": CAROL})


@pytest.mark.parametrize("kind", ["summarize_story", "rate_summary", "rank_initial_prompts"])
async def test_task_types_oa_never_hands_out(client, kind):
    """tree_manager.py next_task: none available, 503/1006 (no task made)."""
    await refused(client, "POST", "/api/v1/tasks/", 503, 1006, json={"type": kind, "user": ALICE})


async def test_message_rating(client):
    """prompt_repository.py store_rating: the message by frontend id (404/2001), then its task (400/2100)."""
    prompt = await prompt_of(client, ALICE)
    rating = {"type": "message_rating", "user": BOB, "message_id": prompt["frontend_message_id"], "rating": 3}
    await refused(client, "POST", INTERACTION, 400, 2100, json=rating)
    await refused(client, "POST", INTERACTION, 404, 2001, json=rating | {"message_id": "no-such-message"})


async def test_thumbs_on_ones_own_message_are_ignored(client):
    """prompt_repository.py handle_message_emoji: "Ignoring add emoji op for user's own message"."""
    prompt = await prompt_of(client, ALICE)
    before = await log_position(client)
    for emoji in ("+1", "-1"):
        r = await client.post(f"/api/v1/messages/{prompt['message_id']}/emoji", json={"user": ALICE, "emoji": emoji})
        assert r.status_code == 202 and set(r.json()) == MESSAGE_KEYS | {"user"}
        assert (r.json()["emojis"], r.json()["user_emojis"], r.json()["id"]) == ({}, [], prompt["message_id"])
    assert await log_position(client) == before
    r = await client.post(f"/api/v1/messages/{prompt['message_id']}/emoji", json={"user": ALICE, "emoji": "heart_eyes"})
    assert r.json()["emojis"] == {"heart_eyes": 1}  # other reactions are one's own to give


async def test_free_labels_and_reports_of_ones_own_message(client):
    """prompt_repository.py store_text_labels: self-labelling is refused for task labels only."""
    prompt = await prompt_of(client, ALICE)
    body = {
        "type": "text_labels",
        "user": ALICE,
        "message_id": prompt["message_id"],
        "text": "oops",
        "labels": {"spam": 1.0},
    }
    assert (await client.post("/api/v1/text_labels/", json=body | {"is_report": True})).status_code == 204
    assert (await client.post("/api/v1/text_labels/", json=body)).status_code == 204
    kinds = [e["event"]["kind"] for e in await events(client) if e["type"] == "labels_submitted"]
    assert kinds == ["report", "free"]


async def test_a_deleted_users_name_makes_a_new_user(client):
    """user_repository.py mark_user_deleted: display name "Deleted User", username deleted_<id>."""
    await do_task(client, ALICE, "initial_prompt")
    old = (await client.post("/api/v1/frontend_users/", json=ALICE)).json()["user_id"]
    r = await client.delete(f"/api/v1/users/{old}")
    assert r.status_code == 204
    gone = await read(client, f"/api/v1/users/{old}", r.headers["X-Log-Position"])
    assert (gone["id"], gone["display_name"], gone["deleted"], gone["show_on_leaderboard"]) == (
        f"deleted_{old}",
        "Deleted User",
        True,
        False,
    )
    r = await client.post("/api/v1/frontend_users/", json=ALICE)
    new = r.json()
    assert r.status_code == 200 and new["user_id"] != old
    assert (new["id"], new["display_name"], new["deleted"], new["enabled"]) == ("alice", "Alice", False, True)
    assert (await read(client, "/api/v1/frontend_users/local/alice", r.headers["X-Log-Position"]))["user_id"] == new[
        "user_id"
    ]
    task = await do_task(client, ALICE, "initial_prompt")  # the new alice works
    assert task is not None


async def test_reposting_an_interaction_answers_the_first_result(client):
    """Idempotency (README, API): the same body again gets the first answer and appends nothing."""
    task, fid = await acked_task(client, ALICE, "initial_prompt")
    body = answer_for(task, ALICE, fid)
    first = await client.post(INTERACTION, json=body)
    position = await log_position(client)
    again = await client.post(INTERACTION, json=body)
    assert (again.status_code, again.json()) == (200, first.json()) and await log_position(client) == position
    await refused(client, "POST", INTERACTION, 400, 2105, json=body | {"text": "other", "user_message_id": "m-other"})


# --- C. task contents ------------------------------------------------------------------------------


async def test_label_tasks_describe_labels_as_oa(client):
    """protocol.py TextLabel texts; config.py labels_* order; text_labels.py valid_labels."""
    await prompt_of(client, ALICE)
    task, _ = await acked_task(client, BOB, "label_initial_prompt")
    assert (task["mode"], task["disposition"]) == ("full", "quality")
    assert task["valid_labels"] == [
        "spam",
        "lang_mismatch",
        "quality",
        "creativity",
        "humor",
        "toxicity",
        "violence",
        "not_appropriate",
        "pii",
        "hate_speech",
        "sexual_content",
    ]
    labels = {x["name"]: x for x in task["labels"]}
    assert [x["name"] for x in task["labels"]] == task["valid_labels"]
    assert labels["spam"] == {
        "name": "spam",
        "widget": "yes_no",
        "help_text": None,
        "display_text": "Seems to be intentionally low-quality or irrelevant",
    }
    assert labels["lang_mismatch"]["help_text"] == (
        "The message is written in a language that differs from the currently selected language."
    )
    assert labels["hate_speech"]["help_text"].startswith("Prejudice refers to preconceived views")
    assert (labels["quality"]["display_text"], labels["not_appropriate"]["display_text"]) == (
        "Overall subjective quality rating of the message",
        "Inappropriate",
    )
    every = await read(client, "/api/v1/text_labels/valid_labels", await log_position(client))
    assert [x["name"] for x in every["valid_labels"]] == [
        "spam",
        "lang_mismatch",
        "pii",
        "not_appropriate",
        "hate_speech",
        "sexual_content",
        "moral_judgement",
        "political_content",
        "quality",
        "toxicity",
        "humor",
        "helpfulness",
        "creativity",
        "violence",
    ]
    assert all(x["display_text"] for x in every["valid_labels"])


async def test_simple_label_tasks_only_where_oa_uses_them(tree_client):
    """tree_manager.py next_task: a simple review (disposition spam) of a prompt for any request,
    of a reply only for a random request; full when the draw is not above p_full."""
    async with tree_client(p_full_labeling_review_prompt=0.0, p_full_labeling_review_reply_assistant=0.0) as client:
        await prompt_of(client, ALICE)
        for who in (BOB, CAROL):
            task = await do_task(client, who, "label_initial_prompt")
            assert (task["mode"], task["disposition"], task["valid_labels"]) == (
                "simple",
                "spam",
                ["spam", "lang_mismatch"],
            )
            assert [x["name"] for x in task["labels"]] == task["valid_labels"]
        await do_task(client, BOB, "assistant_reply")
        asked = (await request(client, CAROL, "label_assistant_reply")).json()
        assert (asked["mode"], asked["disposition"], asked["valid_labels"]) == (
            "full",
            "quality",
            [
                "spam",
                "lang_mismatch",
                "fails_task",
                "quality",
                "helpfulness",
                "creativity",
                "humor",
                "toxicity",
                "violence",
                "not_appropriate",
                "pii",
                "hate_speech",
                "sexual_content",
            ],
        )
        for i in range(30):  # a random request reviews the reply simply
            task = (await request(client, user(f"random{i}"), "random")).json()
            if task["type"] == "label_assistant_reply":
                break
        assert (task["type"], task["mode"], task["disposition"], task["valid_labels"]) == (
            "label_assistant_reply",
            "simple",
            "spam",
            ["spam", "lang_mismatch", "quality"],
        )


async def test_ranking_hides_synthetic_unless_all_replies_are(client):
    """tree_manager.py next_task: reply_messages' synthetic is None unless reveal_synthetic."""
    task = await ranking_task(client)
    assert task["reveal_synthetic"] is False
    assert [m["synthetic"] for m in task["reply_messages"]] == [None] * len(task["reply_messages"])
    assert all(m["synthetic"] is False for m in task["conversation"]["messages"])


async def test_streak_days_is_0_before_the_first_full_day(client):
    """scheduled_tasks.update_user_streak: 0 until a full day of activity has passed."""
    await do_task(client, ALICE, "initial_prompt")
    uid = (await client.post("/api/v1/frontend_users/", json=ALICE)).json()["user_id"]
    got = await read(client, f"/api/v1/users/{uid}", await log_position(client))
    assert (got["streak_days"], got["last_activity_date"] is not None) == (0, True)
