"""The dataset as of a log position: trees in Open-Assistant's export format, with every
fact resolved under a policy and an exclusion set. Snapshots and ``oasst export`` both
read it; it is a pure function of (log prefix, policy, exclusions, selection).

Policies:
- ``oa`` (oa-v1): the tree manager's recorded decisions (review results, ranks) and
  unweighted label means — what Open-Assistant exported. Where an excluded user (a
  spammer marked after the position, with ``--exclusions latest``) voted, acceptance and
  ranks are re-decided without them, as the write side does when a spammer is marked.
- ``trust`` (trust-v1): acceptance, label means and ranks weighted by annotator trust.
- ``trust-v2``: acceptance from P(not spam | votes) under a two-coin Dawid–Skene model, ranks
  by ranked pairs weighted by each ranker's pair accuracy, label means weighted by trust
  (projections/trust_v2.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal
from uuid import UUID

from domain import events as ev
from domain.config import TreeConfig
from domain.rules import is_skip_marker
from infra.oasst_format import anonymise, node
from infra.store import EventStore
from projections import trust_v2
from projections.consensus import ConsensusView, SpammerRow
from projections.message_tree import MessageRow, MessageTreeView, emoji_counts
from projections.runner import gc_paused
from projections.trust import POLICY as TRUST_POLICY
from projections.trust import compute_trust

POLICIES = {"oa": "oa-v1", "trust": TRUST_POLICY, "trust-v2": trust_v2.VERSION}
Mode = Literal["exclude", "include", "only"]


def policy_versions(policy: str) -> tuple[str, ...]:
    """The versions of a policy that can still be computed (snapshots record one)."""
    return trust_v2.VERSIONS if policy == "trust-v2" else (POLICIES[policy],)


SPAM_TOPICS = ("user_marked_spammer", "user_unmarked_spammer")


@dataclass(frozen=True)
class Selection:
    """Which trees and messages, with Open-Assistant's exporter defaults: trees ready for
    export, no deleted messages, only accepted ones, no trees with synthetic messages."""

    states: tuple[str, ...] = ("ready_for_export",)  # () = any state
    langs: tuple[str, ...] = ()  # () = any language
    deleted: Mode = "exclude"
    spam: Mode = "exclude"  # "spam": messages not accepted by review (under the policy)
    synthetic: Mode = "exclude"  # trees containing synthetic messages
    user: str | None = None  # only this user's messages (flat)
    prompts_only: bool = False
    min_review_count: int = 0
    limit: int | None = None  # trees (or messages, when flat)

    @property
    def flat(self) -> bool:
        """One user's messages, or "only deleted/spam" messages, do not form trees."""
        return self.user is not None or "only" in (self.deleted, self.spam)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class LogState:
    """The views folded from the log up to ``position``, and who was a spammer then."""

    position: int
    tree: MessageTreeView
    consensus: ConsensusView
    spammers: frozenset

    @property
    def deleted_users(self) -> frozenset:
        return frozenset(u.id for u in self.tree.users.values() if u.deleted)


def fold_at(store: EventStore, position: int | None = None, page_size: int = 20_000) -> LogState:
    """Fold the message-tree and consensus views from the events at positions <= position
    (the whole log when None): the same code as the live views, so a dataset at P shows
    what the views showed at P."""
    end = store.max_position() if position is None else position
    tree, consensus = MessageTreeView(), ConsensusView()
    # most of the log is task traffic neither view reads: the database leaves it out
    wanted = sorted(tag for tag in ev.EVENT_TYPES if hasattr(tree, f"on_{tag}") or hasattr(consensus, f"on_{tag}"))
    after = 0
    with gc_paused():
        for page in store.pages(after, end, wanted, page_size):
            for n in page:
                event = ev.decode_summary(n.state)
                tree.apply(n.id, event)
                consensus.apply(n.id, event)
            after = page[-1].id
        # an erasure later in the log erases at P too: the keys are gone, and so must be the
        # text a moderator's edit (sealed with the moderator's key) gave an erased author's message
        while page := store.read_topics(after, store.max_position(), ["user_erased"], page_size):
            for n in page:
                tree.on_user_erased(ev.decode(n.state))
            after = page[-1].id
    tree.position = consensus.position = end
    return LogState(end, tree, consensus, frozenset(tree.spammers))


def latest_marks(store: EventStore, page_size: int = 50_000) -> tuple[frozenset, frozenset]:
    """(users marked spammers now, users deleted by now): only those events are read."""
    marked: set[UUID] = set()
    deleted: set[UUID] = set()
    after, end = 0, store.max_position()
    while page := store.read_topics(after, end, (*SPAM_TOPICS, "user_deleted"), page_size):
        for n in page:
            e = ev.decode(n.state)
            if isinstance(e, ev.UserDeleted):
                deleted.add(e.subject_id)
            else:
                (marked.add if isinstance(e, ev.UserMarkedSpammer) else marked.discard)(e.subject_id)
        after = page[-1].id
    return frozenset(marked), frozenset(deleted)


@dataclass
class Dataset:
    """Resolves each message's facts under the policy and exclusions, and walks trees."""

    state: LogState
    policy: str = "oa"
    exclusions: frozenset = frozenset()
    deleted_users: frozenset = frozenset()  # their user ids are left out (privacy)
    config: TreeConfig = field(default_factory=TreeConfig)
    anonymiser_seed: str | None = None
    with_labels: bool = True
    with_events: bool = False
    policy_version: str | None = None  # None: the policy's current version (an older one re-derives old snapshots)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r} (one of {sorted(POLICIES)})")
        self.policy_version = self.policy_version or POLICIES[self.policy]
        if self.policy_version not in policy_versions(self.policy):
            raise ValueError(f"unknown version {self.policy_version!r} of policy {self.policy!r}")
        view, consensus = self.state.tree, self.state.consensus
        # the exclusion set replaces the spammers as of the position, in both views
        view.spammers = set(self.exclusions)
        consensus.spammer_rows.rows = {u: SpammerRow() for u in self.exclusions}
        self.extra = self.exclusions - self.state.spammers  # excluded only since the position
        self.model = trust_v2.fit(consensus, self.policy_version) if self.policy == "trust-v2" else None
        self.weights = {u: t.score for u, t in compute_trust(consensus).items()} if self.policy == "trust" else None
        if self.model is not None:
            self.weights = self.model.weights
        self._ranks: dict[UUID, dict[UUID, int]] = {}
        self._accepted: dict[UUID, bool | None] = {}

    # --- facts under the policy ---------------------------------------------------

    def _needs_redecision(self, voters) -> bool:
        return self.policy != "oa" or any(u in self.extra for u in voters)

    def accepted(self, m: MessageRow) -> bool | None:
        """The review decision under the policy (asked several times per message: kept once)."""
        if m.id not in self._accepted:
            self._accepted[m.id] = self._decide_acceptance(m)
        return self._accepted[m.id]

    def _decide_acceptance(self, m: MessageRow) -> bool | None:
        facts = self.state.consensus.labels.get(m.id)
        if facts and facts.task_users and self._needs_redecision(facts.task_users):
            if self.model is not None:  # trust-v2: the posterior decides
                accepted = self.model.accepted(m.id)
                return m.review_result if accepted is None else accepted
            score = self.state.consensus.acceptance(m.id, trust=self.weights)
            if score is not None:
                return round(score, 6) > self.config.acceptance_threshold(m.parent_id is None)
        return m.review_result

    def rank(self, m: MessageRow) -> int | None:
        if m.parent_id is None:
            return None
        if m.parent_id not in self._ranks:
            self._ranks[m.parent_id] = self._decide_ranks(m.parent_id)
        ranks = self._ranks[m.parent_id]
        return ranks.get(m.id) if ranks else m.rank

    def _decide_ranks(self, parent_id: UUID) -> dict[UUID, int]:
        """{} keeps the recorded ranks; otherwise ranks re-decided among the kept replies."""
        facts = self.state.consensus.rankings.get(parent_id)
        if not facts or not self._needs_redecision(u for u, _ in facts.rankings):
            return {}
        if self.model is not None:
            order = self.model.ranking_consensus(parent_id)
        else:
            order = self.state.consensus.ranking_consensus(parent_id, trust=self.weights)
        live = [x for x in order if not self.state.tree.is_hidden(self.state.tree.messages[x])]
        return {x: i for i, x in enumerate(live)}

    def labels(self, m: MessageRow) -> dict[str, dict]:
        if m.imported_labels:
            return {k: {"value": v, "count": n} for k, (v, n) in sorted(m.imported_labels.items())}
        return self.state.consensus.label_aggregates(m.id, trust=self.weights)

    def user_ref(self, m: MessageRow) -> str | None:
        if m.user_id in self.deleted_users:
            return None
        return m.user_ref if m.user_ref is not None else (str(m.user_id) if m.user_id else None)

    def _voter(self, user: UUID) -> str | None:
        return None if user in self.deleted_users else anonymise("user", str(user), self.anonymiser_seed)

    def events(self, m: MessageRow) -> dict:
        out = {}
        emoji = [
            {"user_id": self._voter(u), "emoji": code}
            for code, users in sorted(m.emojis.items())
            if not is_skip_marker(code)
            for u in users
        ]
        facts = self.state.consensus.labels.get(m.id)
        rating = [
            {"user_id": self._voter(u), "labels": labels}
            for u, labels in (facts.by_user.items() if facts else ())
            if u not in self.exclusions
        ]
        ranks = self.state.consensus.rankings.get(m.id)
        ranking = [
            {"user_id": self._voter(u), "ranking": [anonymise("message", str(x), self.anonymiser_seed) for x in order]}
            for u, order in (ranks.rankings if ranks else ())
            if u not in self.exclusions
        ]
        for name, items in (("emoji", emoji), ("rating", rating), ("ranking", ranking)):
            if items:
                out[name] = items
        return out

    # --- selection ------------------------------------------------------------------

    def keeps(self, m: MessageRow, sel: Selection) -> bool:
        """May this message (and so its subtree) be in the dataset?"""
        if m.user_id in self.exclusions:
            return False
        if m.deleted and sel.deleted == "exclude":
            return False
        if sel.spam == "exclude" and self.accepted(m) is not True:
            return False
        return m.review_count >= sel.min_review_count

    def trees(self, sel: Selection) -> Iterator[tuple[object, list[MessageRow]]]:
        """(tree row, its kept messages parents first) for each selected tree, oldest first."""
        view = self.state.tree
        for t in sorted(view.trees.values(), key=lambda t: (t.created_date, str(t.id))):
            if (sel.states and t.state not in sel.states) or (sel.langs and t.lang not in sel.langs):
                continue
            root = view.messages[t.id]
            if not self.keeps(root, sel):
                continue
            kept, stack = [], [root]
            while stack:
                m = stack.pop()
                kept.append(m)
                if not sel.prompts_only:
                    stack.extend(c for c in (view.messages[x] for x in reversed(m.children)) if self.keeps(c, sel))
            synthetic = any(m.synthetic for m in kept)
            if (sel.synthetic == "exclude" and synthetic) or (sel.synthetic == "only" and not synthetic):
                continue
            yield t, kept

    def message_fields(self, m: MessageRow, tree_state: str | None = None) -> dict:
        seed = self.anonymiser_seed
        fields = {
            "message_id": anonymise("message", str(m.id), seed),
            "parent_id": anonymise("message", str(m.parent_id), seed) if m.parent_id else None,
            "user_id": anonymise("user", self.user_ref(m), seed),
            "created_date": m.created_date.isoformat(),
            "text": m.text,
            "role": m.role,
            "lang": m.lang,
            "review_count": m.review_count,
            "review_result": self.accepted(m),
            "deleted": m.deleted,
            "rank": self.rank(m),
            "synthetic": m.synthetic,
            "model_name": m.model_name,
            "emojis": emoji_counts(m),
            "labels": self.labels(m) if self.with_labels else None,
            "events": self.events(m) if self.with_events else None,
        }
        if tree_state is not None:
            fields["message_tree_id"] = anonymise("message", str(m.tree_id), seed)
            fields["tree_state"] = tree_state
        return fields

    def tree_item(self, t, kept: list[MessageRow]) -> dict:
        """One tree line: nested nodes, replies by rank (unranked last), then age."""
        ids = {m.id for m in kept}
        nodes = {m.id: node(self.message_fields(m)) for m in kept}
        for m in kept:
            children = [self.state.tree.messages[c] for c in m.children if c in ids]
            children.sort(key=lambda c: (self.rank(c) is None, self.rank(c) or 0, c.created_date, str(c.id)))
            if children:
                nodes[m.id]["replies"] = [nodes[c.id] for c in children]
        item = {
            "message_tree_id": anonymise("message", str(t.id), self.anonymiser_seed),
            "tree_state": t.state,
            "prompt": nodes[kept[0].id],
        }
        if t.origin:
            item["origin"] = t.origin
        return item

    def flat_messages(self, sel: Selection) -> Iterator[dict]:
        """Messages one by one (for a user's messages or "only" modes), oldest first."""
        view = self.state.tree
        wide = Selection(
            **{
                **asdict(sel),
                "deleted": "include" if sel.deleted != "exclude" else "exclude",
                "spam": "include" if sel.spam != "exclude" else "exclude",
                "user": None,
                "limit": None,
            }
        )
        for t, kept in self.trees(wide):
            for m in sorted(kept, key=lambda m: (m.created_date, str(m.id))):
                if sel.user is not None and sel.user not in (self.user_ref(m), str(m.user_id)):
                    continue
                if sel.deleted == "only" and not m.deleted:
                    continue
                if sel.spam == "only" and self.accepted(m) is True:
                    continue
                yield node(self.message_fields(m, tree_state=view.trees[t.id].state))

    def items(self, sel: Selection) -> Iterator[dict]:
        source = self.flat_messages(sel) if sel.flat else (self.tree_item(t, kept) for t, kept in self.trees(sel))
        for i, item in enumerate(source):
            if sel.limit is not None and i >= sel.limit:
                return
            yield item
