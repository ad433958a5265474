"""The write model: what the command side needs to decide, folded from the log.

It lives in memory in the one process that accepts commands, is rebuilt from the
log at start, and is updated by ``apply`` as each event is decided. ``apply`` is a
pure fold over events (event timestamps only, no clock, no randomness), so replay
gives the same model.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from domain import events as ev
from domain import labels as lab
from domain.config import TreeConfig
from domain.rules import current_streak, is_hidden

OASST_NAMESPACE = uuid5(NAMESPACE_URL, "https://github.com/LAION-AI/Open-Assistant")

DUPLICATE_TEXT_WINDOW = timedelta(minutes=120)  # a user may not submit the same text again within this
RANK1_WINDOW = timedelta(days=30)  # the lottery favours authors of replies ranked first this recently
CLOSED_TASK_MEMORY = timedelta(days=1)  # a closed task is remembered this long (a retry gets its first answer)
DELETED_USER_DISPLAY_NAME, DELETED_USER_PREFIX = "Deleted User", "deleted_"  # OA's oasst_shared.utils
ACTIVE_STATES = ("initial_prompt_review", "growing", "ranking")
TERMINAL_STATES = ("ready_for_export", "aborted_low_grade", "halted_by_moderator", "scoring_failed")


def user_id_for(api_client_id: UUID, auth_method: str, username: str) -> UUID:
    """Users are keyed per (api client, auth method, frontend id); the id is derived
    so a command can be validated before the user's first event exists."""
    return uuid5(OASST_NAMESPACE, f"user:{api_client_id}:{auth_method}:{username}")


def tree_stream(tree_id: UUID) -> UUID:
    return uuid5(tree_id, "tree")


def snapshot_stream(snapshot_id: str) -> UUID:
    return uuid5(OASST_NAMESPACE, f"snapshot:{snapshot_id}")


def stream_of(event: ev.Event) -> UUID:
    """Which stream (eventsourcing originator) an event belongs to. Streams are small
    so that busy trees do not serialise on one aggregate: each user's labels or
    reactions on a message, each task, each message are streams of their own."""
    match event:
        case ev.ApiClientCreated():
            return event.client_id
        case (
            ev.UserSeen()
            | ev.UserRenamed()
            | ev.UserEnabled()
            | ev.UserDisabled()
            | ev.UserSettingsChanged()
            | ev.UserDeleted()
            | ev.UserErased()
            | ev.UserMarkedSpammer()
            | ev.UserUnmarkedSpammer()
        ):  # noqa: E501
            return event.subject_id
        case ev.UsersMerged():
            return event.subject_id
        case (
            ev.TaskAssigned()
            | ev.TaskAcked()
            | ev.TaskSkipped()
            | ev.TaskExpired()
            | ev.TaskCompleted()
            | ev.RankingSubmitted()
        ):  # noqa: E501
            return event.task_id
        case ev.LabelsSubmitted():
            return uuid5(event.message_id, f"labels:{event.user_id}")
        case ev.EmojiAdded() | ev.EmojiRemoved():
            return uuid5(event.message_id, f"emoji:{event.user_id}")
        case ev.TreeStateChanged() | ev.TreeHalted() | ev.TreeResumed() | ev.RanksComputed() | ev.TreeImported():
            return tree_stream(event.tree_id)
        case ev.SnapshotCreated():
            return snapshot_stream(event.snapshot_id)
        case _:
            return event.message_id  # message events


@dataclass
class ApiClient:
    id: UUID
    key_sha256: str
    trusted: bool
    description: str
    frontend_type: str


@dataclass
class User:
    id: UUID
    api_client_id: UUID
    auth_method: str
    username: str
    display_name: str
    created_at: datetime | None = None
    enabled: bool = True
    deleted: bool = False
    erased: bool = False
    spammer: bool = False
    notes: str = ""
    show_on_leaderboard: bool = True
    tos_accepted: bool = False
    tos_acceptance_date: datetime | None = None
    # activity as the views count it (prompts, replies, labels, rankings), for OA's FrontEndUser
    last_activity: datetime | None = None
    last_active_day: int | None = None
    streak_days: int = 0  # full days of the current run of consecutive active days

    @property
    def exists(self) -> bool:
        return self.created_at is not None

    def streak(self, now: datetime) -> tuple[int, datetime | None]:
        return current_streak(self.streak_days, self.last_activity, now)


@dataclass(slots=True)
class Task:
    """What deciding needs of a task. The payload the frontend got is in its TaskAssigned
    event only; once a task is closed its ranked ids go too (a retry needs neither)."""

    id: UUID
    type: str
    user_id: UUID | None
    api_client_id: UUID | None
    collective: bool
    lang: str | None
    created_at: datetime
    expires_at: datetime | None
    target_message_id: UUID | None
    tree_id: UUID | None
    label_mode: str | None
    ranked_message_ids: list[UUID]
    frontend_message_id: str | None = None
    status: str = "open"  # open | acked | skipped | expired | done
    request_sha256: str | None = None
    user_message_id: str | None = None

    @property
    def pending(self) -> bool:
        return self.status in ("open", "acked")

    @property
    def valid_labels(self) -> list[str]:
        return lab.valid_labels(self.type, self.label_mode or "full")


@dataclass(slots=True)
class Message:
    id: UUID
    tree_id: UUID
    parent_id: UUID | None
    user_id: UUID | None
    api_client_id: UUID | None
    frontend_message_id: str
    role: str
    depth: int
    text: str
    lang: str
    created_at: datetime
    synthetic: bool = False
    model_name: str | None = None
    deleted: bool = False
    review_result: bool | None = None
    late: bool = False  # arrived after its tree stopped growing: kept, never reviewed
    children: list[UUID] = field(default_factory=list)
    # user -> what acceptance reads of their review labels: (spam, lang_mismatch), None if absent
    task_labels: dict[UUID, tuple[float | None, float | None]] = field(default_factory=dict)
    emojis: dict[str, set[UUID]] = field(default_factory=dict)  # emoji -> users (hidden skip markers too)
    reports: int = 0
    rank: int | None = None
    edited: bool = False

    @property
    def review_count(self) -> int:
        return len(self.task_labels)

    @property
    def red_flags(self) -> int:
        return self.reports + len(self.emojis.get("red_flag", ()))


@dataclass(slots=True)
class Tree:
    id: UUID
    lang: str
    state: str | None
    created_at: datetime
    goal_tree_size: int
    origin: str | None = None
    won_lottery: bool = False
    goal_decided: bool = False  # the goal size came with a decision, not from the configuration
    halted_from: str | None = None
    message_ids: list[UUID] = field(default_factory=list)
    awaiting_review: dict[UUID, Message] = field(default_factory=dict)  # not late, not yet reviewed
    reply_parents: dict[UUID, Message] = field(default_factory=dict)  # accepted, room for a reply
    rankings: dict[UUID, list[tuple[UUID, list[UUID]]]] = field(default_factory=lambda: defaultdict(list))
    rankers: set[tuple[UUID, UUID]] = field(default_factory=set)  # (parent, user)
    skip_replies: int = 0
    spam_halted_from: str | None = None  # state before its author was marked a spammer
    aborted_by_review: bool = False  # aborted because its prompt's review rejected it
    revision: int = 0  # bumped when a message, label or ranking of the tree changes (for caches)
    work: Any = None  # the tree manager's TreeWork while the tree is active (a cache)


class WriteModel:
    def __init__(self, config: TreeConfig | None = None):
        self.cfg = config or TreeConfig()
        self.position = 0
        self.last_event_id: UUID | None = None  # of the last event folded (checkpoints check it)
        self.event_count = 0  # events folded (a checkpoint checks that the log holds no others)
        self.versions: dict[int, int] = {}  # stream (its UUID's int: no object per stream) -> version
        self.clients: dict[UUID, ApiClient] = {}
        self.clients_by_key: dict[str, ApiClient] = {}
        self.users: dict[UUID, User] = {}
        self.tasks: dict[UUID, Task] = {}
        self.tasks_by_frontend_id: dict[tuple[UUID | None, str], UUID] = {}
        self.closed_tasks: deque[tuple[datetime, UUID]] = deque()  # (closed at, task), oldest first
        self.user_pending: dict[UUID, dict[UUID, None]] = defaultdict(dict)  # user -> open tasks
        self.pending_by_target: dict[UUID, set[UUID]] = defaultdict(set)  # message -> open tasks
        self.messages: dict[UUID, Message] = {}
        self.messages_by_frontend_id: dict[tuple[UUID | None, str], UUID] = {}
        self.trees: dict[UUID, Tree] = {}
        self.trees_by_state: dict[str, dict[UUID, Tree]] = defaultdict(dict)
        self.trees_by_state_lang: dict[tuple[str, str], dict[UUID, Tree]] = defaultdict(dict)
        self.user_texts: dict[UUID, list[tuple[datetime, int]]] = defaultdict(list)  # (at, hash), recent only
        self.replied: set[tuple[UUID, UUID]] = set()  # (parent, user)
        # the lottery's weights: each author's replies ranked first in the last 30 days
        self.rank1_recent: dict[UUID, int] = {}  # author -> how many
        self.rank1_log: deque[tuple[datetime, UUID]] = deque()  # (when, author), oldest first
        # who contributed what, so that a spam mark can be applied after the fact
        self.spammers: set[UUID] = set()
        self.revision = 0  # bumped with any tree's revision: task selection's caches key on it
        self.spam_epoch = 0  # bumped by every spam mark or unmark (whose votes count changes everywhere)
        # lang -> author -> their trees waiting in the prompt lottery; and the authors as a list
        # (with each one's place in it), so that a uniform pick is one index, not a scan
        self.lottery: dict[str, dict[UUID | None, dict[UUID, Tree]]] = defaultdict(dict)
        self.lottery_authors: dict[str, list[UUID | None]] = defaultdict(list)
        self.lottery_places: dict[str, dict[UUID | None, int]] = defaultdict(dict)
        self.authored: dict[UUID, list[UUID]] = defaultdict(list)  # user -> messages
        self.labelled_by: dict[UUID, set[UUID]] = defaultdict(set)  # user -> messages (task labels)
        self.ranked_by: dict[UUID, set[UUID]] = defaultdict(set)  # user -> ranked parents
        # OA's moderation queue: reported or red-flagged messages -> (flagged at, processed)
        self.flagged: dict[UUID, tuple[datetime, bool]] = {}

    # --- queries used by decisions -------------------------------------------------

    def next_version(self, stream: UUID) -> int:
        return self.versions.get(stream.int, 0) + 1

    def has_stream(self, stream: UUID) -> bool:
        return stream.int in self.versions

    @staticmethod
    def _ref(table: dict, key: UUID | None) -> UUID | None:
        """The model's own object for an id. Events bring a new UUID object for every id they
        name; the model refers to the user's, client's or message's own instead (one object
        per id: a checkpoint restores far fewer)."""
        found = table.get(key) if key is not None else None
        return found.id if found is not None else key

    def user(self, api_client_id: UUID, auth_method: str, username: str) -> User:
        """The user, or a not-yet-existing one with the id it will get."""
        uid = user_id_for(api_client_id, auth_method, username)
        while uid in self.users and self.users[uid].deleted:  # OA frees a deleted user's name: a new user
            uid = uuid5(uid, "recreated")
        return self.users.get(uid) or User(uid, api_client_id, auth_method, username, username)

    def is_hidden(self, message: Message) -> bool:
        """Deleted itself or below a deleted ancestor (a spammer's message counts as deleted)."""
        return is_hidden(message, self.messages.get, self.spammers)

    def thread(self, message: Message) -> list[Message]:
        """Root ... message."""
        out = [message]
        while out[-1].parent_id:
            out.append(self.messages[out[-1].parent_id])
        return out[::-1]

    def trees_in(self, state: str, lang: str | None = None) -> Collection[Tree]:
        index = self.trees_by_state.get(state) if lang is None else self.trees_by_state_lang.get((state, lang))
        return index.values() if index else ()

    def reconfigure(self, cfg: TreeConfig) -> None:
        """Adopt another tree configuration (a checkpoint folded under one, a server run
        under another): re-derive what the fold derived from it, as a fold under ``cfg`` would."""
        if cfg == self.cfg:
            return
        self.cfg = cfg
        for tree in self.trees.values():
            if not tree.goal_decided:
                tree.goal_tree_size = cfg.goal_tree_size
            for mid in tree.message_ids:
                self._refresh_reply_parent(self.messages[mid])

    # --- the fold -------------------------------------------------------------------

    def apply(self, event: ev.Event, stream: UUID, version: int) -> None:
        self.versions[stream.int] = version
        self.last_event_id = event.id
        self.event_count += 1
        self._forget_old_rank1(event.at)
        handler = getattr(self, "_on_" + ev.topic(event), None)
        if handler:
            handler(event)

    def _forget_old_rank1(self, now: datetime) -> None:
        """The lottery weighs first ranks of the last 30 days only (event time)."""
        log = self.rank1_log
        while log and now - log[0][0] > RANK1_WINDOW:
            author = log.popleft()[1]
            left = self.rank1_recent[author] - 1
            if left:
                self.rank1_recent[author] = left
            else:
                del self.rank1_recent[author]

    def _touch(self, tree: Tree) -> None:
        """A message, label, ranking or the state of ``tree`` changed: its caches are stale."""
        tree.revision += 1
        self.revision += 1

    def _set_state(self, tree: Tree, state: str | None) -> None:
        if tree.state:
            self.trees_by_state[tree.state].pop(tree.id, None)
            self.trees_by_state_lang[(tree.state, tree.lang)].pop(tree.id, None)
            if tree.state == "prompt_lottery_waiting":
                self._lottery_remove(tree)
        tree.state = state
        self._touch(tree)
        self.trees_by_state[state][tree.id] = tree
        self.trees_by_state_lang[(state, tree.lang)][tree.id] = tree
        if state == "prompt_lottery_waiting":
            self._lottery_add(tree)

    def _lottery_add(self, tree: Tree) -> None:
        author, by_author = self.messages[tree.id].user_id, self.lottery[tree.lang]
        if author not in by_author:
            self.lottery_places[tree.lang][author] = len(self.lottery_authors[tree.lang])
            self.lottery_authors[tree.lang].append(author)
        by_author.setdefault(author, {})[tree.id] = tree

    def _lottery_remove(self, tree: Tree) -> None:
        by_author = self.lottery[tree.lang]
        author = self.messages[tree.id].user_id
        mine = by_author.get(author, {})
        mine.pop(tree.id, None)
        if not mine:
            by_author.pop(author, None)
            authors, places = self.lottery_authors[tree.lang], self.lottery_places[tree.lang]
            last = authors.pop()  # the last author takes the leaver's place
            place = places.pop(author)
            if last != author:
                authors[place], places[last] = last, place

    def _counts_as_child(self, m: Message) -> bool:
        """A reply taking a place under its parent: not deleted, not rejected by review,
        not by a user marked spammer."""
        return not m.deleted and m.review_result is not False and m.user_id not in self.spammers

    def _refresh_reply_parent(self, msg: Message) -> None:
        """Keep the index of messages that structurally can take another reply."""
        tree, cfg = self.trees[msg.tree_id], self.cfg
        self._touch(tree)
        limit = cfg.num_prompter_replies if msg.role == "assistant" else cfg.max_children_count
        live = sum(1 for c in msg.children if self._counts_as_child(self.messages[c]))
        if msg.review_result and not msg.late and msg.depth < cfg.max_tree_depth and live < limit:
            tree.reply_parents[msg.id] = msg
        else:
            tree.reply_parents.pop(msg.id, None)

    def _on_api_client_created(self, e: ev.ApiClientCreated) -> None:
        client = ApiClient(e.client_id, e.key_sha256, e.trusted, e.description, e.frontend_type)
        self.clients[client.id] = client
        self.clients_by_key[client.key_sha256] = client

    def _on_user_seen(self, e: ev.UserSeen) -> None:
        self.users[e.subject_id] = User(
            e.subject_id,
            e.api_client_id,
            e.auth_method,
            e.username,
            e.display_name,
            e.at,
            enabled=e.enabled,
            notes=e.notes,
            show_on_leaderboard=e.show_on_leaderboard,
            tos_accepted=e.tos_accepted,
            tos_acceptance_date=e.at if e.tos_accepted else None,
        )

    def _on_user_renamed(self, e: ev.UserRenamed) -> None:
        self.users[e.subject_id].display_name = e.display_name

    def _on_user_enabled(self, e: ev.UserEnabled) -> None:
        self.users[e.subject_id].enabled = True

    def _on_user_disabled(self, e: ev.UserDisabled) -> None:
        self.users[e.subject_id].enabled = False

    def _on_user_settings_changed(self, e: ev.UserSettingsChanged) -> None:
        u = self.users[e.subject_id]
        if e.notes is not None:
            u.notes = e.notes
        if e.show_on_leaderboard is not None:
            u.show_on_leaderboard = e.show_on_leaderboard
        if e.tos_accepted is not None:
            u.tos_accepted = e.tos_accepted
            u.tos_acceptance_date = e.at if e.tos_accepted else None

    def _on_user_deleted(self, e: ev.UserDeleted) -> None:
        u = self.users[e.subject_id]  # OA's mark_user_deleted: anonymised, its name freed
        u.deleted, u.show_on_leaderboard = True, False
        u.display_name, u.username = DELETED_USER_DISPLAY_NAME, f"{DELETED_USER_PREFIX}{u.id}"

    def _on_user_erased(self, e: ev.UserErased) -> None:
        """Their key is gone: no text of theirs stays in memory (nor in later checkpoints)."""
        u = self.users[e.subject_id]
        u.erased, u.display_name = True, ev.ERASED
        for message_id in self.authored.get(u.id, ()):
            m = self.messages.get(message_id)
            if m is not None:
                m.text = ev.ERASED
        self.user_texts.pop(u.id, None)

    def _active(self, e: ev.Event) -> None:
        u = self.users.get(e.user_id) if e.user_id is not None else None
        if u is None:
            return
        day = int(e.at.timestamp() // 86400)
        if u.last_active_day is not None and day != u.last_active_day:
            u.streak_days = u.streak_days + 1 if day == u.last_active_day + 1 else 0
        u.last_active_day, u.last_activity = day, e.at

    def _on_user_marked_spammer(self, e: ev.UserMarkedSpammer) -> None:
        u = self.users[e.subject_id]
        u.spammer = True
        self.spammers.add(u.id)
        self.spam_epoch += 1
        if e.ban:
            u.enabled = False
        self._refresh_user_messages(u.id)

    def _on_user_unmarked_spammer(self, e: ev.UserUnmarkedSpammer) -> None:
        self.users[e.subject_id].spammer = False
        self.spammers.discard(e.subject_id)
        self.spam_epoch += 1
        self._refresh_user_messages(e.subject_id)

    def _refresh_user_messages(self, user_id: UUID) -> None:
        for mid in self.authored.get(user_id, ()):
            m = self.messages[mid]
            if m.parent_id:
                self._refresh_reply_parent(self.messages[m.parent_id])
            self._refresh_reply_parent(m)

    def _on_task_assigned(self, e: ev.TaskAssigned) -> None:
        task = Task(
            e.task_id,
            e.task_type,
            self._ref(self.users, e.user_id),
            self._ref(self.clients, e.api_client_id),
            e.collective,
            e.lang,
            e.at,
            e.expires_at,
            self._ref(self.messages, e.target_message_id),
            self._ref(self.messages, e.tree_id),
            e.label_mode,
            [self._ref(self.messages, r) for r in e.ranked_message_ids],
        )
        self.tasks[task.id] = task
        if task.user_id:
            self.user_pending[task.user_id][task.id] = None
        if task.target_message_id:
            self.pending_by_target[task.target_message_id].add(task.id)
        self._forget_closed_tasks(e.at)

    def _forget_closed_tasks(self, now: datetime) -> None:
        """Tasks closed long ago go, so that the model holds live work, not all history."""
        closed = self.closed_tasks
        while closed and now - closed[0][0] > CLOSED_TASK_MEMORY:
            task = self.tasks.pop(closed.popleft()[1], None)
            if task is not None:
                self.versions.pop(task.id.int, None)  # nothing is appended to a closed task's stream
                if task.frontend_message_id:
                    self.tasks_by_frontend_id.pop((task.api_client_id, task.frontend_message_id), None)

    def _close_task(self, e: ev.Event, task_id: UUID, status: str) -> Task:
        task = self.tasks[task_id]
        task.status = status
        task.ranked_message_ids = []
        self.closed_tasks.append((e.at, task_id))
        if task.user_id:
            self.user_pending[task.user_id].pop(task_id, None)
        if task.target_message_id:
            waiting = self.pending_by_target[task.target_message_id]
            waiting.discard(task_id)
            if not waiting:
                del self.pending_by_target[task.target_message_id]
        return task

    def _on_task_acked(self, e: ev.TaskAcked) -> None:
        task = self.tasks[e.task_id]
        task.status, task.frontend_message_id = "acked", e.frontend_message_id
        self.tasks_by_frontend_id[(task.api_client_id, e.frontend_message_id)] = task.id

    def _on_task_skipped(self, e: ev.TaskSkipped) -> None:
        self._close_task(e, e.task_id, "skipped")

    def _on_task_expired(self, e: ev.TaskExpired) -> None:
        self._close_task(e, e.task_id, "expired")

    def _on_task_completed(self, e: ev.TaskCompleted) -> None:
        task = self._close_task(e, e.task_id, "done")
        task.request_sha256, task.user_message_id = e.request_sha256, e.user_message_id

    def _add_message(self, m: Message) -> None:
        self.messages[m.id] = m
        self.messages_by_frontend_id[(m.api_client_id, m.frontend_message_id)] = m.id
        if m.user_id:
            texts = self.user_texts[m.user_id]
            while texts and m.created_at - texts[0][0] > DUPLICATE_TEXT_WINDOW:
                texts.pop(0)  # the duplicate-text guard looks back this far only
            texts.append((m.created_at, hash(m.text)))
            self.authored[m.user_id].append(m.id)

    def _on_initial_prompt_submitted(self, e: ev.InitialPromptSubmitted) -> None:
        self._active(e)
        self._add_message(
            Message(
                e.message_id,
                e.message_id,
                None,
                self._ref(self.users, e.user_id),
                self._ref(self.clients, e.api_client_id),
                e.frontend_message_id,
                "prompter",
                0,
                e.text,
                e.lang,
                e.at,
                e.synthetic,
                e.model_name,
            )
        )
        tree = Tree(e.message_id, e.lang, None, e.at, self.cfg.goal_tree_size, e.origin)
        tree.message_ids.append(e.message_id)
        tree.awaiting_review[e.message_id] = self.messages[e.message_id]
        self.trees[tree.id] = tree
        self._set_state(tree, "initial_prompt_review")

    def _on_reply_submitted(self, e: ev.ReplySubmitted) -> None:
        self._active(e)
        tree = self.trees[e.tree_id]
        m = Message(
            e.message_id,
            tree.id,
            self.messages[e.parent_id].id,
            self._ref(self.users, e.user_id),
            self._ref(self.clients, e.api_client_id),
            e.frontend_message_id,
            e.role,
            e.depth,
            e.text,
            e.lang,
            e.at,
            e.synthetic,
            e.model_name,
            late=tree.state != "growing",
        )
        self._add_message(m)
        self.messages[e.parent_id].children.append(m.id)
        tree.message_ids.append(m.id)
        if not m.late:
            tree.awaiting_review[m.id] = m
        self._refresh_reply_parent(self.messages[e.parent_id])
        if m.user_id:
            self.replied.add((m.parent_id, m.user_id))

    def _on_tree_imported(self, e: ev.TreeImported) -> None:
        """Imported facts: reviews and ranks as the file says; nothing waits for review."""
        tree = Tree(e.tree_id, e.lang, None, e.at, self.cfg.goal_tree_size, e.origin, won_lottery=True)
        self.trees[tree.id] = tree
        depth: dict[UUID, int] = {}
        for im in e.messages:
            depth[im.message_id] = 0 if im.parent_id is None else depth[im.parent_id] + 1
            m = Message(
                im.message_id,
                tree.id,
                self._ref(self.messages, im.parent_id),
                self._ref(self.users, e.user_id),
                self._ref(self.clients, e.api_client_id),
                str(im.message_id),
                im.role,
                depth[im.message_id],
                im.text,
                im.lang,
                im.created_date or e.at,
                im.synthetic,
                im.model_name,
                deleted=im.deleted,
                review_result=im.review_result,
                rank=im.rank,
            )
            self._add_message(m)
            tree.message_ids.append(m.id)
            if m.parent_id:
                self.messages[m.parent_id].children.append(m.id)
        self._set_state(tree, e.state)
        for mid in tree.message_ids:
            self._refresh_reply_parent(self.messages[mid])

    def _on_message_edited(self, e: ev.MessageEdited) -> None:
        m = self.messages[e.message_id]
        m.text, m.edited = e.text, True

    def _on_message_deleted(self, e: ev.MessageDeleted) -> None:
        m = self.messages[e.message_id]
        m.deleted = True
        if m.parent_id:
            self._refresh_reply_parent(self.messages[m.parent_id])

    def _on_message_undeleted(self, e: ev.MessageUndeleted) -> None:
        for m in self.thread(self.messages[e.message_id]):
            m.deleted = False
            self._refresh_reply_parent(m)

    def _on_message_reviewed(self, e: ev.MessageReviewed) -> None:
        m = self.messages[e.message_id]
        m.review_result = e.accepted
        self.trees[m.tree_id].awaiting_review.pop(m.id, None)
        self._refresh_reply_parent(m)
        if m.parent_id:  # a rejected reply gives its place back
            self._refresh_reply_parent(self.messages[m.parent_id])

    def _on_labels_submitted(self, e: ev.LabelsSubmitted) -> None:
        self._active(e)
        m = self.messages[e.message_id]
        if e.kind == "task":
            uid = self._ref(self.users, e.user_id)
            m.task_labels[uid] = (e.labels.get("spam"), e.labels.get("lang_mismatch"))
            self.labelled_by[uid].add(m.id)
            self._touch(self.trees[m.tree_id])
        elif e.kind == "report":
            m.reports += 1
            self.flagged[m.id] = (e.at, False)

    def _on_ranking_submitted(self, e: ev.RankingSubmitted) -> None:
        self._active(e)
        tree = self.trees[self.messages[e.parent_id].tree_id]
        parent_id, uid = self.messages[e.parent_id].id, self._ref(self.users, e.user_id)
        tree.rankings[parent_id].append((uid, [self._ref(self.messages, r) for r in e.ranked_message_ids]))
        tree.rankers.add((parent_id, uid))
        self._touch(tree)
        self.ranked_by[uid].add(parent_id)

    def _on_emoji_added(self, e: ev.EmojiAdded) -> None:
        m = self.messages[e.message_id]
        m.emojis.setdefault(e.emoji, set()).add(self._ref(self.users, e.user_id))
        if e.emoji == "_skip_reply":
            self.trees[m.tree_id].skip_replies += 1
        elif e.emoji == "red_flag":
            self.flagged[m.id] = (e.at, False)

    def _on_emoji_removed(self, e: ev.EmojiRemoved) -> None:
        self.messages[e.message_id].emojis.get(e.emoji, set()).discard(e.user_id)

    def _on_tree_state_changed(self, e: ev.TreeStateChanged) -> None:
        tree = self.trees[e.tree_id]
        if e.new_state == "growing":
            tree.won_lottery = True
        if e.goal_tree_size is not None:
            tree.goal_tree_size, tree.goal_decided = e.goal_tree_size, True
        if e.new_state == "aborted_low_grade":
            tree.aborted_by_review = e.reason in ("initial_prompt_review", "review_changed")
        if e.reason == "author_marked_spammer":
            tree.spam_halted_from = e.old_state
        elif e.reason == "author_unmarked_spammer":
            tree.spam_halted_from = None
        self._set_state(tree, e.new_state)

    def _on_tree_halted(self, e: ev.TreeHalted) -> None:
        tree = self.trees[e.tree_id]
        tree.halted_from = tree.state
        self._set_state(tree, "halted_by_moderator")

    def _on_tree_resumed(self, e: ev.TreeResumed) -> None:
        tree = self.trees[e.tree_id]
        self._set_state(tree, "growing" if tree.won_lottery else "initial_prompt_review")

    def _on_ranks_computed(self, e: ev.RanksComputed) -> None:
        for rank, mid in enumerate(e.ranked_message_ids):
            m = self.messages[mid]
            m.rank = rank
            if rank == 0 and m.user_id:
                self.rank1_recent[m.user_id] = self.rank1_recent.get(m.user_id, 0) + 1
                self.rank1_log.append((e.at, m.user_id))

    def _on_flagged_message_processed(self, e: ev.FlaggedMessageProcessed) -> None:
        self.flagged[e.message_id] = (self.flagged[e.message_id][0], True)

    def _on_users_merged(self, e: ev.UsersMerged) -> None:
        """OA's merge: what the sources wrote, voted, reacted and were given is the
        destination's from now on (decisions already taken stay as they were); the source
        users are gone (their frontend identity would come back as a new user)."""
        dest = self.users[e.subject_id].id
        sources = {self.users[s].id for s in e.source_user_ids if s in self.users and s != dest}
        touched: set[UUID] = set()  # trees whose caches are stale
        for src in sources:
            self._merge_authorship(src, dest, touched)
            self._merge_votes(src, dest, touched)
            for tid in self.user_pending.pop(src, {}):
                self.tasks[tid].user_id = dest
                self.user_pending[dest][tid] = None
            del self.users[src]
        for m in self.messages.values():  # reactions have no index by user (a merge is rare)
            for users in m.emojis.values():
                if not users.isdisjoint(sources):
                    users.difference_update(sources)
                    users.add(dest)
        moved = sum(self.rank1_recent.pop(s, 0) for s in sources)
        if moved:
            self.rank1_recent[dest] = self.rank1_recent.get(dest, 0) + moved
            self.rank1_log = deque((at, dest if a in sources else a) for at, a in self.rank1_log)
        for tree_id in touched:
            self._touch(self.trees[tree_id])

    def _merge_authorship(self, src: UUID, dest: UUID, touched: set[UUID]) -> None:
        mine = self.authored.pop(src, [])
        waiting = [
            self.trees[mid] for mid in mine if mid in self.trees and self.trees[mid].state == "prompt_lottery_waiting"
        ]
        for tree in waiting:  # the lottery files trees by author
            self._lottery_remove(tree)
        for mid in mine:
            m = self.messages[mid]
            m.user_id = dest
            touched.add(m.tree_id)
            if (m.parent_id, src) in self.replied:
                self.replied.discard((m.parent_id, src))
                self.replied.add((m.parent_id, dest))
        for tree in waiting:
            self._lottery_add(tree)
        self.authored[dest].extend(mine)
        texts = self.user_texts.pop(src, [])
        if texts:
            self.user_texts[dest] = sorted([*self.user_texts.get(dest, []), *texts], key=lambda t: t[0])

    def _merge_votes(self, src: UUID, dest: UUID, touched: set[UUID]) -> None:
        for mid in self.labelled_by.pop(src, ()):
            m = self.messages[mid]
            if dest not in m.task_labels:  # both reviewed it: both votes stay, under their ids
                m.task_labels[dest] = m.task_labels.pop(src)
            self.labelled_by[dest].add(mid)
            touched.add(m.tree_id)
        for parent_id in self.ranked_by.pop(src, ()):
            tree = self.trees[self.messages[parent_id].tree_id]
            tree.rankings[parent_id] = [(dest if u == src else u, order) for u, order in tree.rankings[parent_id]]
            tree.rankers.discard((parent_id, src))
            tree.rankers.add((parent_id, dest))
            self.ranked_by[dest].add(parent_id)
            touched.add(tree.id)
