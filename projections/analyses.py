"""Two worked examples over ``projections.frames`` (README "Frames for notebooks").

Both per-annotator analyses need one row per vote: ``message_id``, ``annotator``, ``label``,
``value`` (``VOTE_COLUMNS``): live, ``latest_votes(frames.live(url)["label_votes"])``, what the
consensus view counts. A snapshot does not hold that: its ``messages`` frame carries OA's
per-message label means and counts only, so over a snapshot the agreement example falls back to
``label_spread`` (how the means spread across messages) and outliers cannot be found."""

from __future__ import annotations

import polars as pl

VOTE_COLUMNS = ("message_id", "annotator", "label", "value")
_ALPHA_SCHEMA = {"label": pl.String, "alpha": pl.Float64, "units": pl.Int64, "annotators": pl.Int64}


def latest_votes(label_votes: pl.LazyFrame) -> pl.LazyFrame:
    """Each annotator's latest labels per message (no reports, no deleted annotators): the votes
    consensus counts, from the live ``label_votes`` table (spammers kept: outliers look for them)."""
    kept = pl.col("latest") & (pl.col("kind") != "report") & pl.col("annotator").is_not_null()
    return label_votes.filter(kept).select(VOTE_COLUMNS)


def agreement_by_label(votes: pl.LazyFrame) -> pl.DataFrame:
    """Krippendorff's alpha (interval metric) per label, over messages with at least two
    annotators, as ``ConsensusView.agreement`` computes it; ``alpha`` is null with too little data."""
    df = votes.select(VOTE_COLUMNS).drop_nulls().collect()
    rows = [{"label": label, **_alpha(g)} for (label,), g in df.group_by("label")]
    return pl.DataFrame(rows, schema=_ALPHA_SCHEMA).sort("label")


def _alpha(votes: pl.DataFrame) -> dict:
    import krippendorff  # heavy import, only here

    shared = votes.filter(pl.len().over("message_id") >= 2)
    # annotators x units, NaN where an annotator did not label that message
    matrix = shared.pivot(on="message_id", index="annotator", values="value", aggregate_function="last")
    data = matrix.drop("annotator").to_numpy().astype(float)
    units, annotators = data.shape[1], data.shape[0]
    # one distinct value only: alpha is 0/0 (the package raises)
    if units < 2 or annotators < 2 or shared["value"].n_unique() < 2:
        return {"alpha": None, "units": units, "annotators": annotators}
    alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
    return {"alpha": float(alpha), "units": units, "annotators": annotators}


def label_spread(messages: pl.LazyFrame) -> pl.DataFrame:
    """Per label, how a snapshot's per-message label means spread across messages (``messages``
    frame of a snapshot, Hugging Face layout). Not agreement: who voted what is not in a snapshot;
    a label whose means barely spread tells messages apart poorly."""
    labels = pl.col("labels")
    return (
        messages.select(
            label=labels.struct.field("name"), value=labels.struct.field("value"), n=labels.struct.field("count")
        )
        .explode("label", "value", "n")
        .drop_nulls("label")
        .group_by("label")
        .agg(
            messages=pl.len(),
            votes=pl.col("n").sum(),
            mean=pl.col("value").mean(),
            std=pl.col("value").std(),
            q10=pl.col("value").quantile(0.1),
            q90=pl.col("value").quantile(0.9),
        )
        .sort("label")
        .collect()
    )


def annotator_outliers(votes: pl.LazyFrame, min_votes: int = 5) -> pl.DataFrame:
    """Annotators whose labels deviate most from the other annotators of the same message: each
    vote's distance from the others' mean (leave-one-out, so a lone deviant is not its own
    yardstick), as a z-score within its label (labels have different spreads), averaged per annotator
    over messages with two or more annotators. Most deviant first; annotators under ``min_votes`` left out."""
    by_unit = ["message_id", "label"]
    others = (pl.col("value").sum().over(by_unit) - pl.col("value")) / (pl.len().over(by_unit) - 1)
    deviation = (pl.col("value") - others).alias("deviation")
    return (
        votes.select(VOTE_COLUMNS)
        .drop_nulls()
        .filter(pl.len().over(by_unit) >= 2)
        .with_columns(deviation)
        .with_columns(z=(pl.col("deviation") / pl.col("deviation").std().over("label")).fill_nan(0.0))
        .group_by("annotator")
        .agg(votes=pl.len(), mean_abs_z=pl.col("z").abs().mean(), mean_z=pl.col("z").mean())
        .filter(pl.col("votes") >= min_votes)
        .sort("mean_abs_z", "annotator", descending=[True, False], nulls_last=True)
        .collect()
    )
