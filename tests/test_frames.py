"""Frames for notebooks (projections/frames.py, issue #16) on both stores: live frames hold what
``oasst sql`` reads, typed from the tables' Structs; snapshot frames are the parquet files; the
worked examples (projections/analyses.py) agree with the consensus view and find the planted
spammer and troll among the annotators."""

from __future__ import annotations

import json
import statistics
from typing import get_origin

import msgspec
import polars as pl
import pytest

from devkit.simulator import seed_history_async
from infra.store import EventStore
from projections import analyses, frames
from projections.consensus import ConsensusView
from projections.relational import TABLES
from projections.runner import ProjectionRunner
from projections.snapshot import create_snapshot, open_snapshot
from projections.sql import live_query, snapshot_query
from tests.config import make_settings
from tests.test_sql_views import caught_up, history


def typed_rows(frame: pl.DataFrame, row_type) -> list[bytes]:
    """Rows as the table's Struct (SQLite's 0/1 and ISO text converted, JSON decoded), sorted."""
    json_columns = {f.name for f in msgspec.structs.fields(row_type) if get_origin(f.type) in (dict, list)}
    rows = [{k: json.loads(v) if k in json_columns else v for k, v in r.items()} for r in frame.to_dicts()]
    return sorted(msgspec.json.encode(msgspec.convert(r, row_type, strict=False)) for r in rows)


async def test_live_frames_are_the_tables_typed(store_url, tmp_path):
    await history(store_url, tmp_path)
    caught_up(store_url)
    live = frames.live(store_url)
    assert set(live) == set(TABLES)
    for name, row_type in TABLES.items():
        got = live[name].collect()
        assert got.schema == frames.schema(name)
        sql = live_query(store_url, f"SELECT * FROM {name}")  # what ``oasst sql`` prints
        assert got.columns == sql.columns and len(got) == len(sql) > 0, name
        assert typed_rows(got, row_type) == typed_rows(sql, row_type), name

    messages = live["messages"].collect()
    assert messages.schema["created"] == pl.Datetime("us", "UTC") and messages.schema["id"] == pl.String
    assert messages.schema["deleted"] == pl.Boolean and messages.schema["emojis"] == pl.String
    assert messages["author"].null_count() == 1  # dave was deleted: his reply has no author
    assert messages.select(pl.col("plus_one").sum()).item() == 1
    assert {"+1": 1} in [json.loads(e) for e in messages["emojis"]]
    # frames join: every author is a user
    joined = messages.lazy().join(live["users"], left_on="author", right_on="id").collect()
    assert len(joined) == len(messages) - 1
    assert list(frames.live(store_url, ["trees"])) == ["trees"]


async def test_snapshot_frames_are_its_parquet_files(store_url, tmp_path):
    await history(store_url, tmp_path)
    settings = make_settings(store_url, tmp_path)
    manifest = create_snapshot(settings)
    folder = open_snapshot(manifest["id"], settings.data_dir).dir
    by_id = frames.snapshot(manifest["id"], settings.data_dir)
    assert set(by_id) == {"messages", "sft", "prompts", "rm", "dpo"}
    for name, lazy in by_id.items():
        assert lazy.collect().equals(pl.read_parquet(folder / f"{name}.parquet")), name
    assert len(by_id["messages"].collect()) == 3  # erin, a spammer, is left out with her reply
    # by folder path and as the latest, the same files; and the same table oasst sql --snapshot reads
    for ref in (folder, "latest"):
        assert frames.snapshot(ref, settings.data_dir)["messages"].collect().equals(by_id["messages"].collect())
    assert snapshot_query(folder, "SELECT * FROM messages").equals(by_id["messages"].collect())
    with pytest.raises(FileNotFoundError):
        frames.snapshot("no-such-snapshot", settings.data_dir)


def consensus_votes(url: str) -> tuple[ConsensusView, pl.LazyFrame]:
    """Every user's latest labels per message from the consensus view, one row per vote."""
    store = EventStore(url)
    view = ConsensusView()
    runner = ProjectionRunner(store, [view])
    runner.restore()
    runner.catch_up()
    store.close()
    rows = [
        (str(mid), str(user), label, value)
        for mid, facts in view.labels.rows.items()
        for user, labels in facts.by_user.items()
        for label, value in labels.items()
    ]
    return view, pl.LazyFrame(rows, schema=list(analyses.VOTE_COLUMNS), orient="row")


async def test_worked_examples_on_a_seeded_history(store_url, tmp_path):
    summary = await seed_history_async(store_url, trees=20, users=15, seed=4)
    view, votes = consensus_votes(store_url)
    labels = set(votes.select("label").unique().collect()["label"])

    # (1) agreement by label: Krippendorff's alpha, as the consensus view computes it
    agreement = analyses.agreement_by_label(votes)
    assert set(agreement["label"]) == labels and agreement["label"].is_sorted()
    for row in agreement.iter_rows(named=True):
        want = view.agreement(row["label"])
        assert (row["units"], row["annotators"]) == (want["units"], want["annotators"])
        assert row["alpha"] == pytest.approx(want["alpha"]) if want["alpha"] is not None else row["alpha"] is None
    assert agreement["alpha"].drop_nulls().is_between(-1.0, 1.0).all() and agreement["alpha"].count() > 3

    # (2) annotator outliers: the planted spammer and troll label unlike their peers
    outliers = analyses.annotator_outliers(votes, min_votes=5)
    assert outliers["mean_abs_z"].is_sorted(descending=True) and (outliers["votes"] >= 5).all()
    behaviour = summary["truth"]["behaviour_of"]
    score = dict(zip(outliers["annotator"], outliers["mean_abs_z"], strict=True))
    dishonest = [u for u in score if behaviour[u] in ("spammer", "troll")]
    diligent = statistics.median(score[u] for u in score if behaviour[u] == "diligent")
    assert dishonest and all(score[u] > diligent for u in dishonest)
    assert behaviour[outliers["annotator"][0]] in ("spammer", "troll")

    # the snapshot fallback: per-message label means only, so their spread, not agreement
    settings = make_settings(store_url, tmp_path)
    manifest = create_snapshot(settings)
    spread = analyses.label_spread(frames.snapshot(manifest["id"], settings.data_dir)["messages"])
    assert len(spread) > 3 and set(spread["label"]) <= labels
    assert (spread["messages"] > 0).all() and (spread["votes"] >= spread["messages"]).all()
    assert spread["mean"].is_between(0.0, 1.0).all() and (spread["q10"] <= spread["q90"]).all()


async def test_worked_examples_over_the_live_label_votes(store_url):
    await seed_history_async(store_url, trees=20, users=15, seed=4)
    caught_up(store_url)  # fills the SQL read models
    _, from_view = consensus_votes(store_url)
    live = analyses.latest_votes(frames.live(store_url, ["label_votes"])["label_votes"])
    assert live.collect().height == from_view.collect().height  # one row per latest label, as consensus keeps
    assert analyses.agreement_by_label(live).equals(analyses.agreement_by_label(from_view))
    outliers = analyses.annotator_outliers(live)
    assert outliers.height == analyses.annotator_outliers(from_view).height
    assert outliers["mean_abs_z"].to_list() == pytest.approx(
        analyses.annotator_outliers(from_view)["mean_abs_z"].to_list()
    )
