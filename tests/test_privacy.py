"""Deleting a user (issue #9, privacy): anonymised in the views and in snapshots made
after the deletion; their messages stay, without their id. An older snapshot, made
again at its own position, stays byte-identical; re-deriving it with ``latest``
exclusions leaves the deleted user's id out too."""

from __future__ import annotations

import polars as pl
from litestar.testing import AsyncTestClient

from devkit.simulator import seed_history_async
from infra.app import create_app
from projections.snapshot import SnapshotSpec, create_snapshot, load_manifest, spec_from_manifest
from tests.config import API_KEY, make_settings


def rows(settings, manifest) -> pl.DataFrame:
    return pl.read_parquet(settings.data_dir / "snapshots" / manifest["id"] / "messages.parquet")


async def test_a_deleted_user_is_anonymised_in_views_and_later_snapshots(store_url, tmp_path):
    await seed_history_async(store_url, trees=20, users=15, seed=4)
    settings = make_settings(store_url, tmp_path)
    before = create_snapshot(settings)
    authors = rows(settings, before)["user_id"]
    victim = authors.value_counts(sort=True)["user_id"][0]
    authored = int((authors == victim).sum())
    assert authored > 0

    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = await client.delete(f"/api/v1/users/{victim}")
        assert r.status_code == 204
        seen = {"min_position": r.headers["X-Log-Position"]}
        u = (await client.get(f"/api/v1/users/{victim}", params=seen)).json()
        # OA's anonymisation: the name and display name go; "enabled" is left as it was
        assert (u["display_name"], u["id"], u["deleted"]) == ("Deleted User", f"deleted_{victim}", True)
        board = (await client.get("/api/v1/leaderboards/total", params=seen)).json()
        assert victim not in {e["user_id"] for e in board["leaderboard"]}

    after = create_snapshot(settings)
    data = rows(settings, after)
    assert victim not in set(data["user_id"].drop_nulls())
    assert int(data["user_id"].is_null().sum()) == authored  # the messages stay, without their author
    assert len(data) == len(rows(settings, before)) and after["exclusions"]["deleted_users"] == 1

    again = create_snapshot(settings, SnapshotSpec(position=before["position"]))
    assert again["id"] == before["id"]  # reproducible at its own position
    derived = create_snapshot(settings, spec_from_manifest(load_manifest(settings.data_dir, before["id"]), "latest"))
    assert victim not in set(rows(settings, derived)["user_id"].drop_nulls())
