"""The write model at scale (issue #13): checkpoints (a tail folded after one equals the
whole fold; another version, a corrupt file or another tree configuration are handled),
recovery after a failed append runs off the event loop, a queries-only server folds no
write model, and snapshots of a fixed log stay what the code before these changes wrote."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import msgspec
import polars as pl
import pytest
from eventsourcing.persistence import StoredEvent
from litestar.testing import AsyncTestClient

from command_api import api_keys
from command_api.service import CommandService
from devkit.simulator import seed_history_async
from infra.app import create_app
from infra.checkpoints import Checkpoints
from infra.settings import Settings
from infra.store import EventStore
from projections.dataset import Selection
from projections.snapshot import SnapshotSpec, create_snapshot
from tests.config import API_KEY, SMALL_TREE, make_settings
from tests.models import fold, summary

DATA = Path(__file__).parent / "data"


@pytest.fixture
async def seeded(store_url, tmp_path) -> Settings:
    await seed_history_async(store_url, trees=12, users=10, seed=3)
    return replace(make_settings(store_url, tmp_path), checkpoint_every=1000)


async def started(settings: Settings, checkpoints: Checkpoints | None) -> tuple[CommandService, EventStore]:
    store = EventStore(settings.database_url)
    service = CommandService(settings, store, checkpoints=checkpoints)
    await service.start()
    return service, store


async def some_commands(service: CommandService, n: int) -> None:
    from domain import protocol as p

    client = service.client_for_key(API_KEY)
    for i in range(n):
        await service.create_frontend_user(
            client, p.CreateFrontendUserRequest(id=f"late-{i}", display_name=f"L{i}", auth_method="local")
        )


async def test_a_checkpoint_and_its_tail_equal_the_whole_fold(seeded):
    checkpoints = Checkpoints(seeded.checkpoints_folder)
    service, store = await started(seeded, checkpoints)
    position = await service.checkpoint()  # written by a forked child
    assert position == service.model.position and len(list(checkpoints.folder.glob("*.pickle"))) == 1
    await some_commands(service, 5)  # fewer than are worth a checkpoint at shutdown
    await service.stop()
    store.close()

    again, store = await started(seeded, checkpoints)
    assert again.loaded["checkpoint"] == position and again.loaded["folded"] == 5
    assert summary(again.model) == summary(fold(seeded.database_url, seeded))
    store.close()


async def test_a_checkpoint_of_another_version_is_ignored_and_a_fresh_one_written(seeded):
    old = Checkpoints(seeded.checkpoints_folder)
    old.version = "0" * 16
    service, store = await started(seeded, old)
    await service.checkpoint()
    await service.stop()
    store.close()

    current = Checkpoints(seeded.checkpoints_folder)
    service, store = await started(replace(seeded, checkpoint_every=10), current)
    assert service.loaded["checkpoint"] is None  # ignored: the whole log was folded...
    while service._checkpointing:  # ...so a fresh checkpoint is written at once
        await asyncio.sleep(0.01)
    files = sorted(p.name for p in current.folder.glob("*.pickle"))
    assert len(files) == 1 and current.version in files[0]  # and the other version's is gone
    await service.stop()
    store.close()


async def test_a_corrupt_checkpoint_falls_back_to_folding_the_log(seeded, caplog):
    checkpoints = Checkpoints(seeded.checkpoints_folder)
    service, store = await started(seeded, checkpoints)
    await service.checkpoint()
    await service.stop()
    store.close()
    (path,) = checkpoints.folder.glob("*.pickle")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    again, store = await started(seeded, checkpoints)
    assert again.loaded["checkpoint"] is None and "unreadable checkpoint" in caplog.text
    assert summary(again.model) == summary(fold(seeded.database_url, seeded))
    store.close()


async def test_a_checkpoint_made_under_another_tree_configuration_is_rederived(seeded):
    checkpoints = Checkpoints(seeded.checkpoints_folder)
    service, store = await started(seeded, checkpoints)
    await service.checkpoint()
    await service.stop()
    store.close()

    other = replace(seeded, tree=replace(SMALL_TREE, max_children_count=3, max_tree_depth=4, goal_tree_size=7))
    again, store = await started(other, checkpoints)
    assert again.loaded["checkpoint"] is not None
    assert summary(again.model) == summary(fold(other.database_url, other))
    store.close()


async def test_recovery_after_a_failed_append_runs_off_the_event_loop(store_url, tmp_path, monkeypatch):
    async with AsyncTestClient(create_app(make_settings(store_url, tmp_path))) as c:
        c.headers["X-API-Key"] = API_KEY
        service = c.app.state.service
        user = {"id": "alice", "display_name": "Alice", "auth_method": "local"}
        made = await c.post("/api/v1/frontend_users/", json={**user, "enabled": True})
        assert made.status_code == 200

        append, build = service.store.append, service._build_model
        monkeypatch.setattr(service.store, "append", lambda pending: (_ for _ in ()).throw(OSError("disk gone")))

        def slow_build():
            time.sleep(3.0)  # a big log
            return build()

        monkeypatch.setattr(service, "_build_model", slow_build)
        failed = await c.post("/api/v1/tasks/", json={"type": "initial_prompt", "user": user})
        assert failed.status_code == 503 and failed.json()["error_code"] == 104
        monkeypatch.setattr(service.store, "append", append)

        query = await c.get(
            "/api/v1/frontend_users/local/alice",  # the rebuild is running: queries are answered...
            headers={"X-Min-Log-Position": made.headers["X-Log-Position"]},
        )
        assert query.status_code == 200 and service._recovering is not None
        refused = await c.post("/api/v1/tasks/", json={"type": "initial_prompt", "user": user})  # ...commands wait
        assert refused.status_code == 503 and refused.json()["error_code"] == 104 and "Retry-After" in refused.headers
        while service._recovering:
            await asyncio.sleep(0.05)
        assert (await c.post("/api/v1/tasks/", json={"type": "initial_prompt", "user": user})).status_code == 200


async def test_a_queries_only_server_folds_no_write_model(store_url, tmp_path, monkeypatch):
    settings = make_settings(store_url, tmp_path)
    async with AsyncTestClient(create_app(settings)) as commands:
        commands.headers["X-API-Key"] = API_KEY
        user = {"id": "bob", "display_name": "Bob", "auth_method": "local", "enabled": True}
        assert (await commands.post("/api/v1/frontend_users/", json=user)).status_code == 200
        async with AsyncTestClient(create_app(settings, only="queries")) as queries:
            assert queries.app.state.service.model.position == 0 and queries.app.state.service.loaded == {}
            ok = await queries.get(
                "/api/v1/users/by_username?username=bob&auth_method=local",
                headers={"X-API-Key": API_KEY, "X-Min-Log-Position": "2"},
            )
            assert ok.status_code == 200, ok.text
            assert (await queries.get("/api/v1/leaderboards/total", headers={"X-API-Key": "nope"})).status_code == 403

            # an API client created later through the command side is found by its key
            monkeypatch.setattr(api_keys, "REFRESH_SECONDS", 0.0)
            made = await commands.post(
                "/api/v1/admin/api_client",
                json={"description": "late", "frontend_type": "x"},
                headers={"Authorization": "Bearer test-root"},
            )
            assert made.status_code == 200, made.text
            late = await queries.get("/api/v1/leaderboards/total", headers={"X-API-Key": made.json()})
            assert late.status_code == 200, late.text


# Digests of the snapshots of a fixed log (tests/data/golden-log.msgpack.gz: 950 events made
# by `seed_history(trees=10, users=10, seed=7)`), as the code before issue #13 wrote them:
# trees.jsonl.gz byte for byte, each parquet file's rows (independent of the parquet writer).
GOLDEN = {
    "oa": {
        "trees.jsonl.gz": "ff03e83773dc62690c422cad94e4dc8572281b09cfc98db419b594fdc26c5714",
        "dpo.parquet": "9e4f4faffdfb1c85f55728e391cb3c1cdd98a468d6ec2b94ec6a2ade2d683ebb",
        "messages.parquet": "fede78d963592051f18472cb38c63c10f087e9bf8d22affcfc57ae852cd310e0",
        "prompts.parquet": "78f47f8792007201a9f973a9b44ce6ad133fe796ea550a4373fbe8cf108e5850",
        "rm.parquet": "8e0b77482fa0bdabe304e3876c19b9c3aa74fe7d8aa50fd98c18ec3e29e0f542",
        "sft.parquet": "479bf0336ef4844d3b60d34aa440476e5b8a3d3a3fcc009d18a45b7217cea11c",
    },
    "trust": {
        "trees.jsonl.gz": "ab4ed9755bee7eeaaf3245381346a583bc5e562d13dfa4d6ed1027e0d6c9b5c7",
        "dpo.parquet": "c5efccee40020ebcc4152e3691c4c4bef590bb832d6157b9d7b0b2e28214e660",
        "messages.parquet": "d4e86a242c17e6a1cfaeefbe7b114d3fac9b9651f5730fbe39f14bc4b472d801",
        "prompts.parquet": "3ce64236f281a89ce3a78f4122152a9e47f86bc3efe567976e12243d1a12fbee",
        "rm.parquet": "3fccd5ae41ab4f24e444d9bcb1fdf8f6a5c38fdca8cb007a1b168f9a5e91f0a3",
        "sft.parquet": "5d86fecc13ec16882a2043f665c038d8e42bbedf75e47f66eaa75b89b0d7aee0",
    },
}


def digests(manifest: dict, data_dir: Path) -> dict[str, str]:
    folder = data_dir / "snapshots" / manifest["id"]
    out = {"trees.jsonl.gz": hashlib.sha256((folder / "trees.jsonl.gz").read_bytes()).hexdigest()}
    for name in sorted(manifest["files"]):
        if name.endswith(".parquet"):
            rows = pl.read_parquet(folder / name).to_dicts()
            out[name] = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    return out


@pytest.mark.parametrize("policy", ["oa", "trust"])
def test_snapshots_of_a_fixed_log_are_what_they_were(store_url, tmp_path, policy):
    rows = msgspec.msgpack.decode(gzip.decompress((DATA / "golden-log.msgpack.gz").read_bytes()))
    store = EventStore(store_url)
    try:
        store.recorder.insert_events([StoredEvent(UUID(bytes=i), v, t, s) for i, v, t, s in rows])
        settings = Settings(database_url=store_url, data_dir=tmp_path)
        manifest = create_snapshot(
            settings, SnapshotSpec(policy=policy, selection=Selection(states=())), store=store, record=False
        )
    finally:
        store.close()
    assert digests(manifest, tmp_path) == GOLDEN[policy]


async def test_creating_a_snapshot_is_a_command(client):
    made = await client.post("/api/v1/snapshots", json={"states": []})
    assert made.status_code == 201, made.text
    position = int(made.headers["X-Log-Position"])
    service = client.app.state.service
    assert service.model.position == position  # the command service appended it and knows of it
    events = (await client.get(f"/api/v1/events?after={position - 1}")).json()
    assert [e["type"] for e in events["events"]] == ["snapshot_created"], events
    again = await client.post("/api/v1/snapshots", json={"states": [], "at": made.json()["position"]})  # the same one
    assert again.status_code == 201 and again.json()["id"] == made.json()["id"]
    assert service.model.position == position
