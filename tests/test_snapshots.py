"""Snapshots, export and import (issue #5): the same inputs give the same bytes after more
events and spam marks; re-deriving with today's spammers; a snapshot at P equals the
views at P; filters and policies; oasst round trips; bad files import nothing."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from pathlib import Path
from uuid import NAMESPACE_URL, UUID, uuid5

import polars as pl
import pytest
from litestar.testing import AsyncTestClient
from typer.testing import CliRunner

from devkit.simulator import seed_history_async
from infra.app import create_app
from infra.cli import app as cli
from infra.oasst_format import FormatError, parse_items
from infra.settings import Settings
from infra.store import EventStore
from projections.dataset import Selection
from projections.snapshot import SnapshotSpec, create_snapshot, load_manifest, spec_from_manifest
from tests.config import API_KEY, make_settings

DATA = Path(__file__).parent / "data"
TRAINING_FILES = ("sft.parquet", "rm.parquet", "dpo.parquet", "prompts.parquet", "messages.parquet")


def file_hashes(settings: Settings, manifest: dict) -> dict[str, str]:
    folder = settings.data_dir / "snapshots" / manifest["id"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f]


def log_length(url: str) -> int:
    store = EventStore(url)
    try:
        return store.max_position()
    finally:
        store.close()


@pytest.fixture
async def seeded(store_url, tmp_path) -> Settings:
    await seed_history_async(store_url, trees=20, users=15, seed=4)
    return make_settings(store_url, tmp_path)


async def test_same_snapshot_after_more_events_and_spam_marks(seeded):
    first = create_snapshot(seeded)
    hashes = file_hashes(seeded, first)
    assert first["counts"]["trees"] > 5 and first["counts"]["dpo.parquet"] > 0
    assert hashes["manifest.json"] and set(first["files"]) == set(hashes) - {"manifest.json"}
    assert all(first["files"][n]["sha256"] == h for n, h in hashes.items() if n != "manifest.json")

    # a diligent author of snapshotted messages is marked a spammer after P
    authors = pl.read_parquet(seeded.data_dir / "snapshots" / first["id"] / "messages.parquet")["user_id"]
    victim = authors.value_counts(sort=True)["user_id"][0]
    async with AsyncTestClient(create_app(seeded)) as client:
        r = await client.post(f"/api/v1/admin/users/{victim}/spammer", headers={"X-API-Key": API_KEY})
        assert r.status_code == 204, r.text
    assert log_length(seeded.database_url) > first["position"]

    again = create_snapshot(seeded, SnapshotSpec(position=first["position"]))
    assert again["id"] == first["id"]
    assert file_hashes(seeded, again) == hashes

    # re-derive with today's spammer list: a new snapshot naming its parent, without the victim
    derived = create_snapshot(seeded, spec_from_manifest(load_manifest(seeded.data_dir, first["id"]), "latest"))
    assert derived["id"] != first["id"] and derived["parent"] == first["id"]
    assert derived["position"] == first["position"] and victim in derived["exclusions"]["users"]
    assert derived["exclusions"]["mode"] == "latest"
    rows = pl.read_parquet(seeded.data_dir / "snapshots" / derived["id"] / "messages.parquet")
    assert victim not in set(rows["user_id"]) and len(rows) < first["counts"]["messages.parquet"]

    # each new snapshot is recorded once, as an event
    store = EventStore(seeded.database_url)
    try:
        recorded = [e.snapshot_id for _, e in store.read(0, 100_000) if e.__struct_config__.tag == "snapshot_created"]
    finally:
        store.close()
    assert recorded == [first["id"], derived["id"]]


async def test_snapshot_equals_the_views_at_its_position(seeded):
    async with AsyncTestClient(create_app(seeded)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = await client.post("/api/v1/snapshots", json={"states": []})  # every state
        assert r.status_code == 201, r.text
        manifest = r.json()
        runner = client.app.state.runner
        assert await runner.wait_for(manifest["position"], 5)
        view = runner.by_name["message_tree"]
        rows = pl.read_parquet(seeded.data_dir / "snapshots" / manifest["id"] / "messages.parquet")
        assert len(rows) > 50
        for row in rows.iter_rows(named=True):
            m = view.messages[UUID(row["message_id"])]
            assert (row["text"], row["role"], row["review_count"], row["rank"]) == (
                m.text,
                m.role,
                m.review_count,
                m.rank,
            )
            assert row["tree_state"] == view.trees[m.tree_id].state
            assert not view.is_hidden(m) and m.review_result is True
        # every visible, accepted prompt of the views is a tree of the snapshot
        prompts = {
            m.id for m in view.messages.values() if m.parent_id is None and not view.is_hidden(m) and m.review_result
        }
        assert prompts == {UUID(x) for x in rows["message_tree_id"]}

        r = await client.get("/api/v1/snapshots")
        assert [m["id"] for m in r.json()] == [manifest["id"]]
        r = await client.get(f"/api/v1/snapshots/{manifest['id']}")
        assert r.json()["files"] == manifest["files"]
        r = await client.get(f"/api/v1/snapshots/{manifest['id']}/files/dpo.parquet")
        assert hashlib.sha256(r.content).hexdigest() == manifest["files"]["dpo.parquet"]["sha256"]
        r = await client.get(f"/api/v1/snapshots/{manifest['id']}/files/../../secret")
        assert r.status_code == 404
        r = await client.get("/api/v1/snapshots/nope")
        assert r.status_code == 404 and r.json()["message"] == "snapshot nope not found"
        r = await client.post("/api/v1/snapshots", json={"at": 10**9})
        assert r.status_code == 422 and "beyond the log" in r.json()["message"]
        r = await client.get("/api/v1/snapshots", headers={"X-API-Key": "wrong"})
        assert r.status_code == 403


async def test_filters_and_policies(seeded):
    everything = create_snapshot(
        seeded, SnapshotSpec(selection=Selection(states=(), spam="include", deleted="include"))
    )
    default = create_snapshot(seeded)
    assert everything["counts"]["messages.parquet"] > default["counts"]["messages.parquet"]
    states = set(pl.read_parquet(seeded.data_dir / "snapshots" / everything["id"] / "messages.parquet")["tree_state"])
    assert len(states) > 1 and "ready_for_export" in states

    reviewed = create_snapshot(seeded, SnapshotSpec(selection=Selection(min_review_count=3)))
    counts = pl.read_parquet(seeded.data_dir / "snapshots" / reviewed["id"] / "messages.parquet")["review_count"]
    assert len(counts) and counts.min() >= 3

    nothing = create_snapshot(seeded, SnapshotSpec(selection=Selection(langs=("xx",))))
    assert nothing["counts"]["trees"] == 0 and nothing["counts"]["sft.parquet"] == 0
    assert pl.read_parquet(seeded.data_dir / "snapshots" / nothing["id"] / "sft.parquet").columns == [
        "messages",
        "message_id",
        "message_tree_id",
        "lang",
        "rank",
    ]

    top = create_snapshot(seeded, SnapshotSpec(sft_max_rank=1))
    ranks = pl.read_parquet(seeded.data_dir / "snapshots" / top["id"] / "sft.parquet")["rank"]
    assert (ranks.fill_null(0) < 1).all() and top["counts"]["sft.parquet"] < default["counts"]["sft.parquet"]

    trust = create_snapshot(seeded, SnapshotSpec(policy="trust"))
    assert trust["policy"] == {"name": "trust", "version": "trust-v1"} and trust["id"] != default["id"]
    # the DPO pairs follow each policy's ranking: best-ranked first in both
    for m in (default, trust):
        dpo = pl.read_parquet(seeded.data_dir / "snapshots" / m["id"] / "dpo.parquet")
        assert (dpo["chosen_rank"] < dpo["rejected_rank"]).all()


async def test_training_files_load_with_datasets(seeded):
    from datasets import load_dataset
    from trl.data_utils import is_conversational

    manifest = create_snapshot(seeded)
    folder = seeded.data_dir / "snapshots" / manifest["id"]
    for name in TRAINING_FILES:
        data = load_dataset("parquet", data_files=str(folder / name), split="train")
        assert len(data) == manifest["counts"][name]
    sft = load_dataset("parquet", data_files=str(folder / "sft.parquet"), split="train")
    assert is_conversational(sft[0]) and sft[0]["messages"][-1]["role"] == "assistant"
    dpo = load_dataset("parquet", data_files=str(folder / "dpo.parquet"), split="train")
    assert is_conversational(dpo[0]) and dpo[0]["prompt"][-1]["role"] == "user"
    assert dpo[0]["chosen"][0]["role"] == dpo[0]["rejected"][0]["role"] == "assistant"


def _cli(env: dict, *args: str):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


async def run_cli(env: dict, *args: str):
    """The CLI from an async test (it runs its own event loop, so: in a thread)."""
    return await asyncio.to_thread(_cli, env, *args)


def _env(settings: Settings) -> dict:
    return {"OASST_DATABASE_URL": settings.database_url, "OASST_DATA_DIR": str(settings.data_dir)}


async def test_export_import_round_trip_of_a_generated_history(seeded, pg_url, tmp_path):
    out = tmp_path / "a.jsonl.gz"
    result = await run_cli(_env(seeded), "export", str(out), "--labels")
    assert result.exit_code == 0, result.output
    exported = read_jsonl(out)
    assert len(exported) > 5 and all(t["tree_state"] == "ready_for_export" for t in exported)

    target = Settings(
        database_url=pg_url if seeded.database_url.startswith("sqlite") else f"sqlite:///{tmp_path / 'target.sqlite3'}",
        data_dir=tmp_path / "target",
    )
    result = await run_cli(_env(target), "import", str(out))
    assert result.exit_code == 0 and f"{len(exported)} trees imported" in result.output, result.output
    length = log_length(target.database_url)
    result = await run_cli(_env(target), "import", str(out))
    assert "0 trees imported" in result.output and log_length(target.database_url) == length  # idempotent

    back = tmp_path / "b.jsonl.gz"
    assert (await run_cli(_env(target), "export", str(back), "--labels")).exit_code == 0
    reimported = read_jsonl(back)
    assert all(t.pop("origin") == "a.jsonl.gz" for t in reimported)
    assert reimported == exported

    # OA's exporter flags name the same selection as ours
    for ours, oas in (
        (
            ["--labels", "--deleted", "include", "--spam", "only"],
            ["--export-labels", "--include-deleted", "--spam-only"],
        ),
        (["--events", "--synthetic", "include"], ["--export-events", "--include-synthetic"]),
    ):
        mine, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
        assert (await run_cli(_env(seeded), "export", str(mine), *ours)).exit_code == 0
        assert (await run_cli(_env(seeded), "export", "--export-file", str(theirs), *oas)).exit_code == 0
        assert read_jsonl(mine) == read_jsonl(theirs)
    clash = CliRunner().invoke(
        cli, ["export", str(tmp_path / "x.jsonl"), "--include-spam", "--spam-only"], env=_env(seeded)
    )
    assert clash.exit_code == 2 and "exclude each other" in clash.output

    # the anonymiser replaces ids, deterministically
    anon = tmp_path / "anon.jsonl"
    await run_cli(_env(seeded), "export", str(anon), "--anonymizer-seed", "s3cret", "--limit", "2")
    lines = read_jsonl(anon)
    assert (
        len(lines) == 2
        and lines[0]["prompt"]["message_id"]
        == hashlib.sha256(f"message:{exported[0]['prompt']['message_id']}s3cret".encode()).hexdigest()
    )


def oa_seed_file(path: Path) -> Path:
    """Open-Assistant's realistic dev seed data as flat oasst messages."""

    def uid(x: str) -> str:
        return str(uuid5(NAMESPACE_URL, f"oasst-seed:{x}"))

    entries = json.loads((DATA / "oa_realistic_seed_data.json").read_text())
    root_of: dict[str, str] = {}
    for e in entries:  # parents come first in the file
        root_of[e["user_message_id"]] = (
            root_of[e["parent_message_id"]] if e["parent_message_id"] else e["user_message_id"]
        )
    with open(path, "w") as f:
        for e in entries:
            f.write(
                json.dumps(
                    {
                        "message_id": uid(e["user_message_id"]),
                        "message_tree_id": uid(root_of[e["user_message_id"]]),
                        "parent_id": uid(e["parent_message_id"]) if e["parent_message_id"] else None,
                        "text": e["text"],
                        "role": e["role"],
                        "lang": "en",
                        "review_count": 3,
                        "review_result": True,
                        "tree_state": "ready_for_export",
                    }
                )
                + "\n"
            )
    return path


async def test_import_export_round_trip_of_oa_seed_data(store_url, tmp_path):
    source = oa_seed_file(tmp_path / "oa_seed.jsonl")
    settings = make_settings(store_url, tmp_path)
    result = await run_cli(_env(settings), "import", str(source))
    assert result.exit_code == 0 and "74 trees imported (444 messages)" in result.output, result.output

    out = tmp_path / "trees.jsonl"
    assert (await run_cli(_env(settings), "export", str(out))).exit_code == 0
    trees = read_jsonl(out)
    assert len(trees) == 74 and all(t["origin"] == "oa_seed.jsonl" for t in trees)
    flat = {json.loads(line)["message_id"]: json.loads(line) for line in source.read_text().splitlines()}

    def walk(n, parent=None):
        yield n, parent
        for c in n.get("replies", ()):
            yield from walk(c, n["message_id"])

    seen = 0
    for t in trees:
        for n, parent in walk(t["prompt"]):
            original = flat[n["message_id"]]
            assert (n["text"], n["role"], parent) == (original["text"], original["role"], original["parent_id"])
            seen += 1
    assert seen == 444

    # exported trees import again elsewhere and come back the same
    again = make_settings(f"sqlite:///{tmp_path / 'again.sqlite3'}", tmp_path / "again")
    assert (await run_cli(_env(again), "import", str(out))).exit_code == 0
    out2 = tmp_path / "trees2.jsonl"
    assert (await run_cli(_env(again), "export", str(out2))).exit_code == 0
    assert read_jsonl(out2) == trees


BAD_FILES = {
    "not json": ('{"message_id": ', "line 2: not JSON"),
    "unknown role": (
        '{"message_id": "00000000-0000-4000-8000-000000000001", "text": "hi", "role": "robot"}',
        "role must be one of",
    ),
    "no text": (
        '{"message_id": "00000000-0000-4000-8000-000000000001", "role": "prompter", "text": ""}',
        "text must be a non-empty string",
    ),
    "missing parent": (
        '{"message_id": "00000000-0000-4000-8000-000000000002", "parent_id": '
        '"00000000-0000-4000-8000-000000000009", "message_tree_id": "00000000-0000-4000-8000-00000000000a",'
        ' "text": "x", "role": "assistant"}',
        "has 0 roots",
    ),
    "bad id": ('{"message_id": "nope", "text": "x", "role": "prompter"}', "is not a UUID"),
    "bad state": (
        '{"message_tree_id": "00000000-0000-4000-8000-000000000001", "tree_state": "done", "prompt": '
        '{"message_id": "00000000-0000-4000-8000-000000000001", "text": "x", "role": "prompter"}}',
        "tree_state 'done'",
    ),
}
GOOD_LINE = (
    '{"message_tree_id": "00000000-0000-4000-8000-0000000000ff", "prompt": {"message_id": '
    '"00000000-0000-4000-8000-0000000000ff", "text": "a fine prompt", "role": "prompter", "lang": "en"}}'
)


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_import_files_import_nothing(case, tmp_path):
    bad, message = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD_LINE + "\n" + bad + "\n")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}", data_dir=tmp_path)
    result = _cli(_env(settings), "import", str(path))
    assert result.exit_code == 1 and "not imported" in result.output and message in result.output, result.output
    assert log_length(settings.database_url) == 0
    if case != "not json":
        with pytest.raises(FormatError, match=message.replace("(", r"\(")):
            parse_items(enumerate([json.loads(GOOD_LINE), json.loads(bad)], 1))


async def test_import_route_rejects_bad_items_and_appends_nothing(client):
    before = (await client.get("/api/v1/events", params={"after": 0, "limit": 10_000})).json()
    r = await client.post("/api/v1/admin/import", json={"origin": "x", "items": [json.loads(GOOD_LINE), {"foo": 1}]})
    assert r.status_code == 422 and "neither a tree" in r.json()["message"]
    after = (await client.get("/api/v1/events", params={"after": 0, "limit": 10_000})).json()
    assert after == before

    ranking_only = {
        "message_tree_id": "00000000-0000-4000-8000-000000000100",
        "prompt": {
            "message_id": "00000000-0000-4000-8000-000000000100",
            "text": "Which reply is better?",
            "role": "prompter",
            "lang": "en",
            "review_result": True,
            "replies": [
                {
                    "message_id": f"00000000-0000-4000-8000-00000000010{i}",
                    "text": f"synthetic reply {i}",
                    "role": "assistant",
                    "lang": "en",
                    "synthetic": True,
                    "model_name": "tiny,top_k=50",
                    "review_result": True,
                }
                for i in (1, 2)
            ],
        },
    }
    r = await client.post("/api/v1/admin/import", json={"origin": "sampler", "items": [ranking_only]})
    assert r.json() == {"trees_imported": 1, "trees_skipped": 0, "messages_imported": 3}
    r = await client.post("/api/v1/admin/import", json={"origin": "sampler", "items": [ranking_only]})
    assert r.json() == {"trees_imported": 0, "trees_skipped": 1, "messages_imported": 0}
    r = await client.get(
        "/api/v1/messages/00000000-0000-4000-8000-000000000100/tree",
        params={"min_position": r.headers["X-Log-Position"]},
    )
    assert r.status_code == 200 and len(r.json()["messages"]) == 3
    assert {m["synthetic"] for m in r.json()["messages"][1:]} == {True}


async def test_imported_backlog_trees_fill_the_ranking_state_up_to_min_active_rankings(tmp_path):
    from dataclasses import replace

    from tests.config import SMALL_TREE

    settings = make_settings(
        f"sqlite:///{tmp_path / 'r.sqlite3'}",
        tmp_path,
        replace(SMALL_TREE, min_active_rankings_per_lang=1, p_activate_backlog_tree=0.0),
    )
    trees = [
        {
            "message_tree_id": f"00000000-0000-4000-8000-0000000002{t}0",
            "prompt": {
                "message_id": f"00000000-0000-4000-8000-0000000002{t}0",
                "text": f"prompt {t}",
                "role": "prompter",
                "lang": "en",
                "review_result": True,
                "replies": [
                    {
                        "message_id": f"00000000-0000-4000-8000-0000000002{t}{i}",
                        "text": f"reply {t}{i}",
                        "role": "assistant",
                        "lang": "en",
                        "review_result": True,
                    }
                    for i in (1, 2)
                ],
            },
        }
        for t in (1, 2)
    ]
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers["X-API-Key"] = API_KEY
        r = await client.post("/api/v1/admin/import", json={"origin": "f", "items": trees})
        assert r.json()["trees_imported"] == 2
        seen = {"min_position": r.headers["X-Log-Position"]}
        states = [
            (await client.get(f"/api/v1/messages/{t['message_tree_id']}/tree/state", params=seen)).json()["state"]
            for t in trees
        ]
        assert sorted(states) == ["backlog_ranking", "ranking"]  # one active ranking tree per language
