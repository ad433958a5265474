"""The command service: the shell around the domain core (domain/decide.py).

It runs one command at a time on the event loop (so decisions never race): ``decide``
checks it against the in-memory write model and emits its events, the tree manager
reacts to each of them with its own decisions, and the group committer appends all of
them, together with whatever other commands arrived meanwhile, in one transaction. A
reply is sent only after its events are durable. It also keeps idempotent replies
(``Idempotency-Key``), loads the model from a checkpoint and the log's tail, takes
checkpoints, and rebuilds the model off the event loop after a failed append (commands
get 503 meanwhile; every command queued behind a failed one fails with it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from command_api.api_keys import key_digest
from domain import commands as c
from domain import events as ev
from domain import protocol as p
from domain.decide import (
    Batch,
    State,
    decide,
    import_user,
    system_stats,
    user_by_id,
    user_messages_to_delete,
)
from domain.errors import ErrorCode, OasstError
from domain.model import ApiClient, User, WriteModel
from domain.tree_manager import TreeManager
from infra.checkpoints import Checkpoints, wait_for
from infra.settings import Settings
from infra.store import EventStore, GroupCommitter, Pending, StoredResponse

log = logging.getLogger("oasst.commands")

_json = msgspec.json.Encoder()


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Result:
    """A command's reply (JSON bytes, or None) and the log position it is durable at."""

    body: bytes | None
    position: int


class CommandService:
    def __init__(self, settings: Settings, store: EventStore, clock=utcnow, checkpoints: Checkpoints | None = None):
        self.clock = clock  # the seed generator passes a simulated clock
        self.settings = settings
        self.store = store
        self.checkpoints = checkpoints
        self.model = WriteModel(settings.tree)
        self.manager = TreeManager(self.model, settings.tree)
        self.committer = GroupCommitter(store, on_failure=self._on_commit_failure)
        self.on_commit: list = []  # callables(position), e.g. the projection runner's wake-up
        self.responses: OrderedDict[tuple[UUID, str], StoredResponse] = OrderedDict()
        self.inflight: dict[tuple[UUID, str], asyncio.Future] = {}
        self.loaded: dict = {}  # how the model was built at start: from which checkpoint, what was folded
        self._checkpointed = (0, 0)  # (position, model.event_count) of the last checkpoint
        self._checkpointing: asyncio.Task | None = None
        self._paused: asyncio.Future | None = None  # deciding waits while a checkpoint is taken
        self._recovering: asyncio.Task | None = None  # a rebuild after a failed append
        self._store_id: UUID | None = None  # the id of the log's first event, once there is one

    # --- lifecycle -----------------------------------------------------------------

    def load(self) -> None:
        """(Re)build the write model: the newest usable checkpoint, then the log after it."""
        self.model, self.manager = self._build_model()

    def _build_model(self) -> tuple[WriteModel, TreeManager]:
        started = time.perf_counter()
        store_id = self.store_id() if self.checkpoints else None
        model = self.checkpoints.load(store_id, self._event_id_at, self.settings.tree) if store_id else None
        checkpoint = model.position if model else None
        model = model or WriteModel(self.settings.tree)
        self._checkpointed = (model.position, model.event_count)
        after, folded = model.position, 0
        while True:
            page = self.store.read_stored(after, 10_000)
            if not page:
                break
            for n in page:  # (the model needs no task payload: read without it, and faster)
                model.apply(ev.decode_summary(n.state), n.originator_id, n.originator_version)
            after, folded = page[-1].id, folded + len(page)
        model.position = after
        self.loaded = {
            "checkpoint": checkpoint,
            "folded": folded,
            "position": after,
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info(
            "write model at position %d: checkpoint %s, %d events folded, %.1f s",
            after,
            checkpoint,
            folded,
            self.loaded["seconds"],
        )
        return model, TreeManager(model, self.settings.tree)

    def _event_id_at(self, position: int) -> UUID | None:
        found = self.store.read_positions([position])
        return ev.decode(found[0].state).id if found else None

    def store_id(self) -> UUID | None:
        """The id of the log's first event: names the store's checkpoints (read once)."""
        if self._store_id is None:
            first = self.store.read_stored(0, 1)
            self._store_id = ev.decode(first[0].state).id if first else None
        return self._store_id

    def _on_commit_failure(self, exc: BaseException) -> None:
        log.error("append failed (%s); rebuilding the write model from the log", exc)
        self._recover()

    def _recover(self) -> None:
        """Rebuild the model off the event loop (other requests keep being answered; commands
        get 503 until it is done), retrying while the store cannot be read."""
        if self._recovering is None:
            self._recovering = asyncio.ensure_future(self._rebuild())

    async def _rebuild(self) -> None:
        # While the database is away a try fails at once (infra/store.py), so trying every
        # second costs nothing and commands resume within about a second of its return.
        delay = 0.25
        try:
            while True:
                try:
                    await self.committer.drain()
                    self.model, self.manager = await asyncio.to_thread(self._build_model)
                    return
                except Exception as exc:  # noqa: BLE001 - the store is away: try again
                    log.warning("rebuilding the write model failed (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
        finally:
            self._recovering = None

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        self.committer.start()
        if self.settings.bootstrap_api_key:
            if key_digest(self.settings.bootstrap_api_key) not in self.model.clients_by_key:
                await self.create_api_client(
                    p.CreateApiClientRequest("bootstrap client", "dev", trusted=True),
                    key=self.settings.bootstrap_api_key,
                )
        if self.checkpoints and self.settings.checkpoint_every and self.loaded["folded"] >= self._worth_saving:
            self._checkpoint_soon()  # a long fold at start: the next start should not repeat it

    async def stop(self) -> None:
        await self.committer.drain()
        if self._checkpointing:
            await self._checkpointing
        if (
            self.checkpoints
            and self.settings.checkpoint_every
            and self._recovering is None
            and self.model.event_count - self._checkpointed[1] >= self._worth_saving
        ):
            await asyncio.to_thread(self._save_checkpoint_here)

    # --- checkpoints ----------------------------------------------------------------

    @property
    def _worth_saving(self) -> int:
        """Events whose fold a checkpoint should spare the next start (small stores fold in no time)."""
        return max(1, self.settings.checkpoint_every // 10)

    def _checkpoint_soon(self) -> asyncio.Task:
        if self._checkpointing is None:
            self._checkpointing = asyncio.ensure_future(self._take_checkpoint())
        return self._checkpointing

    async def checkpoint(self) -> int | None:
        """Save the model at its position without stalling requests for long: deciding
        pauses until every decided command is committed, a child process is forked to write
        the model's copy-on-write image, and deciding resumes. Returns the position saved
        (None if it was not saved; one already being taken is awaited)."""
        return await asyncio.shield(self._checkpoint_soon())

    async def _take_checkpoint(self) -> int | None:
        try:
            self._paused = asyncio.get_running_loop().create_future()
            try:
                await self.committer.drain()
                self.model.position = max(self.model.position, self.committer.last_position)
                if self._recovering or not await asyncio.to_thread(self._log_matches_model):
                    return None
                store_id = await asyncio.to_thread(self.store_id)
                position, count = self.model.position, self.model.event_count
                pid = self.checkpoints.save_in_child(self.model, store_id)  # None: saved here
            finally:
                paused, self._paused = self._paused, None
                paused.set_result(None)
            if pid is not None and not await asyncio.to_thread(wait_for, pid):
                log.error("writing a checkpoint at %d failed (see the log above)", position)
                return None
            self._checkpointed = (position, count)
            return position
        finally:
            self._checkpointing = None

    def _log_matches_model(self) -> bool:
        """The log holds exactly the events the model folded (no other process appended)."""
        since, count = self._checkpointed
        logged = self.store.count_events(since, self.model.position)
        if logged != self.model.event_count - count:
            log.warning(
                "not checkpointing: the log has %d events since %d, the model folded %d",
                logged,
                since,
                self.model.event_count - count,
            )
            return False
        return True

    def _save_checkpoint_here(self) -> None:
        if self._log_matches_model():
            self.checkpoints.save(self.model, self.store_id())
            self._checkpointed = (self.model.position, self.model.event_count)

    # --- running a command --------------------------------------------------------

    def client_for_key(self, api_key: str | None) -> ApiClient | None:
        return self.model.clients_by_key.get(key_digest(api_key)) if api_key else None

    @property
    def state(self) -> State:
        return State(self.model, self.manager, self.settings.task_expire_minutes)

    async def execute(self, command: c.Command, idempotency_key: str | None = None) -> Result:
        """Decide ``command``, let the tree manager react, append what was emitted; reply
        once it is durable. A retry with the same Idempotency-Key gets the first reply."""
        ikey = (command.client_id, idempotency_key) if idempotency_key else None
        if ikey is not None:
            earlier = await self._earlier_response(ikey)
            if earlier:
                return Result(earlier.body or None, earlier.position)
        while self._paused is not None:  # a checkpoint is being taken (milliseconds)
            await asyncio.shield(self._paused)
        batch, body = self._decide(command)
        encoded = None if body is None else _json.encode(body)
        if not batch.events:
            return Result(encoded, self.model.position)
        future = self._submit(batch, ikey, encoded)
        try:
            positions = await future
        except Exception as exc:
            raise OasstError(f"the event store refused the append: {exc}", ErrorCode.STORE_UNAVAILABLE) from exc
        finally:
            if ikey is not None:
                self.inflight.pop(ikey, None)
        self._committed(positions[-1], ikey, encoded)
        return Result(encoded, positions[-1])

    # execute's steps, as plain calls (no coroutines: they run once per command)

    def _decide(self, command: c.Command) -> tuple[Batch, object]:
        """The command's reply body and its batch: its events and the tree manager's reactions."""
        self._refuse_while_recovering()
        batch = Batch(self.model, command.client_id, self.clock())
        try:
            body = decide(command, self.state, batch)
        except OasstError:
            if batch.events:
                log.error("a command failed after emitting events; rebuilding the model")
                self._recover()
            raise
        i = 0
        while i < len(batch.events):  # the tree manager reacts to each event, its own too
            self.manager.react(batch.events[i][2], batch.system)
            i += 1
        return batch, body

    def _refuse_while_recovering(self) -> None:
        if self._recovering is not None:
            raise OasstError(
                "the write model is being rebuilt after a failed append; retry shortly", ErrorCode.STORE_UNAVAILABLE
            )

    def _submit(self, batch: Batch, ikey: tuple[UUID, str] | None, encoded: bytes | None) -> asyncio.Future:
        """Queue the batch's events for the group committer (with the reply to keep, under a key)."""
        pending = Pending(batch.events)
        if ikey is not None:  # (the status column is a fixed 200: each route answers with its own)
            pending.idempotency = (*ikey, 200, encoded or b"")
        future = self.committer.submit(pending)
        if ikey is not None:
            self.inflight[ikey] = future
        return future

    def _committed(self, position: int, ikey: tuple[UUID, str] | None, encoded: bytes | None) -> None:
        """The command's events are durable up to ``position``: tell the listeners, maybe
        take a checkpoint, and keep the reply for retries."""
        self.model.position = max(self.model.position, position)
        for listener in self.on_commit:
            listener(position)
        every = self.settings.checkpoint_every
        if self.checkpoints and every and self.model.position - self._checkpointed[0] >= every:
            self._checkpoint_soon()
        if ikey is not None:
            self._remember(ikey, StoredResponse(200, encoded or b"", position))

    async def _earlier_response(self, ikey: tuple[UUID, str]) -> StoredResponse | None:
        if ikey in self.inflight:
            try:
                await asyncio.shield(self.inflight[ikey])
            except Exception:  # noqa: BLE001 - the first attempt failed: this one runs anew
                return None
        if ikey in self.responses:
            return self.responses[ikey]
        self._refuse_while_recovering()  # (the store may well be away: do not ask it)
        stored = await asyncio.to_thread(self.store.stored_response, *ikey)
        if stored:
            self._remember(ikey, stored)
        return stored

    def _forget_responses_naming(self, user_id: bytes) -> None:
        """Replies kept for retries that name an erased user (a task quoting their messages) go,
        as the store's copies went with their key: a retry of one runs again."""
        for ikey in [k for k, r in self.responses.items() if user_id in r.body]:
            del self.responses[ikey]

    def _remember(self, ikey: tuple[UUID, str], response: StoredResponse) -> None:
        self.responses[ikey] = response
        if len(self.responses) > 100_000:
            self.responses.popitem(last=False)

    # --- Open-Assistant's request bodies as commands (the routes and the seeder call these) ---

    async def request_task(self, client: ApiClient, req: p.TaskRequest, ikey: str | None = None) -> Result:
        return await self.execute(
            c.RequestTask(
                client_id=client.id, user=req.user, task_type=req.type, lang=req.lang, collective=req.collective
            ),
            ikey,
        )

    async def ack(self, client: ApiClient, task_id: str, req: p.TaskAck, ikey: str | None = None) -> Result:
        return await self.execute(
            c.AckTask(client_id=client.id, task_id=task_id, frontend_message_id=req.message_id), ikey
        )

    async def nack(self, client: ApiClient, task_id: str, req: p.TaskNAck, ikey: str | None = None) -> Result:
        return await self.execute(c.NackTask(client_id=client.id, task_id=task_id, reason=req.reason), ikey)

    async def interaction(self, client: ApiClient, body: p.Interaction, ikey: str | None = None) -> Result:
        if isinstance(body, p.TextLabels) and not body.task_id:
            return await self.execute(c.LabelMessage(client_id=client.id, labels=body), ikey)
        return await self.execute(c.SubmitInteraction(client_id=client.id, interaction=body), ikey)

    async def free_labels(self, client: ApiClient, body: p.TextLabels, ikey: str | None = None) -> Result:
        return await self.interaction(client, body, ikey)  # with a task_id it is the task's result

    async def close(self, client: ApiClient, req: p.TaskClose, ikey: str | None = None) -> Result:
        return await self.execute(c.CloseTask(client_id=client.id, frontend_message_id=req.message_id), ikey)

    async def emoji(
        self, client: ApiClient, message_id: str, req: p.MessageEmojiRequest, ikey: str | None = None
    ) -> Result:
        return await self.execute(
            c.React(client_id=client.id, message_id=message_id, user=req.user, emoji=req.emoji, op=req.op), ikey
        )

    async def delete_message(self, client: ApiClient, message_id: str, ikey: str | None = None) -> Result:
        return await self.execute(c.DeleteMessage(client_id=client.id, message_id=message_id), ikey)

    async def undelete_message(self, client: ApiClient, message_id: str, ikey: str | None = None) -> Result:
        return await self.execute(c.UndeleteMessage(client_id=client.id, message_id=message_id), ikey)

    async def set_tree_halted(self, client: ApiClient, message_id: str, halt: bool, ikey: str | None = None) -> Result:
        return await self.execute(c.SetTreeHalted(client_id=client.id, message_id=message_id, halt=halt), ikey)

    async def update_user(
        self,
        client: ApiClient,
        user_id: str,
        enabled: bool | None,
        notes: str | None,
        show_on_leaderboard: bool | None,
        tos_acceptance: bool | None,
        ikey: str | None = None,
        *,
        display_name: str | None = None,
    ) -> Result:
        return await self.execute(
            c.UpdateUser(
                client_id=client.id,
                user_id=user_id,
                enabled=enabled,
                notes=notes,
                show_on_leaderboard=show_on_leaderboard,
                tos_accepted=tos_acceptance,
                display_name=display_name,
            ),
            ikey,
        )

    async def delete_user(self, client: ApiClient, user_id: str, ikey: str | None = None) -> Result:
        return await self.execute(c.DeleteUser(client_id=client.id, user_id=user_id), ikey)

    async def erase_user(
        self, client_id: UUID | None, user_id: str, reason: str = "", ikey: str | None = None
    ) -> Result:
        """Crypto-shred a user (infra/keys.py): the store destroys their key before the
        UserErased is appended. Checkpoints taken before it hold their text in plain (the
        model in memory no longer does): a fresh one is taken, the older ones deleted."""
        result = await self.execute(c.EraseUser(client_id=client_id, user_id=user_id, reason=reason), ikey)
        self._forget_responses_naming(user_id.lower().encode())  # (an id as replies write it: lower-case hex)
        if self.checkpoints and result.position > self._checkpointed[0]:
            if self.settings.checkpoint_every:
                await self.checkpoint()
            store_id = await asyncio.to_thread(self.store_id)
            await asyncio.to_thread(self.checkpoints.discard_before, store_id, result.position)
        return result

    async def set_spammer(
        self, client: ApiClient, user_id: str, spammer: bool, ban: bool = False, ikey: str | None = None
    ) -> Result:
        return await self.execute(c.SetSpammer(client_id=client.id, user_id=user_id, spammer=spammer, ban=ban), ikey)

    async def import_trees(self, client: ApiClient, origin: str, trees: list, ikey: str | None = None) -> Result:
        return await self.execute(c.ImportTrees(client_id=client.id, origin=origin, trees=trees), ikey)

    async def record_snapshot(self, client_id: UUID | None, manifest: dict, ikey: str | None = None) -> Result:
        return await self.execute(c.RecordSnapshot(client_id=client_id, manifest=manifest), ikey)

    async def create_api_client(self, req: p.CreateApiClientRequest, key: str | None = None) -> Result:
        api_key = key or secrets.token_urlsafe(32)
        result = await self.execute(
            c.CreateApiClient(
                client_id=None,
                key_sha256=key_digest(api_key),
                description=req.description,
                frontend_type=req.frontend_type,
                trusted=bool(req.trusted),
                admin_email=req.admin_email,
            )
        )
        return Result(_json.encode(api_key), result.position)

    async def create_frontend_user(
        self, client: ApiClient, req: p.CreateFrontendUserRequest, ikey: str | None = None
    ) -> Result:
        return await self.execute(
            c.UpsertFrontendUser(
                client_id=client.id,
                auth_method=req.auth_method,
                username=req.id,
                display_name=req.display_name,
                enabled=req.enabled,
                show_on_leaderboard=req.show_on_leaderboard,
                notes=req.notes,
                tos_accepted=req.tos_acceptance,
                trusted=client.trusted,
            ),
            ikey,
        )

    async def purge_user(
        self, client: ApiClient, user_id: str, preview: bool, ban: bool, ikey: str | None = None
    ) -> Result:
        """OA's purge: counts before and after (``preview``: nothing else); else a spam mark,
        which hides the user's messages and takes their votes back (events, nothing destroyed)."""
        started = utcnow()
        user = user_by_id(self.state, user_id)
        before, after = system_stats(self.state), system_stats(self.state, exclude_user=user.id)
        position = self.model.position
        if not preview:
            position = (await self.set_spammer(client, user_id, True, ban, ikey)).position
        body = {"before": before, "after": after, "preview": preview, "duration": (utcnow() - started).total_seconds()}
        return Result(_json.encode(body), position)

    def spam_mark_preview(self, user_id: str, spammer: bool = True) -> dict:
        """What marking (or unmarking) a spammer would decide, appending nothing: the
        acceptances and ranks that flip and the trees that halt or resume (the console shows
        it before the moderator confirms). Empty when the user already is what is asked."""
        user = user_by_id(self.state, user_id)
        planned = self.manager.preview_spam_mark(user.id, spammer) if user.spammer != spammer else []
        decisions = [self._planned(cls, fields) for cls, fields in planned]
        kinds = [d["type"] for d in decisions]
        return {
            "user_id": str(user.id),
            "spammer": spammer,
            "currently_spammer": user.spammer,
            "position": self.model.position,
            "acceptances_flipped": kinds.count("message_reviewed"),
            "ranks_changed": kinds.count("ranks_computed"),
            "trees_changed": kinds.count("tree_state_changed"),
            "messages_authored": len(self.model.authored.get(user.id, ())),
            "decisions": decisions,
        }

    def _planned(self, cls: type[ev.Event], fields: dict) -> dict:
        """One planned decision as plain data, with what it replaces (the current value)."""
        out = {"type": cls.__struct_config__.tag, **msgspec.to_builtins(fields)}
        if cls is ev.MessageReviewed:
            out["was_accepted"] = self.model.messages[fields["message_id"]].review_result
        elif cls is ev.RanksComputed:
            parent = self.model.messages[fields["parent_id"]]
            ranked = [self.model.messages[c] for c in parent.children if self.model.messages[c].rank is not None]
            out["was_ranked_message_ids"] = [str(m.id) for m in sorted(ranked, key=lambda m: m.rank)]
        return out

    # --- moderation (issue #14) ----------------------------------------------------------------------

    async def edit_message(
        self, client: ApiClient, message_id: str, req: p.MessageEditRequest, ikey: str | None = None
    ) -> Result:
        return await self.execute(
            c.EditMessage(client_id=client.id, message_id=message_id, user=req.user, new_content=req.new_content), ikey
        )

    async def delete_user_messages(
        self,
        client: ApiClient,
        user_id: str | None = None,
        auth_method: str | None = None,
        username: str | None = None,
        ikey: str | None = None,
    ) -> Result:
        """All of a user's messages, by our id or by the client's frontend identity."""
        return await self.execute(
            c.DeleteUserMessages(client_id=client.id, user_id=user_id, auth_method=auth_method, username=username), ikey
        )

    async def purge_user_messages(
        self,
        client: ApiClient,
        user_id: str,
        purge_initial_prompts: bool,
        min_date: datetime | None,
        max_date: datetime | None,
        preview: bool,
        ikey: str | None = None,
    ) -> Result:
        """OA's purge of a user's messages: counts before and after (``preview``: nothing else);
        else the picked messages are marked deleted (events; OA destroys them and their
        subtrees, which is what ``after`` counts)."""
        started = utcnow()
        command = c.DeleteUserMessages(
            client_id=client.id,
            user_id=user_id,
            initial_prompts=purge_initial_prompts,
            min_date=min_date,
            max_date=max_date,
            reason="user_messages_purged",
        )
        picked = {m.id for m in user_messages_to_delete(self.state, command)}
        before, after = system_stats(self.state), system_stats(self.state, exclude_messages=picked)
        position = self.model.position
        if not preview:
            position = (await self.execute(command, ikey)).position
        body = {"before": before, "after": after, "preview": preview, "duration": (utcnow() - started).total_seconds()}
        return Result(_json.encode(body), position)

    async def process_flagged(self, client: ApiClient, message_id: str, ikey: str | None = None) -> Result:
        return await self.execute(c.ProcessFlaggedMessage(client_id=client.id, message_id=message_id), ikey)

    async def merge_users(self, client: ApiClient, req: p.MergeUsersRequest, ikey: str | None = None) -> Result:
        return await self.execute(
            c.MergeUsers(
                client_id=client.id,
                destination_user_id=str(req.destination_user_id),
                source_user_ids=[str(u) for u in req.source_user_ids],
            ),
            ikey,
        )

    # --- questions the command side answers from its model ----------------------------------------

    def availability(self, client: ApiClient, ref: p.User, lang: str | None) -> dict[str, int]:
        user = self.model.user(client.id, ref.auth_method, ref.id)
        options = self.manager.candidates(user, lang, self.clock())
        counts = {t: len(options.get(t, ())) for t in p.TaskRequestType.__args__}  # OA: all twelve, 0 where none
        counts["random"] = sum(counts.values())
        return counts

    def import_user(self, client: ApiClient) -> User:
        return import_user(self.state, client.id)
