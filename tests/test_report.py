"""``oasst report`` (issue #16): one self-contained HTML page of charts, opened in a real headless
chromium, on both stores; every chart's numbers equal SQL over the same tables (written here
independently of the report's own queries), and a snapshot's report shows what a snapshot holds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest

from devkit.simulator import seed_history_async
from infra.store import EventStore
from projections import analyses, frames
from projections.runner import ProjectionRunner
from projections.snapshot import create_snapshot, open_snapshot
from projections.sql import live_query, snapshot_query
from tests.config import make_settings

CHARTS = ("messages-per-day", "tree-funnel", "label-distributions", "agreement", "trust", "activity")
pytestmark = pytest.mark.slow


def seeded(url: str) -> None:
    """A simulated history (spammers marked by its moderator), every view caught up and stored."""
    # its own thread: the browser's sync API keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, seed_history_async(url, trees=24, users=18, seed=7)).result()
    store = EventStore(url)
    try:
        runner = ProjectionRunner(store)
        runner.restore()
        runner.catch_up()
    finally:
        store.close()


def oasst_report(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OASST_DATABASE_URL": url, "OASST_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "report", *args], env=env, capture_output=True, text=True, timeout=120
    )


def open_page(browser, path: Path):
    """The page in chromium, every chart drawn; fails on a script error or any request off the file."""
    page = browser.new_page()
    errors, requests = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url) if not r.url.startswith("file://") else None)
    page.goto(path.as_uri())
    return page, errors, requests


def traces(page, key: str) -> list[dict]:
    """What plotly drew in one chart: its traces after plotly decoded their data."""
    return page.evaluate(
        """key => document.getElementById(key)._fullData.map(t => ({
            name: t.name, type: t.type, x: t.x ? Array.from(t.x) : null, y: t.y ? Array.from(t.y) : null,
            median: t.median ? Array.from(t.median) : null}))""",
        key,
    )


def table(page, key: str) -> list[dict]:
    """The numbers printed under a chart, as rows of text."""
    return page.evaluate(
        """key => { const t = document.getElementById(key + '-table');
            const names = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);
            return Array.from(t.tBodies[0].rows).map(r =>
                Object.fromEntries(Array.from(r.cells).map((c, i) => [names[i], c.textContent]))); }""",
        key,
    )


def test_live_report_draws_what_sql_says(browser, store_url, tmp_path):
    seeded(store_url)
    out = tmp_path / "report.html"
    done = oasst_report(store_url, tmp_path, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "report written to" in done.stdout
    page, errors, requests = open_page(browser, out)
    for key in CHARTS:
        page.wait_for_selector(f"#{key} .main-svg")  # plotly drew it
    assert errors == [] and requests == []  # self-contained: nothing fetched, no script error

    # messages per day by language: from the messages table itself, not the daily_activity view
    messages = frames.live(store_url, ["messages"])["messages"].collect()
    want = Counter((str(d), lang) for d, lang in zip(messages["created"].dt.date(), messages["lang"], strict=True))
    drawn = Counter()
    for t in traces(page, "messages-per-day"):
        for day, n in zip(t["x"], t["y"], strict=True):
            drawn[(day, t["name"])] += n
    assert drawn == want and sum(want.values()) == len(messages) > 20

    # the tree-state funnel: trees by state, and the first stage is every tree
    states = live_query(store_url, "SELECT state, count(*) AS n FROM trees GROUP BY state")
    assert {r["state"]: int(r["trees"]) for r in table(page, "tree-funnel")} == dict(states.iter_rows())
    funnel = traces(page, "tree-funnel")[0]
    assert funnel["y"][0] == "created" and funnel["x"][0] == states["n"].sum()
    assert funnel["x"] == sorted(funnel["x"], reverse=True)

    # label distributions: one box per label, messages and median as label_aggregates gives them
    means = live_query(store_url, "SELECT label, mean FROM label_aggregates")
    by_label = means.group_by("label").agg(n=pl.len(), median=pl.col("mean").median())
    boxes = {t["name"]: t["median"][0] for t in traces(page, "label-distributions")}
    assert boxes == pytest.approx(dict(zip(by_label["label"], by_label["median"], strict=True)))
    printed = {r["label"]: int(r["messages"]) for r in table(page, "label-distributions")}
    assert printed == dict(zip(by_label["label"], by_label["n"], strict=True))

    # agreement: the worked example over the live label votes (Krippendorff's alpha per label)
    votes = analyses.latest_votes(frames.live(store_url, ["label_votes"])["label_votes"])
    alphas = analyses.agreement_by_label(votes).drop_nulls("alpha")
    bars = traces(page, "agreement")[0]
    assert dict(zip(bars["x"], bars["y"], strict=True)) == pytest.approx(
        dict(zip(alphas["label"], alphas["alpha"], strict=True))
    )
    assert len(bars["x"]) > 5

    # trust: every annotator with evidence drawn once; the marked spammers are the users table's
    marked = set(live_query(store_url, "SELECT id FROM users WHERE spammer")["id"])
    voters = set(live_query(store_url, "SELECT DISTINCT annotator FROM label_votes")["annotator"].drop_nulls())
    histogram = {t["name"]: t["x"] for t in traces(page, "trust")}
    flagged = table(page, "trust")
    assert {r["user"] for r in flagged if r["marked"] == "True"} == marked & voters != set()
    assert len(histogram["marked spammer"]) == len(marked & voters)
    assert all(0 <= s <= 1 for xs in histogram.values() for s in xs)
    assert sum(len(xs) for xs in histogram.values()) >= len(voters - marked)

    # annotator activity: label submissions and rankings per annotator, the most active first
    vote_rows = frames.live(store_url, ["label_votes", "rankings"])
    labels = vote_rows["label_votes"].group_by("annotator").agg(n=pl.col("position").n_unique()).collect()
    rankings = vote_rows["rankings"].group_by("annotator").agg(n=pl.len()).collect()
    labelled = dict(labels.drop_nulls("annotator").iter_rows())
    ranked = dict(rankings.drop_nulls("annotator").iter_rows())
    label_bars, ranking_bars = traces(page, "activity")
    assert label_bars["y"] == [labelled.get(w, 0) for w in label_bars["x"]]
    assert ranking_bars["y"] == [ranked.get(w, 0) for w in ranking_bars["x"]]
    totals = [labelled.get(w, 0) + ranked.get(w, 0) for w in label_bars["x"]]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] == max(labelled.get(w, 0) + ranked.get(w, 0) for w in set(labelled) | set(ranked))


def test_snapshot_report_shows_what_a_snapshot_holds(browser, store_url, tmp_path):
    seeded(store_url)
    settings = make_settings(store_url, tmp_path)
    manifest = create_snapshot(settings)
    out = tmp_path / "snapshot.html"
    done = oasst_report(store_url, tmp_path, "--snapshot", manifest["id"], "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    page, errors, requests = open_page(browser, out)
    for key in ("messages-per-day", "tree-funnel", "label-distributions", "activity"):
        page.wait_for_selector(f"#{key} .main-svg")
    assert errors == [] and requests == []
    # what a snapshot cannot show is said, not drawn
    for key in ("agreement", "trust"):
        assert page.locator(f"#{key}").count() == 0
        assert "snapshot" in page.locator(f"#{key}-section .note").inner_text()

    folder = open_snapshot(manifest["id"], settings.data_dir).dir
    want = snapshot_query(folder, "SELECT lang, count(*) AS n FROM messages GROUP BY lang")
    drawn = {t["name"]: sum(t["y"]) for t in traces(page, "messages-per-day")}
    assert drawn == dict(want.iter_rows())
    trees = snapshot_query(folder, "SELECT count(DISTINCT message_tree_id) AS n FROM messages")["n"][0]
    assert traces(page, "tree-funnel")[0]["x"][0] == trees
    authors = snapshot_query(folder, "SELECT user_id, count(*) AS n FROM messages GROUP BY user_id")
    bars = traces(page, "activity")[0]
    assert bars["y"][0] == authors["n"].max()


def test_report_refuses_what_it_cannot_write(tmp_path):
    url = f"sqlite:///{tmp_path / 'none.sqlite3'}"
    assert oasst_report(url, tmp_path, "--out", str(tmp_path / "r.png")).returncode == 2  # not a page
    done = oasst_report(url, tmp_path, "--snapshot", "no-such-snapshot", "--out", str(tmp_path / "r.html"))
    assert done.returncode == 1 and "no report" in done.stdout
    done = oasst_report(url, tmp_path, "--out", str(tmp_path / "r.html"))  # no store there
    assert done.returncode == 1 and "no report" in done.stdout
    assert not list(tmp_path.glob("r.html*"))  # nothing half-written left behind
