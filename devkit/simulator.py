"""Synthetic histories through the domain rules: ``oasst seed``.

Simulated users and a moderator drive an in-process ``CommandService`` through the very
methods the HTTP routes call (request a task, ack, answer it, skip it, react, report,
halt trees, delete messages, mark spammers), so every event in the generated log was
decided by the real command side and its tree manager, and the log replays like any
other.

Users have behaviours (diligent, lazy, spammer, random ranker, troll); every message
they write gets a hidden *true quality* from its author's behaviour (spammers write
junk), honest labellers and rankers follow that truth, the others do not. The planted
truth comes back in the summary (``summary["truth"]``) for benchmarks of spam and
trust detection.

Deterministic: the same seed and arguments give the same log, byte for byte (same ids,
timestamps and order). The service decides each command synchronously before its first
``await`` (the group commit), so the generator runs in *ticks*: it picks one command per
active user in a fixed order, creates their coroutines in that order, lets each run up
to its commit (``asyncio.sleep(0)``), and only then awaits them all. The log order is
the decision order, whatever the commit timing; the group committer still gets a whole
tick per transaction. With ``lanes`` > 1 the users are split into groups whose ticks
alternate, so one group's commit overlaps the next group's decisions (still in a fixed
order). Time is a simulated clock that advances a little with every command.

The moderator halts trees in review or growing that nobody can take further (no message
can take a reply, and every message awaiting review is hidden or has all the reviews it
can get), as a moderator cleaning up would: such a tree would hold a ``max_active_trees``
or ``max_initial_prompt_review`` slot for ever and, over a long run, could stop the lottery
or the supply of prompt tasks. (``stuck_trees_halted`` in the summary counts them; the
command side used to make many, by counting rejected replies against
``max_children_count`` and spammers' labels as reviews.)
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import heapq
import itertools
import json
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Optional
from uuid import UUID

import msgspec

from command_api.service import CommandService
from domain import events as ev
from domain import protocol as p
from domain.config import TreeConfig
from domain.errors import ErrorCode, OasstError
from domain.model import TERMINAL_STATES, WriteModel, user_id_for
from domain.rules import is_skip_marker
from infra.checkpoints import Checkpoints
from infra.settings import Settings
from infra.store import EventStore, Pending

__all__ = [
    "DEFAULT_BEHAVIOURS",
    "PROFILES",
    "SeedParams",
    "seed_command",
    "seed_history",
    "seed_history_async",
    "seed_tree_config",
]

START = datetime(2023, 2, 1, tzinfo=UTC)  # Open-Assistant's data collection began in early 2023
DEFAULT_API_KEY = "oasst-seed-key"
DEFAULT_BEHAVIOURS = {"diligent": 0.70, "lazy": 0.10, "spammer": 0.10, "random_ranker": 0.05, "troll": 0.05}
# 250 real English prompts from Open-Assistant's prompt lottery (its repository, Apache-2.0)
PROMPTS_FILE = Path(__file__).resolve().parent / "prompt_lottery_en_250_text.jsonl"
JUNK_BELOW = 0.2  # true quality under which a text is junk (honest labellers say spam)

# --- behaviours -------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How a kind of user behaves; probabilities are per step unless said otherwise."""

    quality: tuple[float, float]  # true quality of what they write: mean, sd (clipped to [0, 1])
    session: float  # mean completed tasks per visit
    activity: float  # how often they come back, relative
    prompt_bias: float  # relative eagerness to write initial prompts
    skip: float  # nack a task as soon as it arrives
    abandon: float  # walk away from an assigned task (it expires later)
    skip_acked: float  # nack a task after acking it
    react: float  # react with an emoji to something seen (instead of asking for a task)
    report: float  # report something seen
    free_label: float  # label something seen without a task
    specific: float  # ask for a specific task type instead of "random"


PROFILES: dict[str, Profile] = {
    "diligent": Profile((0.75, 0.12), 14, 1.0, 1.0, 0.03, 0.01, 0.02, 0.10, 0.04, 0.03, 0.10),
    "lazy": Profile((0.50, 0.15), 4, 0.5, 0.5, 0.30, 0.06, 0.15, 0.04, 0.0, 0.0, 0.05),
    "spammer": Profile((0.06, 0.05), 10, 1.0, 4.0, 0.05, 0.01, 0.02, 0.15, 0.0, 0.0, 0.10),
    "random_ranker": Profile((0.70, 0.12), 10, 1.0, 1.0, 0.05, 0.005, 0.03, 0.06, 0.0, 0.0, 0.40),
    "troll": Profile((0.30, 0.12), 6, 0.8, 2.0, 0.10, 0.01, 0.05, 0.30, 0.08, 0.0, 0.05),
}


@dataclass(frozen=True)
class SeedParams:
    """Knobs of the simulation (the tree rules are the TreeConfig's)."""

    behaviours: tuple[tuple[str, float], ...] = tuple(DEFAULT_BEHAVIOURS.items())
    concurrency: int = 48  # users active at once (more users take turns in sessions)
    lanes: int = 2  # groups of active users whose ticks alternate (commit overlaps decisions)
    seconds_per_command: float = 2.0  # mean simulated time between two commands
    task_expire_minutes: int = 10  # simulated time compresses a crowd's day: abandoned tasks do expire
    prompt_rate: float = 0.3  # chance an idle user writes a prompt when more are wanted (x prompt_bias)
    prompt_backlog: int | None = None  # prompts kept in review + lottery (default: max_active_trees / 2)
    finish_fraction: float = 0.8  # after the last prompt, run until this share of trees is terminal...
    drain_factor: float = 20.0  # ...or for at most this many times the ticks spent so far
    stall_ticks: int = 100  # stop when nothing completes for this many ticks
    max_ticks: int | None = None  # stop here whatever happens (default: 100 per tree asked for + 10,000)
    mod_every: int = 4  # the moderator acts every this many ticks
    halt_share: float = 0.03  # share of trees a moderator halts (at least 2 when trees >= 10)
    resume_share: float = 0.25  # share of those halts later undone
    mod_mistake: float = 0.2  # chance a moderator deletes a flagged good message (undeleted later)
    spammer_rejections: int = 4  # rejected messages before a moderator marks the author a spammer
    halt_stuck: bool = True  # a moderator halts growing trees that cannot grow any more (module doc)
    start: datetime = START


def seed_tree_config(concurrency: int = 48) -> TreeConfig:
    """Small trees for generation speed, many trees in flight, no pending-task cap."""
    return TreeConfig(
        max_active_trees=max(10, concurrency),
        max_initial_prompt_review=1000,
        num_reviews_initial_prompt=3,
        num_reviews_reply=2,
        goal_tree_size=8,
        random_goal_tree_size=True,
        min_goal_tree_size=5,
        num_required_rankings=2,
        max_pending_tasks_per_user=1000,
    )


def oa_scale() -> tuple[int, int, TreeConfig, SeedParams]:
    """Open-Assistant's size (oasst1: 66k trees, 161k messages, 461k label sets; ~5M
    events with tasks and reactions): OA's tree rules, prompts arriving faster than
    trees grow (most prompts wait in the lottery, as in OA), 13.5k contributors."""
    cfg = TreeConfig(
        max_active_trees=100,
        max_prompt_lottery_waiting=1_000_000,
        random_goal_tree_size=True,
        min_goal_tree_size=5,
        goal_tree_size=12,
        max_pending_tasks_per_user=1000,
    )
    params = SeedParams(
        concurrency=64,
        seconds_per_command=2.0,
        task_expire_minutes=2880,
        prompt_rate=0.08,
        prompt_backlog=1_000_000,
        finish_fraction=1.0,
        drain_factor=0.05,
    )
    return 66_000, 13_500, cfg, params


# --- text -------------------------------------------------------------------------------

_FALLBACK_PROMPTS = [
    "How do I make a good cup of coffee?",
    "What is the difference between a virus and a bacterium?",
    "Can you explain how a transistor works?",
    "Write a short poem about autumn.",
    "What are some tips for learning a new language?",
    "Why is the sky blue?",
    "How does compound interest work?",
    "What should I consider when buying a used car?",
]
_PROMPT_PREFIX = ["", "", "", "Hi! ", "Quick question: ", "Hello, ", "I was wondering: ", "Please help. "]
_PROMPT_SUFFIX = [
    "",
    "",
    "",
    " Thanks!",
    " Please keep it short.",
    " Explain it like I'm five.",
    " Give me an example.",
    " I need this for school.",
]
_OPENERS = [
    "Sure!",
    "Good question.",
    "Here is a short answer.",
    "Let me explain.",
    "Of course.",
    "There are a few things to consider.",
    "Happy to help.",
    "In short:",
]
_SENTENCES = [
    "The key idea is to start from the basics and build up step by step.",
    "Most experts agree that context matters a lot here.",
    "A common mistake is to skip the preparation and rush the result.",
    "It helps to compare a few options before deciding.",
    "One practical example is to try it on a small scale first.",
    "The underlying reason has to do with how the parts interact.",
    "Historically, this developed over a long period of time.",
    "If you want to go further, a good book or course on the topic is worth it.",
    "Keep in mind that there are trade-offs between speed and quality.",
    "You can check the result by testing it against a simple case.",
    "Safety should always come first, so read the instructions carefully.",
    "The numbers vary, but the overall trend is clear.",
    "Another way to see it is as a balance between two forces.",
    "Practice regularly and the improvement comes quickly.",
]
_CLOSERS = [
    "I hope this helps!",
    "Let me know if you have more questions.",
    "In summary, take it one step at a time.",
    "Good luck!",
    "",
]
_FOLLOW_UPS = [
    "Thanks! Can you give me an example?",
    "Could you explain that in simpler terms?",
    "Why is that the case?",
    "What would you recommend for a beginner?",
    "Can you elaborate on the second point?",
    "Interesting. Are there any downsides?",
    "How long does that usually take?",
    "Is there a cheaper way?",
    "That makes sense. What should I do next?",
    "Could you summarize that in one sentence?",
]
_TROLL = [
    "This is a dumb question.",
    "Google it yourself.",
    "Nobody cares about this.",
    "Whatever, this is pointless.",
    "Lol, you really don't know that?",
    "Ask someone who cares.",
    "Wrong, and you know it.",
]
_JUNK = ["asdf", "lol", "ok", "....", "test test test", "k", "hmm", "no", "???", "xD"]
_SPAM_LINKS = ["Buy cheap followers now!!! ", "Click here for free crypto: ", "Best casino bonus at "]
_NAMES = [
    "alex",
    "sam",
    "kim",
    "jo",
    "lee",
    "max",
    "ana",
    "ben",
    "eva",
    "li",
    "noa",
    "omar",
    "ivy",
    "raj",
    "mia",
    "yuki",
    "tom",
    "zoe",
    "luca",
    "nina",
    "owen",
    "pia",
    "ravi",
    "sara",
]


def _load_prompts() -> list[str]:
    try:
        lines = PROMPTS_FILE.read_text(encoding="utf-8").splitlines()
        prompts = [json.loads(line) for line in lines if line.strip()]
        prompts = [x.strip()[:1800] for x in prompts if isinstance(x, str) and x.strip()]
        return prompts or _FALLBACK_PROMPTS
    except (OSError, ValueError):
        return _FALLBACK_PROMPTS


def _junk(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return rng.choice(_JUNK) + ("!" * rng.randint(0, 3))
    if r < 0.7:
        return "".join(rng.choice("asdfghjklqwertzuiop ") for _ in range(rng.randint(4, 24))).strip() or "asdf"
    return rng.choice(_SPAM_LINKS) + f"http://spam{rng.randint(1, 999)}.example/{rng.randint(1, 99999)}"


def compose_text(kind: str, quality: float, rng: random.Random, prompts: list[str]) -> str:
    """Text of a message of ``kind`` (initial_prompt, assistant_reply, prompter_reply)
    whose true quality is ``quality``: junk below JUNK_BELOW, rude when low, longer and
    more structured when high."""
    if quality < JUNK_BELOW:
        return _junk(rng)
    if quality < 0.4 and rng.random() < 0.7:
        return rng.choice(_TROLL) + ("" if rng.random() < 0.5 else " " + rng.choice(_TROLL))
    if kind == "initial_prompt":
        return rng.choice(_PROMPT_PREFIX) + rng.choice(prompts) + rng.choice(_PROMPT_SUFFIX)
    if kind == "prompter_reply":
        extra = "" if quality < 0.6 else " " + rng.choice(_SENTENCES)
        return rng.choice(_FOLLOW_UPS) + extra
    n = 1 + int(quality * 5) + rng.randint(0, 1)
    body = " ".join(rng.sample(_SENTENCES, min(n, len(_SENTENCES))))
    closer = rng.choice(_CLOSERS) if quality > 0.6 else ""
    return " ".join(x for x in (rng.choice(_OPENERS), body, closer) if x)


def _likert(x: float) -> float:
    return round(min(1.0, max(0.0, x)) * 4) / 4


# --- the simulation ---------------------------------------------------------------------


@dataclass(eq=False)
class Actor:
    index: int
    username: str
    display_name: str
    auth_method: str
    behaviour: str
    profile: Profile
    weight: float
    user_id: UUID | None = None  # the id the service derives for this frontend user
    registered: bool = False
    in_slot: bool = False
    banned: bool = False
    marked: bool = False  # the moderator dealt with this user (marked as a spammer)
    task: dict | None = None
    acked_as: str | None = None
    must_skip: bool = False  # skip the current task at the next step
    prompt_admitted: bool = False  # the current task is an initial prompt counted towards the trees asked for
    session_left: int = 0
    misses: int = 0
    requests: int = 0
    rename_at: int = 0  # the request at which the user changes their display name (0: never)
    last_emoji: tuple[UUID, str] | None = None
    seen: deque = field(default_factory=lambda: deque(maxlen=12))
    authored: list[UUID] = field(default_factory=list)

    def ref(self) -> p.User:
        return p.User(id=self.username, display_name=self.display_name, auth_method=self.auth_method)


Handler = Callable[[Any], None]
Command = tuple[Any, Handler]  # (coroutine, what to do with its Result or OasstError)


class _CountingStore(EventStore):
    """The event store, counting what it appends (for the summary)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.counts: Counter[str] = Counter()
        self.label_kinds: Counter[str] = Counter()
        self.emojis: Counter[str] = Counter()

    def append(self, pending: list[Pending]) -> list[int]:
        positions = super().append(pending)
        for item in pending:
            for _, _, event in item.events:
                self.counts[ev.topic(event)] += 1
                if isinstance(event, ev.LabelsSubmitted):
                    self.label_kinds[event.kind] += 1
                elif isinstance(event, ev.EmojiAdded):
                    self.emojis[event.emoji] += 1
        return positions


class Simulation:
    def __init__(
        self,
        service: CommandService,
        client,
        *,
        trees: int,
        users: int,
        seed: int,
        params: SeedParams,
        progress: Callable[[int, int], None] | None,
    ):
        self.service, self.client, self.params, self.progress = service, client, params, progress
        self.cfg = service.settings.tree
        self.trees = trees
        self.rng = random.Random(f"oasst-seed:{seed}:sim")
        self.prompts = _load_prompts()
        self.actors = self._make_actors(users, random.Random(f"oasst-seed:{seed}:users"))
        for a in self.actors:
            a.user_id = user_id_for(client.id, a.auth_method, a.username)
        self.cum_weights = list(itertools.accumulate(a.weight for a in self.actors))
        self.slots: list[Actor | None] = [None] * max(1, min(params.concurrency, users))
        self.lanes = max(1, min(params.lanes, len(self.slots)))
        self.prompt_backlog = params.prompt_backlog or max(2, self.cfg.max_active_trees // 2)
        self.max_ticks = params.max_ticks or 100 * trees + 10_000
        # what the simulation knows (the truth) and tracks
        self.quality: dict[UUID, float] = {}
        self.author: dict[UUID, int] = {}
        self.fe_ids = itertools.count(1)
        self.tick = 0
        self.commands = 0
        self.refused: Counter[str] = Counter()
        self.prompts_submitted = 0
        self.prompt_tasks_open = 0
        self.prompt_reserved = 0
        self.completed = 0
        self.last_progress_tick = 0
        self.drain_start: int | None = None
        # the moderator
        self.flagged: deque[UUID] = deque()
        self.flag_seen: set[UUID] = set()
        self.mod_later: list[tuple[int, int, Callable[[], Command | None]]] = []
        self.mod_seq = itertools.count()
        self.mod_cursor = 0
        self.mistakes = 0  # good messages deleted by mistake (each restored later)
        self.stuck_halted = 0
        self.halts_planned = 0 if trees < 4 else max(2 if trees >= 10 else 1, round(params.halt_share * trees))
        self.resumes_left = max(1, round(self.halts_planned * params.resume_share)) if self.halts_planned >= 2 else 0
        self.halts_done = 0

    @property
    def model(self) -> WriteModel:
        return self.service.model  # (the service replaces it if it ever rebuilds from the log)

    # --- users ------------------------------------------------------------------------

    def _make_actors(self, users: int, rng: random.Random) -> list[Actor]:
        rates = dict(self.params.behaviours)
        unknown = set(rates) - set(PROFILES)
        if unknown:
            raise ValueError(f"unknown behaviours {sorted(unknown)}; known: {sorted(PROFILES)}")
        total = sum(rates.values()) or 1.0
        exact = {b: users * r / total for b, r in rates.items()}
        counts = {b: int(x) for b, x in exact.items()}
        for b in sorted(exact, key=lambda b: (-(exact[b] - counts[b]), b))[: users - sum(counts.values())]:
            counts[b] += 1  # largest remainders
        kinds = [b for b in rates for _ in range(counts[b])]
        rng.shuffle(kinds)
        actors = []
        for i, behaviour in enumerate(kinds):
            name = f"{rng.choice(_NAMES)}{i}"
            auth = rng.choices(["discord", "google", "local"], weights=[0.4, 0.45, 0.15])[0]
            prof = PROFILES[behaviour]
            weight = prof.activity * min(50.0, rng.paretovariate(1.2))  # a few users do most of the work
            actors.append(Actor(i, f"seed-{i:06d}", name.title(), auth, behaviour, prof, weight))
            if i == 0 or rng.random() < 0.1:
                actors[-1].rename_at = rng.randint(2, 12)
        return actors

    def _pick_actor(self) -> Actor | None:
        total = self.cum_weights[-1]
        for _ in range(32):
            a = self.actors[bisect.bisect_right(self.cum_weights, self.rng.random() * total, 0, len(self.actors) - 1)]
            if not a.in_slot and not a.banned:
                return a
        start = self.rng.randrange(len(self.actors))  # few are free: take the next free one
        for k in range(len(self.actors)):
            a = self.actors[(start + k) % len(self.actors)]
            if not a.in_slot and not a.banned:
                return a
        return None

    def _fill_slot(self, i: int) -> Actor | None:
        a = self.slots[i]
        if a is not None and a.task is None and (a.session_left <= 0 or a.banned):
            a.in_slot = False
            self.slots[i] = a = None
        if a is None:
            a = self._pick_actor()
            if a is None:
                return None
            a.in_slot = True
            a.misses = 0
            a.session_left = max(1, round(self.rng.expovariate(1 / a.profile.session)))
            self.slots[i] = a
        return a

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        inflight: list[tuple[list[asyncio.Task], list[Handler]] | None] = [None] * self.lanes
        lane = 0
        try:
            while True:
                if inflight[lane] is not None:
                    item, inflight[lane] = inflight[lane], None
                    await self._settle(*item)
                if self._finished():
                    break
                commands = self._build(lane)
                self.commands += len(commands)
                tasks = [asyncio.ensure_future(c) for c, _ in commands]
                await asyncio.sleep(0)  # every command decides (synchronously) before anything else happens
                inflight[lane] = (tasks, [h for _, h in commands])
                lane = (lane + 1) % self.lanes
                self.tick += 1
                if self.progress and self.tick % 16 == 0:
                    self.progress(min(self.prompts_submitted, self.trees), self.trees)
                if self.tick % 2000 == 0:
                    gc.freeze()  # the model so far is long-lived: later collections skip it
        finally:
            for k, item in enumerate(inflight):
                if item is not None:
                    inflight[k] = None
                    await self._settle(*item)
        if self.progress:
            self.progress(self.trees, self.trees)

    async def _settle(self, tasks: list[asyncio.Task], handlers: list[Handler]) -> None:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for handler, result in zip(handlers, results, strict=True):
            if isinstance(result, OasstError):
                self.refused[result.code.name] += 1
            elif isinstance(result, BaseException):
                raise result
            handler(result)

    def _finished(self) -> bool:
        if self.tick - self.last_progress_tick > self.params.stall_ticks or self.tick >= self.max_ticks:
            return True
        if self.prompts_submitted < self.trees:
            return False
        if self.drain_start is None:
            self.drain_start = self.tick
        terminal = sum(len(self.model.trees_by_state.get(s, ())) for s in TERMINAL_STATES)
        if terminal >= self.params.finish_fraction * len(self.model.trees):
            return True
        return self.tick - self.drain_start > max(20, self.params.drain_factor * self.drain_start)

    def _build(self, lane: int) -> list[Command]:
        commands: list[Command] = []
        n = len(self.slots)
        offset = (self.tick // self.lanes) % n  # rotate who goes first (first come, first served for prompts)
        for k in range(n):
            i = (offset + k) % n
            if i % self.lanes != lane:
                continue
            actor = self._fill_slot(i)
            if actor is not None:
                command = self._step(actor)
                if command is not None:
                    commands.append(command)
        if lane == 0 and (self.tick // self.lanes) % self.params.mod_every == 0:
            commands.extend(self._moderate())
        return commands

    # --- one user's step ----------------------------------------------------------------

    def _step(self, a: Actor) -> Command | None:
        if a.task is None:
            return self._idle(a)
        if a.must_skip:
            return self._nack(a, "cannot do it")
        if a.acked_as is None:
            return self._assigned(a)
        if self.rng.random() < a.profile.skip_acked:
            return self._nack(a, "changed my mind")
        return self._answer(a)

    def _idle(self, a: Actor) -> Command:
        svc, client = self.service, self.client
        if not a.registered:
            a.registered = True
            if a.auth_method != "discord":  # web users are created by the website; the bot's implicitly
                req = p.CreateFrontendUserRequest(
                    id=a.username, display_name=a.display_name, auth_method=a.auth_method, tos_acceptance=True
                )
                return svc.create_frontend_user(client, req), self._ignore
        prof, r = a.profile, self.rng.random()
        if a.seen:
            if r < prof.react:
                command = self._react(a)
                if command:
                    return command
            elif r < prof.react + prof.report:
                command = self._report(a)
                if command:
                    return command
            elif r < prof.react + prof.report + prof.free_label:
                command = self._free_label(a)
                if command:
                    return command
        return self._request(a)

    def _prompts_wanted(self) -> int:
        left = self.trees - self.prompts_submitted - self.prompt_tasks_open - self.prompt_reserved
        if left <= 0:
            return 0
        m = self.model
        backlog = (
            len(m.trees_by_state.get("initial_prompt_review", ()))
            + self.prompt_tasks_open
            + len(m.trees_by_state.get("prompt_lottery_waiting", ()))
            + self.prompt_reserved
        )
        return min(left, self.prompt_backlog - backlog)

    def _request_kind(self, a: Actor) -> str:
        """The task type the actor asks for (a prompt task reserves its place among the prompts)."""
        if self._prompts_wanted() > 0 and self.rng.random() < self.params.prompt_rate * a.profile.prompt_bias:
            self.prompt_reserved += 1
            return "initial_prompt"
        if self.rng.random() >= a.profile.specific:
            return "random"
        if a.behaviour == "random_ranker":
            return "rank_assistant_replies"
        return self.rng.choice(
            [
                "label_initial_prompt",
                "label_assistant_reply",
                "label_prompter_reply",
                "assistant_reply",
                "prompter_reply",
                "rank_assistant_replies",
                "rank_prompter_replies",
            ]
        )

    def _request(self, a: Actor) -> Command:
        kind = self._request_kind(a)
        a.requests += 1
        if a.requests == a.rename_at:
            a.display_name = f"{self.rng.choice(_NAMES).title()} {self.rng.randint(1, 99)}"  # a rename
        req = p.TaskRequest(user=a.ref(), type=kind, lang="en")

        def done(res) -> None:
            if kind == "initial_prompt":
                self.prompt_reserved -= 1
            if isinstance(res, OasstError):
                self._refused(a, res)
                a.misses += 1
                if a.misses >= 3:
                    a.session_left = 0  # nothing to do here: come back later
                return
            task = msgspec.json.decode(res.body)
            a.task, a.acked_as, a.must_skip, a.misses, a.prompt_admitted = task, None, False, 0, False
            if task["type"] == "initial_prompt":  # (also what "random" hands out when nothing else is left)
                if self.prompts_submitted + self.prompt_tasks_open < self.trees:
                    self.prompt_tasks_open += 1
                    a.prompt_admitted = True
                else:
                    a.must_skip = True  # enough prompts: skip it
            self._see(a, task)

        return self.service.request_task(self.client, req), done

    def _assigned(self, a: Actor) -> Command | None:
        task = a.task
        r = self.rng.random()
        if r < a.profile.abandon:
            self._drop_task(a)  # walks away; the task expires
            a.session_left = 0
            return None
        if r < a.profile.abandon + a.profile.skip:
            return self._nack(a, self.rng.choice(["not interested", "too hard", None]))
        fid = f"fe-{next(self.fe_ids)}"

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
                self._drop_task(a)
            else:
                a.acked_as = fid

        return self.service.ack(self.client, task["id"], p.TaskAck(message_id=fid)), done

    def _drop_task(self, a: Actor) -> None:
        if a.prompt_admitted:
            self.prompt_tasks_open -= 1
        a.task, a.acked_as, a.must_skip, a.prompt_admitted = None, None, False, False

    def _nack(self, a: Actor, reason: str | None) -> Command:
        task_id = a.task["id"]

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
            self._drop_task(a)

        return self.service.nack(self.client, task_id, p.TaskNAck(reason=reason)), done

    def _refused(self, a: Actor, err: OasstError) -> None:
        if err.code == ErrorCode.USER_DISABLED:
            a.banned = True

    def _finish_task(self, a: Actor) -> None:
        self._drop_task(a)
        a.session_left -= 1
        self.completed += 1
        self.last_progress_tick = self.tick

    def _see(self, a: Actor, task: dict) -> None:
        msgs = list(task.get("conversation", {}).get("messages", ())) + list(task.get("reply_messages", ()))
        for m in msgs[-4:]:
            mid = UUID(m["id"])
            if self.author.get(mid) != a.index:
                a.seen.append(mid)

    # --- answers ------------------------------------------------------------------------

    def _answer(self, a: Actor) -> Command:
        kind = a.task["type"]
        if kind in ("initial_prompt", "assistant_reply", "prompter_reply"):
            return self._write(a, kind)
        if kind.startswith("label_"):
            return self._label(a)
        return self._rank(a)

    def _write(self, a: Actor, kind: str) -> Command:
        mean, sd = a.profile.quality
        q = round(min(1.0, max(0.0, self.rng.gauss(mean, sd))), 4)
        text = compose_text(kind, q, self.rng, self.prompts)
        umid = f"um-{next(self.fe_ids)}"
        body = p.TextReplyToMessage(user=a.ref(), message_id=a.acked_as, user_message_id=umid, text=text, lang="en")

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
                a.must_skip = True  # e.g. the tree closed meanwhile, or a duplicate text: skip the task
                return
            mid = self.model.messages_by_frontend_id[(self.client.id, umid)]
            self.quality[mid], self.author[mid] = q, a.index
            a.authored.append(mid)
            if kind == "initial_prompt":
                self.prompts_submitted += 1
            self._finish_task(a)

        return self.service.interaction(self.client, body), done

    def _labels_for(self, a: Actor, mid: UUID, names: list[str], mode: str | None) -> dict[str, float]:
        q = self.quality.get(mid, 0.7)
        if a.behaviour == "spammer":
            return self._spammer_labels(names, junk=q < JUNK_BELOW)
        if a.behaviour == "troll":
            return self._troll_labels(names)
        rude = self.actors[self.author[mid]].behaviour == "troll" if mid in self.author else False
        return self._honest_labels(a.behaviour == "lazy", names, mode, q, rude)

    def _spammer_labels(self, names: list[str], junk: bool) -> dict[str, float]:
        """Random labels; spam-votes good messages."""
        rng = self.rng
        labels = {
            n: float(rng.choice([0, 0.25, 0.5, 0.75, 1]))
            if n not in ("spam", "lang_mismatch")
            else float(rng.random() < 0.3)
            for n in names
        }
        labels["spam"] = 0.0 if junk else float(rng.random() < 0.6)
        return labels

    def _troll_labels(self, names: list[str]) -> dict[str, float]:
        rng = self.rng
        labels = {n: float(rng.random() < 0.3) if n != "quality" else _likert(rng.random()) for n in names}
        labels["spam"] = float(rng.random() < 0.4)
        return labels

    def _honest_labels(self, lazy: bool, names: list[str], mode: str | None, q: float, rude: bool) -> dict[str, float]:
        """What a diligent (or lazy: more errors, fewer labels) reviewer sees in a message of quality ``q``."""
        rng = self.rng
        spam = float((q < JUNK_BELOW) != (rng.random() < (0.12 if lazy else 0.02)))
        if lazy and mode == "simple":
            return {"spam": spam}  # only what is mandatory
        labels = {n: spam if n == "spam" else self._label_value(n, q, rude, lazy) for n in names}
        if lazy:
            labels = {n: v for n, v in labels.items() if n == "spam" or rng.random() < 0.4}
        return labels

    def _label_value(self, name: str, q: float, rude: bool, lazy: bool) -> float:
        """One label (but spam) of an honest reviewer."""
        rng = self.rng
        if name in ("quality", "helpfulness"):
            return _likert(q + rng.gauss(0, 0.25 if lazy else 0.12))
        if name == "fails_task":
            return float(q < 0.35)
        if name in ("creativity", "humor"):
            return _likert(rng.random() * q)
        if name == "toxicity":
            return _likert(0.6 + rng.random() * 0.4) if rude else _likert(rng.random() * 0.2)
        if name == "not_appropriate":
            return float(rude and rng.random() < 0.5)
        if name == "lang_mismatch":
            return float(rng.random() < 0.005)
        return float(rng.random() < 0.01)  # pii, hate_speech, sexual_content, violence, ...

    def _label(self, a: Actor) -> Command:
        task = a.task
        mid = UUID(task["message_id"])
        labels = self._labels_for(a, mid, task["valid_labels"], task.get("mode"))
        body = p.TextLabels(user=a.ref(), text="", labels=labels, message_id=task["message_id"], task_id=task["id"])

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
                a.must_skip = True
                return
            self._finish_task(a)
            if a.behaviour == "diligent" and labels.get("spam") == 1.0 and self.rng.random() < 0.3:
                self._flag(mid)  # the moderators see it too

        return self.service.interaction(self.client, body), done

    def _rank(self, a: Actor) -> Command:
        task = a.task
        ids = [UUID(m["id"]) for m in task["reply_messages"]]
        order = list(range(len(ids)))
        rng, b = self.rng, a.behaviour
        honest = sorted(order, key=lambda i: -(self.quality.get(ids[i], 0.5) + rng.gauss(0, 0.05)))
        if b in ("diligent", "lazy") and not (b == "lazy" and rng.random() < 0.3):
            ranking = honest
        elif b == "troll" or (b == "spammer" and rng.random() < 0.5):
            ranking = honest[::-1]
        else:
            ranking = order[:]
            rng.shuffle(ranking)
        not_rankable = b == "lazy" and rng.random() < 0.1
        body = p.MessageRanking(user=a.ref(), message_id=a.acked_as, ranking=ranking, not_rankable=not_rankable)

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
                a.must_skip = True
                return
            self._finish_task(a)

        return self.service.interaction(self.client, body), done

    # --- reactions, reports, free labels --------------------------------------------------------

    def _react(self, a: Actor) -> Command | None:
        rng = self.rng
        if a.last_emoji and rng.random() < 0.1:
            mid, emoji = a.last_emoji  # changes their mind: the toggle removes it
            a.last_emoji = None
        else:
            mid = rng.choice(a.seen)
            if self.author.get(mid) == a.index:
                return None
            q, b = self.quality.get(mid, 0.5), a.behaviour
            if b == "troll":
                emoji = rng.choice(["red_flag", "red_flag", "-1", "-1", "poop", "skull"])
            elif b == "spammer":
                emoji = "-1" if q >= JUNK_BELOW else "+1"
            elif q < JUNK_BELOW:
                emoji = rng.choice(["-1", "-1", "red_flag", "poop"])
            elif q < 0.45:
                emoji = rng.choice(["-1", "disappointed", "+1"])
            else:
                emoji = rng.choice(["+1", "+1", "+1", "heart_eyes", "100", "clap", "rofl", "diamond"])
            a.last_emoji = (mid, emoji)
        req = p.MessageEmojiRequest(user=a.ref(), emoji=emoji, op="toggle")

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
            elif emoji == "red_flag":
                self._flag(mid)

        return self.service.emoji(self.client, str(mid), req), done

    def _report(self, a: Actor) -> Command | None:
        if a.behaviour == "troll":  # reports whatever it sees
            mid = self.rng.choice(a.seen)
            labels, text = {"not_appropriate": 1.0, "toxicity": 0.75}, "this is offensive"
        else:  # reports the junk or the rudeness it saw lately, if any
            bad = [x for x in a.seen if self.quality.get(x, 0.5) < 0.4 and x not in self.flag_seen]
            if not bad:
                return None
            mid = self.rng.choice(bad)
            junk = self.quality.get(mid, 0.5) < JUNK_BELOW
            labels, text = ({"spam": 1.0}, "spam") if junk else ({"toxicity": 0.75, "not_appropriate": 1.0}, "rude")
        if self.author.get(mid) == a.index:
            return None
        body = p.TextLabels(user=a.ref(), text=text, labels=labels, message_id=str(mid), is_report=True)

        def done(res) -> None:
            if isinstance(res, OasstError):
                self._refused(a, res)
            else:
                self._flag(mid)

        return self.service.free_labels(self.client, body), done

    def _free_label(self, a: Actor) -> Command | None:
        mid = self.rng.choice(a.seen)
        if self.author.get(mid) == a.index:
            return None
        q = self.quality.get(mid, 0.5)
        labels = {
            "quality": _likert(q + self.rng.gauss(0, 0.1)),
            "helpfulness": _likert(q),
            "spam": float(q < JUNK_BELOW),
        }
        body = p.TextLabels(user=a.ref(), text="", labels=labels, message_id=str(mid))
        return self.service.free_labels(self.client, body), lambda res: None

    def _flag(self, mid: UUID) -> None:
        if mid not in self.flag_seen:
            self.flag_seen.add(mid)
            self.flagged.append(mid)

    def _ignore(self, res) -> None:
        pass

    # --- the moderator --------------------------------------------------------------------

    def _later(self, ticks: int, action: Callable[[], Command | None]) -> None:
        heapq.heappush(self.mod_later, (self.tick + ticks, next(self.mod_seq), action))

    def _moderate(self) -> list[Command]:
        """The moderator's round: what was put off until now, then each of its duties."""
        out: list[Command] = []
        while self.mod_later and self.mod_later[0][0] <= self.tick:
            command = heapq.heappop(self.mod_later)[2]()
            if command:
                out.append(command)
        self._moderate_flagged(out)
        self._mark_spammers(out)
        if self.params.halt_stuck:
            self._halt_stuck(out)
        self._halt_some(out)
        return out

    def _moderate_flagged(self, out: list[Command]) -> None:
        """The flagged list: junk goes; now and then a good message goes too, and comes back later."""
        svc, client, rng, m = self.service, self.client, self.rng, self.model
        for _ in range(min(2, len(self.flagged))):
            mid = self.flagged.popleft()
            msg = m.messages[mid]
            if msg.deleted or m.trees[msg.tree_id].state == "initial_prompt_review":
                continue  # a prompt under review is left to its reviewers
            good = self.quality.get(mid, 0.5) >= 0.3
            if not good or not self.mistakes or rng.random() < self.params.mod_mistake:
                self.mistakes += good
                out.append((svc.delete_message(client, str(mid)), self._ignore))
                if good:
                    self._later(
                        rng.randint(8, 30), lambda mid=mid: (svc.undelete_message(client, str(mid)), self._ignore)
                    )

    def _mark_spammers(self, out: list[Command]) -> None:
        """Authors of many rejected messages get marked (and the worst banned)."""
        m = self.model
        for _ in range(3):
            a = self.actors[self.mod_cursor % len(self.actors)]
            self.mod_cursor += 1
            if a.marked or a.user_id not in m.users:
                continue
            reviewed = [m.messages[x].review_result for x in a.authored if m.messages[x].review_result is not None]
            rejected = reviewed.count(False)
            if rejected >= self.params.spammer_rejections and rejected * 2 >= len(reviewed):
                a.marked = True
                ban = rejected >= self.params.spammer_rejections + 2
                out.append((self.service.set_spammer(self.client, str(a.user_id), True, ban=ban), self._ignore))
                if a.behaviour != "spammer":  # a false positive: the user appeals, and wins
                    self._later(self.rng.randint(30, 90), lambda a=a, ban=ban: self._appeal(a, ban))

    def _halt_stuck(self, out: list[Command]) -> None:
        """Trees in review or growing that nobody can take any further get halted."""
        m = self.model
        for tree in [*m.trees_in("initial_prompt_review"), *m.trees_in("growing")]:
            if not self._can_progress(tree):
                self.stuck_halted += 1
                out.append((self.service.set_tree_halted(self.client, str(tree.id), True), self._ignore))

    def _halt_some(self, out: list[Command]) -> None:
        """Halts, spread over the run; a few are undone."""
        svc, client, rng, m = self.service, self.client, self.rng, self.model
        if (
            self.halts_done >= self.halts_planned
            or self.prompts_submitted < (self.halts_done + 0.5) * self.trees / self.halts_planned
        ):
            return
        growing = list(m.trees_in("growing")) or list(m.trees_in("initial_prompt_review"))
        if growing:
            tree = rng.choice(growing)
            self.halts_done += 1
            out.append((svc.set_tree_halted(client, str(tree.id), True), self._ignore))
            if self.resumes_left > 0 and self.halts_done % 2 == 0:
                self.resumes_left -= 1
                self._later(
                    rng.randint(10, 40),
                    lambda tid=tree.id: (svc.set_tree_halted(client, str(tid), False), self._ignore),
                )

    def _can_progress(self, tree) -> bool:
        """Could anyone still review or extend this tree? (Not when no message can take a
        reply and every message awaiting review is hidden or has all the reviews it can get:
        labels of users marked spammers fill review slots without counting.)"""
        work = self.service.manager.work(tree)
        return bool(work.reply_parents or work.to_label)

    def _appeal(self, a: Actor, banned: bool) -> Command:
        svc, client = self.service, self.client
        if banned:  # and the account is enabled again on the moderator's next round
            self._later(
                1,
                lambda: (
                    svc.update_user(client, str(a.user_id), True, "appeal accepted", None, None),
                    lambda res: setattr(a, "banned", False),
                ),
            )
        return svc.set_spammer(client, str(a.user_id), False), self._ignore

    # --- the result ---------------------------------------------------------------------------

    def truth(self) -> dict:
        by: dict[str, list[str]] = {b: [] for b in PROFILES}
        present = [a for a in self.actors if a.user_id in self.model.users]  # users who appear in the log
        for a in present:
            by[a.behaviour].append(str(a.user_id))
        return {
            "behaviour_of": {str(a.user_id): a.behaviour for a in present},
            "spammers": by["spammer"],
            "random_rankers": by["random_ranker"],
            "trolls": by["troll"],
            "lazy": by["lazy"],
            "diligent": by["diligent"],
            "message_quality": {str(mid): q for mid, q in self.quality.items()},
            "junk_below": JUNK_BELOW,
        }


# --- entry points ---------------------------------------------------------------------------


def _resolve(
    trees: int, users: int, scale: str | None, tree_config: TreeConfig | None, params: SeedParams | None
) -> tuple[int, int, TreeConfig, SeedParams]:
    if scale is None:
        params = params or SeedParams()
        return trees, users, tree_config or seed_tree_config(min(users, params.concurrency)), params
    name, _, part = scale.lower().partition("/")
    if name != "oa" or (part and not (part.isdigit() and int(part) > 0)):
        raise ValueError(f"unknown scale {scale!r}: 'oa' (Open-Assistant's size) or 'oa/N' (1/N of it)")
    oa_trees, oa_users, oa_cfg, oa_params = oa_scale()
    n = int(part or 1)
    return max(1, oa_trees // n), max(1, oa_users // n), tree_config or oa_cfg, params or oa_params


async def seed_history_async(
    database_url: str,
    *,
    trees: int,
    users: int,
    seed: int,
    scale: str | None = None,
    tree_config: TreeConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: SeedParams | None = None,
    api_key: str = DEFAULT_API_KEY,
    checkpoint_dir: Path | None = None,
) -> dict:
    """``seed_history`` inside a running event loop."""
    trees, users, cfg, params = _resolve(trees, users, scale, tree_config, params)
    if trees < 1 or users < 1:
        raise ValueError("trees and users must be at least 1")
    store = _CountingStore(database_url)
    try:
        if store.max_position() > 0:
            raise ValueError(f"the store at {database_url} is not empty: seed a fresh database")
        clock_rng = random.Random(f"oasst-seed:{seed}:clock")
        mean_ms = max(1, round(params.seconds_per_command * 1000))
        now = [params.start]

        def clock() -> datetime:
            now[0] += timedelta(milliseconds=clock_rng.randint(max(1, mean_ms // 5), mean_ms * 9 // 5))
            return now[0]

        settings = Settings(
            database_url=database_url,
            bootstrap_api_key=api_key,
            tree=cfg,
            task_expire_minutes=params.task_expire_minutes,
        )
        ev.seed_ids(seed)
        service = CommandService(settings, store, clock=clock)
        started = time.perf_counter()
        gc_threshold = gc.get_threshold()
        gc.set_threshold(50_000, 20, 20)  # the write model is millions of long-lived objects
        try:
            await service.start()
            client = service.client_for_key(api_key)
            sim = Simulation(service, client, trees=trees, users=users, seed=seed, params=params, progress=progress)
            await sim.run()
        finally:
            await service.stop()
            gc.unfreeze()
            gc.set_threshold(*gc_threshold)
        seconds = time.perf_counter() - started
        if checkpoint_dir and service.model.position:  # so that the first `oasst serve` folds no log
            Checkpoints(checkpoint_dir).save(service.model, service.store_id())
        return _summary(
            sim,
            store,
            cfg,
            params,
            seed=seed,
            trees=trees,
            users=users,
            seconds=seconds,
            simulated=(params.start, now[0]),
        )
    finally:
        store.close()


def seed_history(
    database_url: str,
    *,
    trees: int,
    users: int,
    seed: int,
    scale: str | None = None,
    tree_config: TreeConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: SeedParams | None = None,
    api_key: str = DEFAULT_API_KEY,
    checkpoint_dir: Path | None = None,
) -> dict:
    """Generate a synthetic history of ``trees`` prompts by ``users`` simulated users into
    an empty store; returns a summary (counts, timings, and the planted truth). With
    ``checkpoint_dir`` it leaves a checkpoint of the write model there (infra.checkpoints)."""
    return asyncio.run(
        seed_history_async(
            database_url,
            trees=trees,
            users=users,
            seed=seed,
            scale=scale,
            tree_config=tree_config,
            progress=progress,
            params=params,
            api_key=api_key,
            checkpoint_dir=checkpoint_dir,
        )
    )


def _summary(
    sim: Simulation,
    store: _CountingStore,
    cfg: TreeConfig,
    params: SeedParams,
    *,
    seed: int,
    trees: int,
    users: int,
    seconds: float,
    simulated: tuple[datetime, datetime],
) -> dict:
    c, m = store.counts, sim.model
    events = sum(c.values())
    behaviours = Counter(a.behaviour for a in sim.actors if a.user_id in m.users)  # those in the log
    return {
        "seed": seed,
        "trees_requested": trees,
        "users_requested": users,
        "events": events,
        "events_by_type": dict(sorted(c.items())),
        "trees": c["initial_prompt_submitted"],
        "trees_by_state": {s: len(v) for s, v in sorted(m.trees_by_state.items()) if v},
        "messages": c["initial_prompt_submitted"] + c["reply_submitted"],
        "prompts": c["initial_prompt_submitted"],
        "replies": c["reply_submitted"],
        "labels": c["labels_submitted"],
        "labels_by_kind": dict(sorted(store.label_kinds.items())),
        "rankings": c["ranking_submitted"],
        "reactions": sum(n for e, n in store.emojis.items() if not is_skip_marker(e)),
        "reactions_removed": c["emoji_removed"],
        "skip_markers": sum(n for e, n in store.emojis.items() if is_skip_marker(e)),
        "tasks": c["task_assigned"],
        "tasks_by_outcome": {
            "completed": c["task_completed"],
            "skipped": c["task_skipped"],
            "expired": c["task_expired"],
        },
        "users": c["user_seen"],
        "users_by_behaviour": dict(sorted(behaviours.items())),
        "stuck_trees_halted": sim.stuck_halted,
        "commands": sim.commands,
        "refused": dict(sorted(sim.refused.items())),
        "ticks": sim.tick,
        "simulated_from": simulated[0].isoformat(),
        "simulated_to": simulated[1].isoformat(),
        "seconds": round(seconds, 3),
        "events_per_second": round(events / seconds, 1) if seconds > 0 else 0.0,
        "tree_config": asdict(cfg),
        "truth": sim.truth(),
    }


def seed_command(trees: int = 100, users: int = 50, seed: int = 0, scale: Optional[str] = None) -> None:  # noqa: UP045
    """Generate a synthetic history (simulated users through the domain rules) into an empty store."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    settings = Settings.from_env()
    console = Console()
    api_key = settings.bootstrap_api_key or DEFAULT_API_KEY  # serve with this key to act as the seeded frontend
    with Progress(
        TextColumn("[bold]seeding[/] prompts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        job = bar.add_task("seed", total=None)
        summary = seed_history(
            settings.database_url,
            trees=trees,
            users=users,
            seed=seed,
            scale=scale,
            progress=lambda done, total: bar.update(job, completed=done, total=total),
            api_key=api_key,
            checkpoint_dir=settings.checkpoints_folder,
        )
    table = Table("", "count", title=f"seeded {settings.database_url.split(':', 1)[0]} store (seed {seed})")
    for key in ("events", "trees", "messages", "labels", "rankings", "reactions", "tasks", "users", "commands"):
        table.add_row(key, f"{summary[key]:,}")
    for state, n in summary["trees_by_state"].items():
        table.add_row(f"trees {state}", f"{n:,}")
    for behaviour, n in summary["users_by_behaviour"].items():
        table.add_row(f"users {behaviour}", f"{n:,}")
    table.add_row("seconds", f"{summary['seconds']:,.1f}")
    table.add_row("events/s", f"{summary['events_per_second']:,.0f}")
    console.print(table)
    truth_path = settings.data_dir / f"seed-truth-{seed}.json"
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    truth_path.write_text(json.dumps({k: v for k, v in summary.items()}, indent=1))
    console.print(f"summary and planted truth: [cyan]{truth_path}[/]")
    console.print(
        f"the simulated users belong to the API client with key [green]{api_key}[/] "
        "(OASST_BOOTSTRAP_API_KEY); the tree rules used (serve with the same OASST_TREE_* to continue "
        "this history under them):"
    )
    console.print(
        " ".join(
            f"OASST_TREE_{k.upper()}={int(v) if isinstance(v, bool) else v}" for k, v in summary["tree_config"].items()
        )
    )
