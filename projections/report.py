"""``oasst report``: one self-contained HTML page of charts over the SQL read models (live) or a
snapshot, drawn with plotly (plotly.js inlined once, so the page opens offline). Each chart has
the numbers it draws in a table beneath it, so the page reads without JavaScript too."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.offline import get_plotlyjs

from projections import report_data
from projections.report_data import ReportData

TRUST_BINS = 20  # bins of width 0.05 over [0, 1]
# a fixed height and legend place, so charts line up down the page
LAYOUT = {"height": 420, "margin": {"l": 60, "r": 20, "t": 40, "b": 60}, "template": "plotly_white"}


class Chart:
    """One section of the page: a figure (or a note saying why there is none) and its numbers."""

    def __init__(self, key: str, title: str, table: pl.DataFrame | None, figure=None, note: str = ""):
        self.key, self.title, self.table, self.figure, self.note = key, title, table, figure, note


def per_day_chart(d: ReportData) -> Chart:
    fig = go.Figure(layout={**LAYOUT, "barmode": "stack", "xaxis_title": "day (UTC)", "yaxis_title": "messages"})
    for (lang,), rows in d.per_day.group_by("lang", maintain_order=True):
        fig.add_bar(name=lang, x=rows["day"].to_list(), y=rows["messages"].to_list())
    by_lang = (
        d.per_day.group_by("lang").agg(pl.col("messages").sum()).sort("messages", "lang", descending=[True, False])
    )
    return Chart("messages-per-day", "Messages per day, by language", by_lang, fig)


def funnel_chart(d: ReportData) -> Chart:
    stages = report_data.funnel(d.tree_states)
    fig = go.Figure(layout=LAYOUT)
    fig.add_funnel(name="trees reached", y=stages["stage"].to_list(), x=stages["trees"].to_list())
    note = "Trees that reached each stage; the table counts where each tree is now, in lifecycle order."
    return Chart("tree-funnel", "Tree-state funnel", d.tree_states, fig, note)


def label_chart(d: ReportData) -> Chart:
    """Per label, the spread of per-message means as a box (weighted by how many messages share a mean)."""
    fig = go.Figure(layout={**LAYOUT, "yaxis_title": "per-message mean", "showlegend": False})
    rows = []
    for (label,), g in d.label_means.group_by("label", maintain_order=True):
        values = g.select(pl.col("mean").repeat_by("messages").explode())["mean"]
        q1, median, q3 = (values.quantile(q, "linear") for q in (0.25, 0.5, 0.75))
        fig.add_box(
            name=label,
            x=[label],
            q1=[q1],
            median=[median],
            q3=[q3],
            lowerfence=[values.min()],
            upperfence=[values.max()],
        )
        rows.append((label, int(g["messages"].sum()), float(values.mean()), median))
    schema = {"label": pl.String, "messages": pl.Int64, "mean": pl.Float64, "median": pl.Float64}
    table = pl.DataFrame(rows, schema=schema, orient="row")
    return Chart("label-distributions", "Label distributions (per-message means)", table, fig)


def agreement_chart(d: ReportData) -> Chart:
    title = "Krippendorff's α per label (interval)"
    if d.agreement is None:
        return Chart("agreement", title, None, note=d.missing["agreement"])
    shown = d.agreement.drop_nulls("alpha")
    fig = go.Figure(layout={**LAYOUT, "yaxis_title": "α", "yaxis_range": [-0.2, 1]})
    fig.add_bar(name="α", x=shown["label"].to_list(), y=shown["alpha"].to_list())
    note = "Over messages with two or more annotators; 1 is full agreement, 0 what chance gives."
    return Chart("agreement", title, d.agreement, fig, note)


def trust_chart(d: ReportData) -> Chart:
    title = "Trust of annotators, with flagged users"
    if d.trust is None:
        return Chart("trust", title, None, note=d.missing["trust"])
    t = d.trust.with_columns(
        group=pl.when("marked")
        .then(pl.lit("marked spammer"))
        .when("suspected")
        .then(pl.lit("suspected"))
        .otherwise(pl.lit("others"))
    )
    fig = go.Figure(layout={**LAYOUT, "barmode": "stack", "xaxis_title": "trust", "yaxis_title": "annotators"})
    for group in ("others", "suspected", "marked spammer"):
        scores = t.filter(pl.col("group") == group)["score"].to_list()
        fig.add_histogram(name=group, x=scores, xbins={"start": 0, "end": 1.0001, "size": 1 / TRUST_BINS})
    flagged = t.filter(pl.col("marked") | pl.col("suspected")).select(
        "user", pl.col("score").round(3), "labels", "rankings", "suspected", "marked"
    )
    note = (
        f"{t.height} annotators with evidence; {t['marked'].sum()} marked spammers, "
        f"{t['suspected'].sum()} suspected by the trust policy. The table lists the flagged ones (pseudonyms)."
    )
    return Chart("trust", title, flagged, fig, note)


def activity_chart(d: ReportData) -> Chart:
    authors = "activity" in d.missing
    fig = go.Figure(layout={**LAYOUT, "barmode": "stack", "yaxis_title": "messages" if authors else "submissions"})
    who = d.activity["who"].to_list()
    if authors:
        fig.add_bar(name="messages", x=who, y=d.activity["submissions"].to_list())
    else:
        fig.add_bar(name="label submissions", x=who, y=d.activity["labels"].to_list())
        fig.add_bar(name="rankings", x=who, y=d.activity["rankings"].to_list())
    title = f"Most active {'authors' if authors else 'annotators'} (top {report_data.TOP_ANNOTATORS})"
    return Chart("activity", title, d.activity, fig, d.missing.get("activity", ""))


def charts(d: ReportData) -> list[Chart]:
    return [per_day_chart(d), funnel_chart(d), label_chart(d), agreement_chart(d), trust_chart(d), activity_chart(d)]


# --- the page -----------------------------------------------------------------------------------------------


def _table(key: str, frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{'' if v is None else html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.iter_rows()
    )
    return f'<table id="{key}-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(c: Chart) -> str:
    parts = [f'<section id="{c.key}-section"><h2>{html.escape(c.title)}</h2>']
    if c.figure is not None:
        parts.append(c.figure.to_html(full_html=False, include_plotlyjs=False, div_id=c.key))
    if c.note:
        parts.append(f'<p class="note">{html.escape(c.note)}</p>')
    if c.table is not None:
        parts.append(_table(c.key, c.table))
    return "\n".join(parts) + "</section>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 2em;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 8px}
th{background:#f4f4f4}.note{color:#555}"""


def render(d: ReportData, made_at: datetime | None = None) -> str:
    made_at = made_at or datetime.now(UTC)
    body = "\n".join(_section(c) for c in charts(d))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>oasst report: {html.escape(d.source)}</title>
<style>{STYLE}</style><script>{get_plotlyjs()}</script></head>
<body><h1>oasst report</h1><p>From {html.escape(d.source)}, made {made_at:%Y-%m-%d %H:%M} UTC.</p>
{body}
</body></html>
"""


def write_report(out: Path, database_url: str | None = None, snapshot_dir: Path | None = None) -> ReportData:
    """The report of the live tables at ``database_url``, or of the snapshot in ``snapshot_dir``."""
    d = report_data.snapshot(snapshot_dir) if snapshot_dir is not None else report_data.live(database_url)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # never a half-written page under the asked name
    try:
        partial.write_text(render(d), encoding="utf-8")
        partial.replace(out)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    return d
