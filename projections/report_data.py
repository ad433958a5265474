"""What ``oasst report`` charts, as small polars frames, from the live SQL read models or from a
snapshot's parquet files. The heavy lifting stays in the database (live) or in polars (snapshot):
only aggregates come back, so the page is small and quick at OA's size.

Both sources give the same frames (``ReportData``); what a snapshot does not hold (who voted
what, trust) comes back as ``None`` with the reason in ``missing``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from projections import analyses
from projections.sql import live_queries, parquet_frames

# OA's tree lifecycle, in order: where a tree is now (the funnel reads left to right)
TREE_STATES = (
    "prompt_lottery_waiting",
    "initial_prompt_review",
    "growing",
    "ranking",
    "backlog_ranking",
    "ready_for_export",
    "aborted_low_grade",
    "halted_by_moderator",
    "scoring_failed",
)
# trees that got at least this far: the funnel's stages and the states that count for each
FUNNEL_STAGES = {
    "created": TREE_STATES,
    "passed review": ("growing", "ranking", "backlog_ranking", "ready_for_export", "scoring_failed"),
    "grown (ranking)": ("ranking", "backlog_ranking", "ready_for_export", "scoring_failed"),
    "ready for export": ("ready_for_export",),
}
TOP_ANNOTATORS = 30


@dataclass
class ReportData:
    source: str  # what the report was made from, in words
    per_day: pl.DataFrame  # day, lang, messages
    tree_states: pl.DataFrame  # state, trees (lifecycle order)
    label_means: pl.DataFrame  # label, mean, messages: per-message means of a label, and how many messages have each
    agreement: pl.DataFrame | None  # label, alpha, units
    trust: pl.DataFrame | None  # user, score, labels, rankings, suspected, marked
    activity: pl.DataFrame  # who, labels, rankings, messages: the most active first
    missing: dict[str, str] = field(default_factory=dict)  # chart -> why a snapshot cannot show it


def funnel(tree_states: pl.DataFrame) -> pl.DataFrame:
    """Trees that reached each stage, from the trees by state."""
    count = dict(zip(tree_states["state"], tree_states["trees"], strict=True))
    rows = [(stage, sum(count.get(s, 0) for s in states)) for stage, states in FUNNEL_STAGES.items()]
    return pl.DataFrame(rows, schema={"stage": pl.String, "trees": pl.Int64}, orient="row")


def _in_lifecycle_order(states: pl.DataFrame) -> pl.DataFrame:
    order = {s: i for i, s in enumerate(TREE_STATES)}
    rank = pl.col("state").replace_strict(order, default=len(order), return_dtype=pl.Int64)
    return states.with_columns(pl.col("trees").cast(pl.Int64)).sort(rank, "state")


# --- live: SQL over the read models ------------------------------------------------------------------

PER_DAY = """SELECT CAST(day AS text) AS day, lang, CAST(sum(messages) AS bigint) AS messages
             FROM daily_activity GROUP BY day, lang HAVING sum(messages) > 0 ORDER BY day, lang"""
TREE_STATES_SQL = "SELECT state, count(*) AS trees FROM trees GROUP BY state"
LABEL_MEANS = """SELECT label, mean, count(*) AS messages FROM label_aggregates GROUP BY label, mean
                 ORDER BY label, mean"""
# the unit sums of analyses.alpha_by_label, over the votes analyses.latest_votes keeps
UNIT_SUMS = """SELECT label, CAST(message_id AS text) AS message_id, count(*) AS m, sum(value) AS s1,
                      sum(value * value) AS s2
               FROM label_votes WHERE latest AND kind <> 'report' AND annotator IS NOT NULL
               GROUP BY label, message_id"""
ACTIVITY = f"""SELECT who, CAST(sum(labels) AS bigint) AS labels, CAST(sum(rankings) AS bigint) AS rankings,
                      CAST(sum(labels) + sum(rankings) AS bigint) AS submissions
               FROM (SELECT annotator AS who, count(DISTINCT position) AS labels, 0 AS rankings
                     FROM label_votes WHERE annotator IS NOT NULL GROUP BY annotator
                     UNION ALL
                     SELECT annotator, 0, count(*) FROM rankings WHERE annotator IS NOT NULL GROUP BY annotator) AS a
               GROUP BY who ORDER BY submissions DESC, who LIMIT {TOP_ANNOTATORS}"""
MARKED = "SELECT id FROM users WHERE spammer"


def live(url: str) -> ReportData:
    queries = {
        "units": UNIT_SUMS,
        "per_day": PER_DAY,
        "states": TREE_STATES_SQL,
        "means": LABEL_MEANS,
        "marked": MARKED,
        "activity": ACTIVITY,
    }
    a = live_queries(url, queries)  # one read-only transaction: the charts agree with each other
    return ReportData(
        source="live tables",
        per_day=a["per_day"],
        tree_states=_in_lifecycle_order(a["states"]),
        label_means=a["means"],
        agreement=analyses.alpha_by_label(a["units"]) if a["units"].height else _no_agreement(),
        trust=live_trust(url, set(a["marked"]["id"].to_list())),
        activity=a["activity"],
    )


def _no_agreement() -> pl.DataFrame:
    return pl.DataFrame(schema={"label": pl.String, "alpha": pl.Float64, "units": pl.Int64})


def live_trust(url: str, marked: set[str]) -> pl.DataFrame:
    """Trust of every annotator (``projections.trust_v2``, the default policy) over the stored
    consensus view, under the same pseudonyms as the tables; ``marked``: pseudonyms of users
    marked spammers."""
    from infra.store import EventStore
    from projections.consensus import ConsensusView
    from projections.runner import ProjectionRunner
    from projections.trust_v2 import compute_trust

    store = EventStore(url)
    try:
        runner = ProjectionRunner(store, views=[ConsensusView()])
        runner.restore()
        scores = compute_trust(runner.views[0])
        pseudonym = runner.storage.relational.pseudonym
        rows = [
            (pseudonym(t.user_id), t.score, t.labels, t.rankings, t.suspected, pseudonym(t.user_id) in marked)
            for t in scores.values()
        ]
    finally:
        store.close()
    schema = {
        "user": pl.String,
        "score": pl.Float64,
        "labels": pl.Int64,
        "rankings": pl.Int64,
        "suspected": pl.Boolean,
        "marked": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema, orient="row").sort("score", "user")


# --- a snapshot: polars over its parquet files ------------------------------------------------------------


def snapshot(folder: Path) -> ReportData:
    messages = parquet_frames(folder)["messages"]
    per_day = (
        messages.group_by(day=pl.col("created_date").str.slice(0, 10), lang=pl.col("lang"))
        .agg(messages=pl.len().cast(pl.Int64))
        .sort("day", "lang")
    )
    states = (
        messages.select("message_tree_id", state="tree_state")
        .unique()
        .group_by("state")
        .agg(trees=pl.len().cast(pl.Int64))
    )
    labels = pl.col("labels")
    means = (
        messages.select(label=labels.struct.field("name"), mean=labels.struct.field("value"))
        .explode("label", "mean")
        .drop_nulls("label")
        .group_by("label", "mean")
        .agg(messages=pl.len().cast(pl.Int64))
        .sort("label", "mean")
    )
    authors = (
        messages.drop_nulls("user_id")
        .group_by(who="user_id")
        .agg(labels=pl.lit(0, pl.Int64), rankings=pl.lit(0, pl.Int64), submissions=pl.len().cast(pl.Int64))
        .sort("submissions", "who", descending=[True, False])
        .head(TOP_ANNOTATORS)
    )
    return ReportData(
        source=f"snapshot {folder.name}",
        per_day=per_day.collect(),
        tree_states=_in_lifecycle_order(states.collect()),
        label_means=means.collect(),
        agreement=None,
        trust=None,
        activity=authors.collect(),
        missing={
            "agreement": "a snapshot keeps per-message label means, not who voted what: no agreement to compute",
            "trust": "a snapshot names its policy but keeps no per-user trust",
            "activity": "a snapshot keeps authors, not annotators: messages written per author instead",
        },
    )
