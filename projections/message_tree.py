"""The message-tree view: messages, trees and users as frontends and analysts see them."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

import msgspec

from domain import events as ev
from domain import rules
from projections.base import View


class MessageRow(msgspec.Struct, kw_only=True):
    id: UUID
    tree_id: UUID
    parent_id: UUID | None
    user_id: UUID | None
    api_client_id: UUID | None
    frontend_message_id: str
    role: str
    depth: int
    lang: str
    text: str
    created_date: datetime
    synthetic: bool = False
    model_name: str | None = None
    deleted: bool = False
    review_count: int = 0
    review_result: bool | None = None
    emojis: dict[str, list[UUID]] = {}  # emoji -> users who reacted
    rank: int | None = None
    ranking_count: int = 0
    children: list[UUID] = []
    edited: bool = False
    # facts an imported oasst file carried (no events of ours stand behind them)
    user_ref: str | None = None
    emoji_counts: dict[str, int] = {}
    imported_labels: dict[str, tuple[float, int]] = {}


def emoji_counts(m: MessageRow) -> dict[str, int]:
    """A message's reactions as exports and the SQL tables count them: imported counts plus
    ours, skip markers left out."""
    counts = dict(m.emoji_counts)
    for code, users in m.emojis.items():
        if not rules.is_skip_marker(code):
            counts[code] = counts.get(code, 0) + len(users)
    return {k: v for k, v in sorted(counts.items()) if v}


class TreeRow(msgspec.Struct, kw_only=True):
    id: UUID
    state: str
    lang: str
    created_date: datetime
    goal_tree_size: int | None = None
    origin: str | None = None
    message_ids: list[UUID] = []


class UserRow(msgspec.Struct, kw_only=True):
    id: UUID
    api_client_id: UUID
    auth_method: str
    username: str
    display_name: str
    created_date: datetime
    enabled: bool = True
    deleted: bool = False
    spammer: bool = False
    notes: str = ""
    show_on_leaderboard: bool = True
    tos_acceptance_date: datetime | None = None
    last_activity_date: datetime | None = None


class Revision(msgspec.Struct, array_like=True):
    """One revision of a message's text (OA's MessageRevision)."""

    id: UUID
    text: str
    user_id: UUID | None
    created_date: datetime


class Revisions(msgspec.Struct, array_like=True):
    items: list[Revision] = []  # oldest first: the original text, then every edit


class Flag(msgspec.Struct, array_like=True):
    """A message in OA's moderation queue: reported, or given a red flag."""

    created_date: datetime  # of the latest report or red flag
    processed: bool = False


class MessageTreeView(View):
    name = "message_tree"
    version = "v2"  # v2: revisions and the flagged-message queue
    key_types = {"messages": UUID, "trees": UUID, "users": UUID, "revisions": UUID, "flagged": UUID}

    def __init__(self) -> None:
        super().__init__()
        self.messages = self.table("messages", MessageRow)
        self.trees = self.table("trees", TreeRow)
        self.users = self.table("users", UserRow)
        self.revisions = self.table("revisions", Revisions)  # message -> its revisions, once edited
        self.flagged = self.table("flagged", Flag)  # message -> its place in the moderation queue
        self.by_frontend_id: dict[tuple[UUID | None, str], UUID] = {}
        self.users_by_name: dict[tuple[UUID, str, str], UUID] = {}
        self.spammers: set[UUID] = set()

    def restored(self) -> None:
        self.spammers = {u.id for u in self.users.values() if u.spammer}
        self.by_frontend_id = {(m.api_client_id, m.frontend_message_id): m.id for m in self.messages.values()}
        self.users_by_name = {(u.api_client_id, u.auth_method, u.username): u.id for u in self.users.values()}

    # --- users ---------------------------------------------------------------------

    def _user(self, e: ev.Event, subject: UUID) -> UserRow:
        self.users.touch(subject)
        return self.users[subject]

    def on_user_seen(self, e: ev.UserSeen) -> None:
        self.users.put(
            e.subject_id,
            UserRow(
                id=e.subject_id,
                api_client_id=e.api_client_id,
                auth_method=e.auth_method,
                username=e.username,
                display_name=e.display_name,
                created_date=e.at,
                enabled=e.enabled,
                notes=e.notes,
                show_on_leaderboard=e.show_on_leaderboard,
                tos_acceptance_date=e.at if e.tos_accepted else None,
            ),
        )
        self.users_by_name[(e.api_client_id, e.auth_method, e.username)] = e.subject_id

    def on_user_renamed(self, e: ev.UserRenamed) -> None:
        self._user(e, e.subject_id).display_name = e.display_name

    def on_user_enabled(self, e: ev.UserEnabled) -> None:
        self._user(e, e.subject_id).enabled = True

    def on_user_disabled(self, e: ev.UserDisabled) -> None:
        self._user(e, e.subject_id).enabled = False

    def on_user_settings_changed(self, e: ev.UserSettingsChanged) -> None:
        u = self._user(e, e.subject_id)
        if e.notes is not None:
            u.notes = e.notes
        if e.show_on_leaderboard is not None:
            u.show_on_leaderboard = e.show_on_leaderboard
        if e.tos_accepted is not None:
            u.tos_acceptance_date = e.at if e.tos_accepted else None

    def on_user_deleted(self, e: ev.UserDeleted) -> None:
        u = self._user(e, e.subject_id)  # OA's mark_user_deleted: anonymised, its name freed for a new user
        if self.users_by_name.get((u.api_client_id, u.auth_method, u.username)) == u.id:
            del self.users_by_name[(u.api_client_id, u.auth_method, u.username)]
        u.deleted, u.show_on_leaderboard = True, False
        u.display_name, u.username = "Deleted User", f"deleted_{u.id}"

    def on_user_erased(self, e: ev.UserErased) -> None:
        """Crypto-shredded (infra/keys.py): the user's display name and every text of their
        messages (each revision too, whoever revised it) read as erased; the messages, their
        labels, ranks and places in the trees stay. A rebuild reads their texts as erased
        already (the key is gone); this makes the live view say the same at once."""
        u = self.users.get(e.subject_id)
        if u is not None:
            u.display_name = ev.ERASED
            self.users.touch(e.subject_id)
        for m in self.messages.values():  # no index by author (an erasure is rare)
            if m.user_id == e.subject_id:
                m.text = ev.ERASED
                self.messages.touch(m.id)
        for key, revisions in self.revisions.rows.items():
            message = self.messages.get(key)
            mine = message is not None and message.user_id == e.subject_id
            if mine or any(r.user_id == e.subject_id for r in revisions.items):
                revisions.items = [
                    Revision(r.id, ev.ERASED, r.user_id, r.created_date) if mine or r.user_id == e.subject_id else r
                    for r in revisions.items
                ]
                self.revisions.touch(key)

    def on_user_marked_spammer(self, e: ev.UserMarkedSpammer) -> None:
        u = self._user(e, e.subject_id)
        u.spammer = True
        self.spammers.add(u.id)
        if e.ban:
            u.enabled = False

    def on_user_unmarked_spammer(self, e: ev.UserUnmarkedSpammer) -> None:
        self._user(e, e.subject_id).spammer = False
        self.spammers.discard(e.subject_id)

    def _active(self, e: ev.Event) -> None:
        if e.user_id is not None:
            u = self.users.get(e.user_id)
            if u is not None:
                u.last_activity_date = e.at
                self.users.touch(e.user_id)

    # --- messages ------------------------------------------------------------------

    def _add(self, m: MessageRow) -> None:
        self.messages.put(m.id, m)
        self.by_frontend_id[(m.api_client_id, m.frontend_message_id)] = m.id

    def on_initial_prompt_submitted(self, e: ev.InitialPromptSubmitted) -> None:
        self._add(
            MessageRow(
                id=e.message_id,
                tree_id=e.message_id,
                parent_id=None,
                user_id=e.user_id,
                api_client_id=e.api_client_id,
                frontend_message_id=e.frontend_message_id,
                role="prompter",
                depth=0,
                lang=e.lang,
                text=e.text,
                created_date=e.at,
                synthetic=e.synthetic,
                model_name=e.model_name,
            )
        )
        self.trees.put(
            e.message_id,
            TreeRow(
                id=e.message_id,
                state="initial_prompt_review",
                lang=e.lang,
                created_date=e.at,
                origin=e.origin,
                message_ids=[e.message_id],
            ),
        )
        self._active(e)

    def on_reply_submitted(self, e: ev.ReplySubmitted) -> None:
        self._add(
            MessageRow(
                id=e.message_id,
                tree_id=e.tree_id,
                parent_id=e.parent_id,
                user_id=e.user_id,
                api_client_id=e.api_client_id,
                frontend_message_id=e.frontend_message_id,
                role=e.role,
                depth=e.depth,
                lang=e.lang,
                text=e.text,
                created_date=e.at,
                synthetic=e.synthetic,
                model_name=e.model_name,
            )
        )
        self.messages[e.parent_id].children.append(e.message_id)
        self.messages.touch(e.parent_id)
        self.trees[e.tree_id].message_ids.append(e.message_id)
        self.trees.touch(e.tree_id)
        self._active(e)

    def _message(self, message_id: UUID) -> MessageRow:
        self.messages.touch(message_id)
        return self.messages[message_id]

    def on_message_edited(self, e: ev.MessageEdited) -> None:
        m = self._message(e.message_id)
        # as OA: the first edit keeps the original as a revision (its author, its date)
        revisions = self.revisions.get(m.id) or Revisions(
            [Revision(uuid5(m.id, "original"), m.text, m.user_id, m.created_date)]
        )
        revisions.items = [*revisions.items, Revision(e.id, e.text, e.user_id, e.at)]
        self.revisions.put(m.id, revisions)
        m.text, m.edited = e.text, True

    def on_flagged_message_processed(self, e: ev.FlaggedMessageProcessed) -> None:
        self.flagged.put(e.message_id, Flag(self.flagged[e.message_id].created_date, processed=True))

    def on_message_deleted(self, e: ev.MessageDeleted) -> None:
        self._message(e.message_id).deleted = True

    def on_message_undeleted(self, e: ev.MessageUndeleted) -> None:
        m: MessageRow | None = self._message(e.message_id)
        while m is not None:  # the message and its ancestors
            m.deleted = False
            self.messages.touch(m.id)
            m = self.messages.get(m.parent_id) if m.parent_id else None

    def on_message_reviewed(self, e: ev.MessageReviewed) -> None:
        self._message(e.message_id).review_result = e.accepted

    def on_labels_submitted(self, e: ev.LabelsSubmitted) -> None:
        if e.kind == "task":
            self._message(e.message_id).review_count += 1
        elif e.kind == "report":  # OA: a report is a red flag, which (re)enters the queue
            self.flagged.put(e.message_id, Flag(e.at))
        self._active(e)

    def on_ranking_submitted(self, e: ev.RankingSubmitted) -> None:
        for mid in e.ranked_message_ids:
            self._message(mid).ranking_count += 1
        self._active(e)

    def on_emoji_added(self, e: ev.EmojiAdded) -> None:
        m = self._message(e.message_id)
        m.emojis = {**m.emojis, e.emoji: [*m.emojis.get(e.emoji, ()), e.user_id]}
        if e.emoji == "red_flag":
            self.flagged.put(e.message_id, Flag(e.at))

    def on_emoji_removed(self, e: ev.EmojiRemoved) -> None:
        m = self._message(e.message_id)
        users = [u for u in m.emojis.get(e.emoji, ()) if u != e.user_id]
        m.emojis = {k: v for k, v in {**m.emojis, e.emoji: users}.items() if v}

    def on_ranks_computed(self, e: ev.RanksComputed) -> None:
        for rank, mid in enumerate(e.ranked_message_ids):
            self._message(mid).rank = rank

    def on_tree_imported(self, e: ev.TreeImported) -> None:
        depth: dict[UUID, int] = {}
        for im in e.messages:
            depth[im.message_id] = 0 if im.parent_id is None else depth[im.parent_id] + 1
            self._add(
                MessageRow(
                    id=im.message_id,
                    tree_id=e.tree_id,
                    parent_id=im.parent_id,
                    user_id=e.user_id,
                    api_client_id=e.api_client_id,
                    frontend_message_id=str(im.message_id),
                    role=im.role,
                    depth=depth[im.message_id],
                    lang=im.lang,
                    text=im.text,
                    created_date=im.created_date or e.at,
                    synthetic=im.synthetic,
                    model_name=im.model_name,
                    deleted=im.deleted,
                    review_count=im.review_count,
                    review_result=im.review_result,
                    rank=im.rank,
                    user_ref=im.user_ref,
                    emoji_counts=im.emojis,
                    imported_labels=im.labels,
                )
            )
            if im.parent_id is not None:
                self.messages[im.parent_id].children.append(im.message_id)
        self.trees.put(
            e.tree_id,
            TreeRow(
                id=e.tree_id,
                state=e.state,
                lang=e.lang,
                created_date=e.messages[0].created_date or e.at,
                origin=e.origin,
                message_ids=[im.message_id for im in e.messages],
            ),
        )

    # --- trees ---------------------------------------------------------------------

    def on_tree_state_changed(self, e: ev.TreeStateChanged) -> None:
        t = self.trees[e.tree_id]
        t.state = e.new_state
        if e.goal_tree_size is not None:
            t.goal_tree_size = e.goal_tree_size
        self.trees.touch(e.tree_id)

    def on_tree_halted(self, e: ev.TreeHalted) -> None:
        self.trees[e.tree_id].state = "halted_by_moderator"
        self.trees.touch(e.tree_id)

    def on_tree_resumed(self, e: ev.TreeResumed) -> None:
        t = self.trees[e.tree_id]
        t.state = "growing" if t.goal_tree_size is not None else "initial_prompt_review"
        self.trees.touch(e.tree_id)

    # --- merging users (OA's merge_users) --------------------------------------------

    def on_users_merged(self, e: ev.UsersMerged) -> None:
        """The sources' messages, reactions and revisions are the destination's; their rows go."""
        dest, sources = e.subject_id, set(e.source_user_ids)
        for m in self.messages.values():  # no index by author (a merge is rare)
            if m.user_id in sources:
                m.user_id = dest
                self.messages.touch(m.id)
            if any(u in sources for users in m.emojis.values() for u in users):
                m.emojis = {k: list(dict.fromkeys(dest if u in sources else u for u in v)) for k, v in m.emojis.items()}
                self.messages.touch(m.id)
        for key, revisions in self.revisions.rows.items():
            if any(r.user_id in sources for r in revisions.items):
                revisions.items = [
                    Revision(r.id, r.text, dest, r.created_date) if r.user_id in sources else r for r in revisions.items
                ]
                self.revisions.touch(key)
        into = self.users.get(dest)
        for source in sources:
            row = self.users.get(source)
            if row is None:
                continue
            if (
                into is not None
                and row.last_activity_date
                and (into.last_activity_date is None or row.last_activity_date > into.last_activity_date)
            ):
                into.last_activity_date = row.last_activity_date
                self.users.touch(dest)
            self.users.delete(source)
            self.users_by_name.pop((row.api_client_id, row.auth_method, row.username), None)

    # --- reading -------------------------------------------------------------------

    def is_hidden(self, m: MessageRow) -> bool:
        """Deleted, written by a user marked spammer, or below such a message."""
        return rules.is_hidden(m, self.messages.get, self.spammers)

    def thread(self, m: MessageRow) -> list[MessageRow]:
        out = [m]
        while out[-1].parent_id:
            out.append(self.messages[out[-1].parent_id])
        return out[::-1]
