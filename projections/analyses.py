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
    votes = votes.select(VOTE_COLUMNS).drop_nulls()
    kept = votes.filter(pl.len().over("message_id", "label") >= 2)
    annotators = kept.group_by("label").agg(annotators=pl.col("annotator").n_unique())
    alphas = alpha_by_label(unit_sums(kept).collect()).lazy()
    return (
        votes.select("label")
        .unique()
        .join(alphas, on="label", how="left")
        .join(annotators, on="label", how="left")
        .select("label", "alpha", pl.col("units").fill_null(0), pl.col("annotators").fill_null(0))
        .collect()
        .cast(_ALPHA_SCHEMA)
        .sort("label")
    )


def unit_sums(votes: pl.LazyFrame) -> pl.LazyFrame:
    """Per label and message: how many values, their sum and their sum of squares (what alpha needs;
    ``projections.report`` gets the same columns from SQL)."""
    value = pl.col("value")
    return votes.group_by("label", "message_id").agg(m=pl.len(), s1=value.sum(), s2=(value * value).sum())


def alpha_by_label(units: pl.DataFrame) -> pl.DataFrame:
    """Krippendorff's alpha, interval metric, from ``unit_sums`` rows, in closed form: with n
    pairable values, D_o ∝ Σ_u (m_u·S2_u − S1_u²)/(m_u − 1) and D_e ∝ (n·S2 − S1²)/(n − 1), the
    same number the ``krippendorff`` package computes from its coincidence matrix, without
    building an annotators × messages matrix (millions of cells at OA's size). Units with one
    value are not pairable; alpha is null with fewer than two units or one distinct value only."""
    m, s1, s2 = pl.col("m").cast(pl.Float64), pl.col("s1"), pl.col("s2")
    n = m.sum()
    observed = ((m * s2 - s1 * s1) / (m - 1)).sum()
    expected = (n * s2.sum() - s1.sum() ** 2) / (n - 1)
    per_label = (
        units.lazy()
        .filter(pl.col("m") >= 2)
        .sort("label", "message_id")  # a fixed summation order: the same bits from any source
        .group_by("label")
        .agg(units=pl.len(), observed=observed, expected=expected)
    )
    alpha = pl.when(pl.col("units") >= 2).then(1 - pl.col("observed") / pl.col("expected"))
    # one distinct value: expected disagreement 0 (up to rounding) and alpha 0/0
    alpha = pl.when(pl.col("expected") > 1e-12).then(alpha.round(12))
    return per_label.select("label", alpha=alpha, units=pl.col("units").cast(pl.Int64)).collect().sort("label")


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
