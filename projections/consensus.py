"""The consensus view: per-annotator facts, with aggregates derived when asked (the
rules themselves, shared with the tree manager, are in domain.rules)."""

from __future__ import annotations

from uuid import UUID

import msgspec

from domain import events as ev
from domain.rules import acceptance_score, ranked_pairs  # noqa: F401 - re-exported
from projections.base import View

DEFAULT_TRUST = 0.5  # the weight of a user the trust policy knows nothing about


class LabelFacts(msgspec.Struct, kw_only=True):
    """Who labelled a message how (each user's latest labels), and reports."""

    by_user: dict[UUID, dict[str, float]] = {}
    task_users: list[UUID] = []  # users whose labels came from a review task
    reports: int = 0
    # each reviewer's latest *review-task* labels: what the acceptance decision used
    # (a later free label by the same user changes by_user, not the review)
    task_labels: dict[UUID, dict[str, float]] = {}


class SpammerRow(msgspec.Struct, array_like=True):
    marked: bool = True


class _SpammerSet:
    """Users marked spammers, stored as rows of the view (so a restore knows them)."""

    def __init__(self, table) -> None:
        self.table = table

    def add(self, user: UUID) -> None:
        self.table.put(user, SpammerRow())

    def discard(self, user: UUID) -> None:
        self.table.delete(user)

    def __contains__(self, user: UUID) -> bool:
        return user in self.table

    def frozen(self) -> frozenset:
        return frozenset(self.table.rows)


class RankingFacts(msgspec.Struct, kw_only=True):
    rankings: list[tuple[UUID, list[UUID]]] = []  # (ranker, replies best first)


class ConsensusView(View):
    """Per-annotator facts; aggregates are computed from them when asked, so excluding
    a user or weighting by trust is a recompute, not an undo of counters.
    Policy ``oa``: Open-Assistant's unweighted rules (v2: review labels kept apart from
    later free labels, so the acceptance is the one the tree manager decided on)."""

    name = "consensus"
    version = "v3"  # v3: users marked spammers are left out
    key_types = {"labels": UUID, "rankings": UUID, "spammers": UUID}

    def __init__(self) -> None:
        super().__init__()
        self.labels = self.table("labels", LabelFacts)
        self.rankings = self.table("rankings", RankingFacts)
        self.spammer_rows = self.table("spammers", SpammerRow)
        self.spammers = _SpammerSet(self.spammer_rows)

    def on_labels_submitted(self, e: ev.LabelsSubmitted) -> None:
        facts = self.labels.get(e.message_id) or self.labels.put(e.message_id, LabelFacts())
        if e.kind == "report":
            facts.reports += 1
        else:
            facts.by_user = {**facts.by_user, e.user_id: e.labels}
            if e.kind == "task":
                facts.task_labels = {**facts.task_labels, e.user_id: e.labels}
                if e.user_id not in facts.task_users:
                    facts.task_users = [*facts.task_users, e.user_id]
        self.labels.touch(e.message_id)

    def on_user_marked_spammer(self, e: ev.UserMarkedSpammer) -> None:
        self.spammers.add(e.subject_id)

    def on_user_unmarked_spammer(self, e: ev.UserUnmarkedSpammer) -> None:
        self.spammers.discard(e.subject_id)

    def on_ranking_submitted(self, e: ev.RankingSubmitted) -> None:
        facts = self.rankings.get(e.parent_id) or self.rankings.put(e.parent_id, RankingFacts())
        facts.rankings = [*facts.rankings, (e.user_id, list(e.ranked_message_ids))]
        self.rankings.touch(e.parent_id)

    # --- aggregates ----------------------------------------------------------------

    # Every aggregate leaves out users marked spammers, and the ones in ``exclude``;
    # ``trust`` (user -> weight in [0, 1]) switches from OA's equal votes to the trust policy.

    def _out(self, exclude: frozenset):
        """Who is left out: the spammers (their rows, as they are: asked once per message, a copy
        per call cost a snapshot at OA's size a second) and ``exclude``."""
        return exclude | self.spammers.frozen() if exclude else self.spammer_rows.rows

    def label_aggregates(
        self, message_id: UUID, exclude: frozenset = frozenset(), trust: dict[UUID, float] | None = None
    ) -> dict[str, dict]:
        """{label: {value: (weighted) mean, count}} over every user's labels (not reports)."""
        facts = self.labels.get(message_id)
        if facts is None:
            return {}
        out = self._out(exclude)
        if trust is None:
            return _plain_means(facts.by_user, out)
        sums: dict[str, list] = {}  # name -> [sum of value * weight, sum of weights, count], added in order
        for user, labels in facts.by_user.items():
            if user in out:
                continue
            w = 1.0 if trust is None else trust.get(user, DEFAULT_TRUST)
            for name, value in labels.items():
                acc = sums.get(name)
                if acc is None:
                    sums[name] = [value * w, w, 1]
                else:
                    acc[0] += value * w
                    acc[1] += w
                    acc[2] += 1
        return {name: {"value": vw / (w or 1.0), "count": n} for name, (vw, w, n) in sorted(sums.items())}

    def acceptance(
        self, message_id: UUID, exclude: frozenset = frozenset(), trust: dict[UUID, float] | None = None
    ) -> float | None:
        """OA's score over the review-task labels (trust-weighted with ``trust``), None without any."""
        facts = self.labels.get(message_id)
        if facts is None:
            return None
        out = self._out(exclude)
        users = [u for u in facts.task_users if u not in out]
        if not users:
            return None
        weights = None if trust is None else [trust.get(u, DEFAULT_TRUST) for u in users]
        if weights is not None and sum(weights) <= 0:
            weights = None  # nobody trusted at all: fall back to equal votes
        return acceptance_score([facts.task_labels[u] for u in users], weights)

    def ranking_consensus(
        self, parent_id: UUID, exclude: frozenset = frozenset(), trust: dict[UUID, float] | None = None
    ) -> list[UUID]:
        facts = self.rankings.get(parent_id)
        if facts is None:
            return []
        out = self._out(exclude)
        kept = [(u, order) for u, order in facts.rankings if u not in out]
        weights = None if trust is None else [trust.get(u, DEFAULT_TRUST) for u, _ in kept]
        if weights is not None and sum(weights) <= 0:
            weights = None
        return ranked_pairs([order for _, order in kept], weights)

    def agreement(self, label: str, max_units: int = 20_000) -> dict:
        """Krippendorff's alpha of one label over messages with at least two annotators
        (interval metric; ``None`` when there is too little data)."""
        import krippendorff
        import numpy as np

        units = [f for f in self.labels.values() if sum(label in lab for lab in f.by_user.values()) >= 2]
        units = units[:max_units]
        annotators = sorted({u for f in units for u, lab in f.by_user.items() if label in lab}, key=str)
        if len(units) < 2 or len(annotators) < 2:
            return {"label": label, "alpha": None, "units": len(units), "annotators": len(annotators)}
        column = {u: i for i, u in enumerate(annotators)}
        data = np.full((len(annotators), len(units)), np.nan)
        for j, f in enumerate(units):
            for u, lab in f.by_user.items():
                if label in lab:
                    data[column[u], j] = lab[label]
        if len(np.unique(data[~np.isnan(data)])) < 2:  # one value only: alpha is 0/0 (the package raises)
            return {"label": label, "alpha": None, "units": len(units), "annotators": len(annotators)}
        alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
        return {"label": label, "alpha": float(alpha), "units": len(units), "annotators": len(annotators)}


def _plain_means(by_user: dict[UUID, dict[str, float]], out) -> dict[str, dict]:
    """label_aggregates() with equal votes: the same sums in the same order (so the same floats),
    without a weight per vote."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for user, labels in by_user.items():
        if user in out:
            continue
        for name, value in labels.items():
            if name in counts:
                sums[name] += value
                counts[name] += 1
            else:
                sums[name] = value
                counts[name] = 1
    return {name: {"value": sums[name] / counts[name], "count": counts[name]} for name in sorted(counts)}
