"""Annotator populations for trust benchmarks, driven through the real command service.

Written apart from the simulator's users (devkit/simulator.py), so the trust models are
tried on behaviours they were not tuned with. Writers write prompts and replies, a share
``spam_share`` of them junk (its truth planted); annotators ask for review and ranking
tasks and the service's own task assignment decides which message each one sees. Kinds:

- ``honest``: votes the truth, wrong with probability ``honest_error``; ranks by the true
  quality blurred so that about that share of the pairs it ranks are the wrong way round;
- ``yes_sayer``: lazy: never says spam, ranks the replies in the order shown;
- ``flipper``: votes the opposite of what it sees, ranks upside down;
- ``random_ranker``: honest labels, rankings shuffled;
- ``colluder``: a group that works at the same time and votes together: one shared coin per
  message (ignoring it), one shared shuffle per ranked parent, so two colluders on a message
  always agree.

Each tick every active user's request, then ack, then answer are decided in a fixed order
(coroutines created in order, each deciding before its first await), so a seed gives the
same log; the group committer gets each phase as one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

import msgspec

from command_api.service import CommandService
from devkit.simulator import START
from domain import events as ev
from domain import protocol as p
from domain.config import TreeConfig
from domain.errors import OasstError
from domain.model import user_id_for
from infra.settings import Settings
from infra.store import EventStore

API_KEY = "annotators-key"
BAD_KINDS = ("yes_sayer", "flipper", "random_ranker", "colluder")
LABEL_TASKS = ("label_initial_prompt", "label_assistant_reply", "label_prompter_reply")


@dataclass(frozen=True)
class Population:
    name: str
    annotators: int = 60
    bad_share: float = 0.3
    kinds: tuple[str, ...] = BAD_KINDS  # the bad annotators, split evenly among these
    honest_error: float = 0.05
    labels_per_user: int = 15
    rankings_per_user: int | None = None  # default: a sixth of the labels, at least 3
    spam_share: float = 0.3
    seed: int = 1

    @property
    def ranking_budget(self) -> int:
        return self.rankings_per_user or max(3, self.labels_per_user // 6)


def tree_config(annotators: int) -> TreeConfig:
    """Prompt + four assistant replies per tree, three reviews per message, three rankings (OA's
    default) of the replies."""
    return TreeConfig(
        max_active_trees=max(20, annotators // 2),
        max_initial_prompt_review=1000,
        num_reviews_initial_prompt=3,
        num_reviews_reply=3,
        goal_tree_size=5,
        max_children_count=4,
        max_tree_depth=1,
        num_required_rankings=3,
        p_full_labeling_review_reply_prompter=1.0,
        max_pending_tasks_per_user=1000,
    )


@dataclass(eq=False)
class User:
    name: str
    kind: str  # "writer" or an annotator kind
    labels_left: int = 0
    rankings_left: int = 0
    user_id: UUID | None = None
    task: dict | None = None
    frontend_id: str | None = None
    failed: bool = False  # the last request found no such task

    def ref(self) -> p.User:
        return p.User(id=self.name, display_name=self.name, auth_method="local")


@dataclass
class Truth:
    behaviour_of: dict[UUID, str] = field(default_factory=dict)
    spam: dict[UUID, bool] = field(default_factory=dict)
    quality: dict[UUID, float] = field(default_factory=dict)


class Crowd:
    def __init__(self, service: CommandService, client, pop: Population):
        self.service, self.client, self.pop = service, client, pop
        self.rng = random.Random(f"annotators:{pop.seed}")
        self.truth = Truth()
        self.users = self._make_users()
        self.serial = 0

    def _make_users(self) -> list[User]:
        pop, rng = self.pop, self.rng
        n_bad = round(pop.annotators * pop.bad_share)
        kinds = [pop.kinds[i % len(pop.kinds)] for i in range(n_bad)] + ["honest"] * (pop.annotators - n_bad)
        rng.shuffle(kinds)
        users = [User(f"a{i:04d}", k, pop.labels_per_user, pop.ranking_budget) for i, k in enumerate(kinds)]
        users += [User(f"w{i:04d}", "writer") for i in range(max(4, pop.annotators // 2))]
        for u in users:
            u.user_id = user_id_for(self.client.id, "local", u.name)
            if u.kind != "writer":
                self.truth.behaviour_of[u.user_id] = u.kind
        return users

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, max_ticks: int = 20_000) -> None:
        """Annotators come a few at a time (a crowd's steady state: trees in every stage, so
        late-stage ranking tasks are there for them as well as reviews)."""
        waiting = [u for u in self.users if u.kind != "writer"]
        group = [u for u in waiting if u.kind == "colluder"]
        if group:  # a colluding group works together: all join when the first of them does
            first, rest = waiting.index(group[0]), [u for u in waiting if u.kind != "colluder"]
            waiting = rest[:first] + group + rest[first:]
        writers = [u for u in self.users if u.kind == "writer"]
        pool = max(12, len(waiting) // 4)
        active: list[User] = []
        idle = 0
        for _ in range(max_ticks):
            active = [u for u in active if self._wants_work(u)]
            while waiting and len(active) < pool:
                active.append(waiting.pop(0))
            if not active or idle > 60:
                return
            done = await self._tick(writers[: max(4, len(active) // 2)] + active)
            idle = 0 if done else idle + 1

    async def _phase(self, calls: list) -> list:
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0)  # each decided in order before any commit completes
        return await asyncio.gather(*tasks, return_exceptions=True)

    async def _tick(self, active: list[User]) -> int:
        asking = [(u, self._task_type(u)) for u in active]
        asking = [(u, t) for u, t in asking if t]
        results = await self._phase([self.service.request_task(self.client, self._request(u, t)) for u, t in asking])
        got = [u for (u, _), r in zip(asking, results, strict=True) if self._take(u, r)]
        results = await self._phase([self._ack(u) for u in got])
        acked = [u for u, r in zip(got, results, strict=True) if not isinstance(r, BaseException)]
        answers = [(u, self._answer(u)) for u in acked]
        results = await self._phase([c for _, (c, _) in answers])
        done = 0
        for (u, (_, after)), r in zip(answers, results, strict=True):
            if not isinstance(r, BaseException):
                after(r)
                done += 1
            u.task = None
        self._raise_unexpected(results)
        return done

    def _raise_unexpected(self, results: list) -> None:
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, OasstError):
                raise r

    def _request(self, u: User, kind: str) -> p.TaskRequest:
        return p.TaskRequest(user=u.ref(), type=kind, lang="en")

    def _take(self, u: User, result) -> bool:
        if isinstance(result, BaseException):
            self._raise_unexpected([result])
            u.failed = True
            return False
        u.task = msgspec.json.decode(result.body)
        return True

    def _ack(self, u: User):
        self.serial += 1
        u.frontend_id = f"fe-{self.serial}"
        return self.service.ack(self.client, u.task["id"], p.TaskAck(message_id=u.frontend_id))

    def _task_type(self, u: User) -> str | None:
        rng = self.rng
        if u.kind == "writer":
            return self._writer_task(u)
        if u.rankings_left > 0 and not u.failed and (u.labels_left <= 0 or rng.random() < 0.8):
            return "rank_assistant_replies"
        u.failed = False
        return rng.choice(LABEL_TASKS) if self._wants_work(u) else None

    def _wants_work(self, u: User) -> bool:
        """Labels left, or rankings owed: then they keep the trees moving with up to half as many labels again."""
        return u.labels_left > 0 or (u.rankings_left > 0 and u.labels_left > -self.pop.labels_per_user // 2)

    def _writer_task(self, u: User) -> str | None:
        """Replies where trees can take them; a new prompt only while few are in review."""
        by_state = self.service.model.trees_by_state
        if self.rng.random() < 0.6:
            return None
        if not u.failed:
            return "assistant_reply"
        u.failed = False
        in_review = len(by_state.get("initial_prompt_review", ()))
        return "initial_prompt" if in_review < max(3, self.pop.annotators // 6) else None

    # --- answers ------------------------------------------------------------------------------

    def _answer(self, u: User):
        kind = u.task["type"]
        if kind in ("initial_prompt", "assistant_reply", "prompter_reply"):
            return self._write(u)
        if kind.startswith("label_"):
            return self._label(u)
        return self._rank(u)

    def _write(self, u: User):
        spam = self.rng.random() < self.pop.spam_share * (0.5 if u.task["type"] == "initial_prompt" else 1.0)
        quality = round(self.rng.uniform(0.0, 0.15) if spam else self.rng.uniform(0.3, 1.0), 4)
        self.serial += 1
        text = f"junk {self.rng.getrandbits(48):x}" if spam else f"a thoughtful text number {self.serial}"
        umid = f"um-{self.serial}"
        body = p.TextReplyToMessage(user=u.ref(), message_id=u.frontend_id, user_message_id=umid, text=text, lang="en")

        def after(_res) -> None:
            mid = self.service.model.messages_by_frontend_id[(self.client.id, umid)]
            self.truth.spam[mid], self.truth.quality[mid] = spam, quality

        return self.service.interaction(self.client, body), after

    def _label(self, u: User):
        task = u.task
        mid = UUID(task["message_id"])
        labels = {"spam": float(self._spam_vote(u, mid)), "lang_mismatch": 0.0}
        if "quality" in task["valid_labels"]:
            labels["quality"] = round(self.truth.quality.get(mid, 0.5) * 4) / 4
        body = p.TextLabels(user=u.ref(), text="", labels=labels, message_id=task["message_id"], task_id=task["id"])

        def after(_res) -> None:
            u.labels_left -= 1

        return self.service.interaction(self.client, body), after

    def _spam_vote(self, u: User, mid: UUID) -> bool:
        truth = self.truth.spam.get(mid, False)
        seen = truth != (self.rng.random() < self.pop.honest_error)
        if u.kind == "yes_sayer":
            return False
        if u.kind == "flipper":
            return not seen
        if u.kind == "colluder":
            return self._shared(f"vote:{mid}").random() < 0.5
        return seen

    def _shared(self, key: str) -> random.Random:
        """The colluders' common coin for ``key``."""
        return random.Random(hashlib.sha256(f"{self.pop.seed}:{key}".encode()).hexdigest())

    def _rank(self, u: User):
        ids = [UUID(m["id"]) for m in u.task["reply_messages"]]
        order = self._order(u, ids)
        body = p.MessageRanking(user=u.ref(), message_id=u.frontend_id, ranking=order, not_rankable=False)

        def after(_res) -> None:
            u.rankings_left -= 1

        return self.service.interaction(self.client, body), after

    def _order(self, u: User, ids: list[UUID]) -> list[int]:
        shown = list(range(len(ids)))
        # what an honest eye sees: the quality blurred so that about ``honest_error`` of the pairs swap
        # (qualities of kept replies spread over [0.3, 1]: a pair errs with ~1.14 * noise * sqrt(2))
        seen = [self.truth.quality.get(x, 0.5) + self.rng.gauss(0, 0.62 * self.pop.honest_error) for x in ids]
        honest = sorted(shown, key=lambda i: (-seen[i], i))
        if u.kind == "flipper":
            return honest[::-1]
        if u.kind == "yes_sayer":
            return shown
        if u.kind in ("random_ranker", "colluder"):
            rng = self._shared(f"rank:{sorted(map(str, ids))}") if u.kind == "colluder" else self.rng
            rng.shuffle(shown)
            return shown
        return honest


async def generate_async(url: str, pop: Population) -> Truth:
    """Drive ``pop`` through a command service on the empty store at ``url``; the planted truth."""
    store = EventStore(url)
    clock_rng = random.Random(f"annotators:{pop.seed}:clock")
    now = [START]

    def clock():
        now[0] += timedelta(milliseconds=clock_rng.randint(200, 1800))
        return now[0]

    settings = Settings(
        database_url=url, bootstrap_api_key=API_KEY, tree=tree_config(pop.annotators), rate_limits=False
    )
    ev.seed_ids(pop.seed)  # the same ids, so the same task assignment, run after run
    service = CommandService(settings, store, clock=clock)
    try:
        await service.start()
        crowd = Crowd(service, service.client_for_key(API_KEY), pop)
        await crowd.run()
        return crowd.truth
    finally:
        await service.stop()
        store.close()


def generate(url: str, pop: Population) -> Truth:
    return asyncio.run(generate_async(url, pop))
