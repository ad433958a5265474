"""Erasure by crypto-shredding (issue #19), on SQLite and PostgreSQL: personal text is stored
sealed with a key per user; erasing a user destroys the key, and from then on the views, the
console, exports and new snapshots show their texts and display name as erased, while labels,
rankings and the trees' structure stay; a rebuild from the log equals the live views; an older
snapshot re-derived gets a new id whose manifest names the erasure."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from uuid import UUID

import msgspec
import polars as pl
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from litestar.testing import AsyncTestClient

from devkit.simulator import seed_history_async
from domain import events as ev
from infra.app import create_app
from infra.keys import RING
from infra.store import EventStore, Pending
from projections.dataset import Dataset, Selection, fold_at
from projections.snapshot import SnapshotSpec, create_snapshot, load_manifest, spec_from_manifest
from tests.config import API_KEY, ROOT_TOKEN, make_settings
from tests.frontend import user

KEPT = ("parent_id", "message_tree_id", "review_count", "review_result", "rank", "ranking_count", "emojis", "deleted")


def parquet(settings, manifest) -> pl.DataFrame:
    return pl.read_parquet(settings.data_dir / "snapshots" / manifest["id"] / "messages.parquet")


def raw_log(store_url: str) -> list[bytes]:
    store = EventStore(store_url)
    try:
        return [n.state for n in store.read_stored(0, 1_000_000)]
    finally:
        store.close()


def events_of(app) -> list[ev.Event]:
    return [ev.decode(n.state) for n in app.state.service.store.read_stored(0, 1_000_000)]


async def erase(client, user_id: str, key: str = API_KEY):
    return await client.post(f"/api/v1/admin/users/{user_id}/erase", headers={"X-API-Key": key})


@pytest.fixture
async def seeded(store_url, tmp_path):
    await seed_history_async(store_url, trees=12, users=10, seed=7)
    settings = make_settings(store_url, tmp_path)
    before = create_snapshot(settings)
    victim = parquet(settings, before)["user_id"].drop_nulls().value_counts(sort=True)["user_id"][0]
    return settings, before, victim


async def test_text_is_sealed_and_erasure_shreds_it_everywhere(seeded, store_url):
    settings, before, victim = seeded
    old = parquet(settings, before)
    texts = old.filter(pl.col("user_id") == victim)["text"].to_list()
    assert texts and all(t != ev.ERASED for t in texts)
    raw = b"".join(raw_log(store_url))  # the log holds their texts as ciphertext only (task payloads too)
    assert not [t for t in texts if t.encode() in raw]
    assert ev.SEAL_PREFIX.encode() in raw

    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        seen = {"min_position": app.state.service.model.position}
        mine = (await client.get(f"/api/v1/users/{victim}/messages", params=seen)).json()
        assert {m["text"] for m in mine} >= set(texts)
        view = app.state.runner.by_name["message_tree"]
        theirs_only = set(texts) - {m.text for m in view.messages.values() if str(m.user_id) != victim}
        assert theirs_only  # (the simulator repeats some texts: these are the victim's alone)
        name = (await client.get(f"/api/v1/users/{victim}", params=seen)).json()["display_name"]
        assert name != ev.ERASED

        r = await erase(client, victim)
        assert r.status_code == 204
        at = int(r.headers["X-Log-Position"])
        again = await erase(client, victim)  # idempotent: nothing more is appended
        assert again.status_code == 204 and int(again.headers["X-Log-Position"]) == at
        seen = {"min_position": at}

        after = {m["id"]: m for m in (await client.get(f"/api/v1/users/{victim}/messages", params=seen)).json()}
        assert after and all(m["text"] == ev.ERASED for m in after.values())
        for m in mine:  # labels, ranks, reactions and places in the tree stay
            assert {k: after[m["id"]][k] for k in KEPT} == {k: m[k] for k in KEPT}
        u = (await client.get(f"/api/v1/users/{victim}", params=seen)).json()
        assert (u["display_name"], u["deleted"]) == (ev.ERASED, False)  # not OA's deletion

        model = app.state.service.model  # the write model keeps no text of theirs either
        assert all(model.messages[m].text == ev.ERASED for m in model.authored[UUID(victim)])
        others = [m for m in model.messages.values() if str(m.user_id) != victim]
        assert others and not any(m.text == ev.ERASED for m in others)

        assert (await client.post("/console/sign-in", data={"api_key": API_KEY, "next": "/console/"})).status_code
        page = (await client.get(f"/console/messages/{mine[0]['id']}")).text
        assert ev.ERASED in page and mine[0]["text"] not in page

        # the log API decodes every event: the tasks that quoted their texts quote the marker
        logged = (await client.get("/api/v1/events", params={"after": 0, "limit": 100_000})).text
        assert not [t for t in theirs_only if msgspec.json.encode(t).decode() in logged]
        tasks = [e for e in events_of(app) if type(e) is ev.TaskAssigned and ev.ERASED in str(e.payload)]
        assert tasks and msgspec.json.encode(name).decode() not in logged

        live = app.state.runner.by_name["message_tree"]
        rebuilt = fold_at(app.state.service.store).tree  # the log read again: keys gone -> erased
        assert {k: m.text for k, m in rebuilt.messages.rows.items()} == {
            k: m.text for k, m in live.messages.rows.items()
        }
        assert {k: u.display_name for k, u in rebuilt.users.rows.items()} == {
            k: u.display_name for k, u in live.users.rows.items()
        }

    new = create_snapshot(settings)
    data = parquet(settings, new)
    assert set(data.filter(pl.col("user_id") == victim)["text"]) == {ev.ERASED}
    assert new["erasures"] == {"count": 1, "positions": [at]}
    assert len(data) == len(old)  # the messages stay

    derived = create_snapshot(settings, spec_from_manifest(load_manifest(settings.data_dir, before["id"]), "latest"))
    assert derived["id"] != before["id"] and derived["erasures"]["count"] == 1
    assert derived["position"] == before["position"]
    assert set(parquet(settings, derived).filter(pl.col("user_id") == victim)["text"]) == {ev.ERASED}

    store = EventStore(settings.database_url)
    try:  # an export reads the same
        state = fold_at(store)
        dataset = Dataset(state, "oa", state.spammers, state.deleted_users, settings.tree)
        exported = str(list(dataset.items(Selection(states=(), spam="include"))))
    finally:
        store.close()
    assert ev.ERASED in exported and not [t for t in theirs_only if f"'text': {t!r}" in exported]


async def test_only_trusted_clients_erase_and_delete_keeps_its_meaning(store_url, tmp_path):
    await seed_history_async(store_url, trees=4, users=5, seed=2)
    settings = make_settings(store_url, tmp_path)
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        r = await client.post(
            "/api/v1/admin/api_client",
            json={"description": "web", "frontend_type": "web"},
            headers={"Authorization": f"Bearer {ROOT_TOKEN}"},
        )
        untrusted = r.json()
        victim = next(str(u) for u, user in app.state.service.model.users.items() if user.auth_method != "system")
        position = app.state.service.model.position
        assert (await erase(client, victim, untrusted)).status_code == 403
        assert app.state.service.model.position == position  # nothing appended
        assert (await erase(client, "00000000-0000-0000-0000-000000000000")).status_code == 404

        r = await client.delete(f"/api/v1/users/{victim}", headers={"X-API-Key": API_KEY})
        assert r.status_code == 204  # OA's deletion anonymises; it destroys no key
        seen = {"min_position": r.headers["X-Log-Position"]}
        u = (await client.get(f"/api/v1/users/{victim}", params=seen, headers={"X-API-Key": API_KEY})).json()
        assert (u["display_name"], u["deleted"]) == ("Deleted User", True)
        texts = (
            await client.get(f"/api/v1/users/{victim}/messages", params=seen, headers={"X-API-Key": API_KEY})
        ).json()
        assert all(m["text"] != ev.ERASED for m in texts)


def test_the_cli_erases_and_drops_older_checkpoints(tmp_path):
    url = f"sqlite:///{tmp_path}/log.sqlite3"
    import asyncio

    asyncio.run(seed_history_async(url, trees=3, users=4, seed=1))
    store = EventStore(url)
    try:
        victim = next(
            str(e.user_id)
            for e in (ev.decode(n.state) for n in store.read_stored(0, 10_000))
            if type(e) is ev.ReplySubmitted
        )
    finally:
        store.close()
    env = {"OASST_DATABASE_URL": url, "OASST_DATA_DIR": str(tmp_path), "OASST_CHECKPOINT_EVERY": "10"}
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "write-model-0000000000000000-x-1.pickle").write_bytes(b"other store: kept")
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "user", "erase", victim, "--reason", "asked"],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    store = EventStore(url)
    try:  # (this process cached the key while seeding: it forgets it on reading the erasure)
        [ev.decode(n.state) for n in store.read_topics(0, store.max_position(), ["user_erased"])]
        events = [ev.decode(n.state) for n in store.read_stored(0, 10_000)]
    finally:
        store.close()
    erased = [e for e in events if type(e) is ev.UserErased]
    assert [(str(e.subject_id), e.reason) for e in erased] == [(victim, "asked")]
    replies = [e for e in events if type(e) is ev.ReplySubmitted and str(e.user_id) == victim]
    assert replies and {e.text for e in replies} == {ev.ERASED}
    assert (checkpoints / "write-model-0000000000000000-x-1.pickle").exists()
    position = max(n for n, e in enumerate(events, 1) if type(e) is ev.UserErased)
    left = [int(p.stem.rsplit("-", 1)[1]) for p in checkpoints.glob("write-model-*.pickle")]
    assert sorted(left)[0] == 1 and all(n >= position for n in sorted(left)[1:])  # older ones held the text


def _prompt(user: UUID, text: str) -> ev.InitialPromptSubmitted:
    mid = ev.new_id()
    return ev.InitialPromptSubmitted(
        id=ev.new_id(), at=datetime.now(UTC), user_id=user, message_id=mid, frontend_message_id=str(mid),
        task_id=None, text=text, lang="en",
    )  # fmt: skip


def test_a_failed_append_keeps_no_key_it_needs_and_plaintext_logs_still_read(store_url):
    store = EventStore(store_url)
    try:
        first = _prompt(ev.new_id(), "first")
        store.append([Pending([(first.message_id, 1, first)])])
        newcomer = ev.new_id()
        lost = _prompt(newcomer, "tried twice")
        with pytest.raises(IntegrityError):  # the newcomer's key was made for a batch that failed
            store.append([Pending([(lost.message_id, 1, lost)]), Pending([(first.message_id, 1, first)])])
        kept = _prompt(newcomer, "tried twice")  # (the same text: nothing sealed for the failed batch is reused)
        store.append([Pending([(kept.message_id, 1, kept)])])
        old = _prompt(ev.new_id(), "written before sealing existed")  # as a log from before #19
        store.recorder.insert_events([StoredEvent(old.message_id, 1, ev.topic(old), ev.encode(old))])
        RING.ciphers.clear()  # read as a fresh process would: every key from the database
        texts = [ev.decode(n.state).text for n in store.read_stored(0, 100)]
        assert texts == ["first", "tried twice", "written before sealing existed"]
    finally:
        store.close()


async def test_a_moderators_edit_of_an_erased_authors_message_is_erased_in_snapshots_too(seeded):
    """The edit is sealed with the moderator's key, which stays: the views and snapshots erase an
    erased author's messages whole, a snapshot before the erasure re-derived after it too."""
    settings, _, victim = seeded
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        seen = {"min_position": app.state.service.model.position}
        message = (await client.get(f"/api/v1/users/{victim}/messages", params=seen)).json()[0]
        r = await client.post(
            f"/api/v1/messages/{message['id']}/edit",
            json={"user": user("moderator"), "new_content": "a moderator's wording of it"},
        )
        assert r.status_code == 200
        edited = create_snapshot(settings, SnapshotSpec(selection=Selection(states=(), spam="include")))
        assert "a moderator's wording of it" in set(parquet(settings, edited)["text"])
        assert (await erase(client, victim)).status_code == 204
        seen = {"min_position": app.state.service.model.position}
        m = (await client.get(f"/api/v1/messages/{message['id']}", params=seen)).json()
        history = (await client.get(f"/api/v1/messages/{message['id']}/history", params=seen)).json()
        assert m["text"] == ev.ERASED and {h["text"] for h in history} == {ev.ERASED}

    manifest = load_manifest(settings.data_dir, edited["id"])
    for exclusions in ("latest", "as_of_position"):
        derived = create_snapshot(settings, spec_from_manifest(manifest, exclusions))
        texts = set(parquet(settings, derived)["text"])
        assert derived["id"] != edited["id"] and "a moderator's wording of it" not in texts


async def test_replies_kept_for_retries_that_quote_an_erased_user_go_with_the_key(seeded):
    settings = seeded[0]
    app = create_app(settings)
    async with AsyncTestClient(app) as client:
        client.headers["X-API-Key"] = API_KEY
        quoting, other = None, None
        for i in range(30):  # tasks kept for retries: one that quotes someone's message, one that quotes none
            headers = {"Idempotency-Key": f"retry-{i}"}
            body = {"type": "random", "user": user(f"reader{i}"), "lang": "en"}  # (a user's pending tasks are capped)
            r = await client.post("/api/v1/tasks/", json=body, headers=headers)
            assert r.status_code == 200, r.text
            quoted = [m for m in (r.json().get("conversation") or {}).get("messages", []) if m.get("user_id")]
            if quoted and quoting is None:
                quoting = (headers, r.json(), body, quoted[-1])
            elif not quoted and other is None:
                other = (headers, r.json(), body)
            if quoting and other:
                break
        assert quoting and other
        victim, text = quoting[3]["user_id"], quoting[3]["text"]
        assert (await erase(client, victim)).status_code == 204
        again = await client.post("/api/v1/tasks/", json=quoting[2], headers=quoting[0])
        assert again.status_code == 200 and again.json()["id"] != quoting[1]["id"]  # run again, not replayed
        assert text not in again.text
        kept = await client.post("/api/v1/tasks/", json=other[2], headers=other[0])
        assert kept.json() == other[1]  # replies that never named them are still replayed


def test_keys_are_read_again_over_a_connection_the_server_cut(pg_url):
    import psycopg

    store = EventStore(pg_url)
    store.max_position()  # the pool holds a connection now
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    store.keys._loaded = False
    store.keys._load()  # a fold asking for a key it has not seen: no error for the cut connection
    assert store.keys._loaded
    store.close()


def test_a_key_is_found_while_another_store_of_the_process_is_gone(pg_url, pg_admin_url):
    """The process-wide ring asks every store it opened for a key it has not cached: a store
    whose database was dropped (not closed) must not hide a key another store has, nor make an
    unreachable key read as erased."""
    import uuid as _uuid
    from urllib.parse import urlparse, urlunparse

    import psycopg

    name = f"oasst_test_{_uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    other = EventStore(urlunparse(urlparse(pg_admin_url)._replace(path=f"/{name}")))
    other.keys._load()
    store = EventStore(pg_url)
    key_id, _ = store.keys._create(_uuid.uuid4())
    with store.recorder.datastore.transaction(commit=True) as c:
        store.keys.write(c, store.keys.take())
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    RING.ciphers.pop(key_id)
    assert RING.cipher(key_id) is not None  # found in the store that answers
    RING.ciphers.pop(key_id)
    store.close()  # now only the dropped one is left to ask: an error, not "erased"
    with pytest.raises(OperationalError):
        RING.cipher(key_id)
    assert key_id not in RING.gone
    other.close()
