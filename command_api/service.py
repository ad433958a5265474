"""The command service: validate a command against the write model, emit its events
(plus the tree manager's follow-up decisions), and append them durably.

Each command is decided synchronously on the event loop (so decisions never race)
and applied to the in-memory model at once; its events are then appended by the
group committer, together with whatever other commands arrived meanwhile, in one
transaction. A response is sent only after its events are durable. If a transaction
fails, every command queued behind it fails too and the model is rebuilt from the log.

Rule for handlers: check everything first, emit afterwards. An OasstError raised
after something was emitted would leave the model ahead of the log, so it triggers a
rebuild (a bug, not a path we take on purpose).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import msgspec

from command_api import events as ev
from command_api import labels as lab
from command_api import protocol as p
from command_api.api_keys import key_digest
from command_api.errors import ErrorCode, OasstError
from command_api.model import (
    ACTIVE_STATES,
    DUPLICATE_TEXT_WINDOW,
    ApiClient,
    Message,
    Task,
    User,
    WriteModel,
    snapshot_stream,
    stream_of,
)
from command_api.tree_manager import TreeManager
from infra.checkpoints import Checkpoints, wait_for
from infra.settings import Settings
from infra.store import EventStore, GroupCommitter, Pending, StoredResponse

log = logging.getLogger("oasst.commands")

MAX_TEXT = 2000
_json = msgspec.json.Encoder()


def utcnow() -> datetime:
    return datetime.now(UTC)


def skip_marker(task_type: str) -> str | None:
    """The hidden emoji a skipped task leaves, so the item is not offered again."""
    if task_type.startswith("label_"):
        return "_skip_labeling"
    if task_type.startswith("rank_"):
        return "_skip_ranking"
    return "_skip_reply" if task_type.endswith("_reply") else None


def parse_uuid(value: str, code: ErrorCode, what: str) -> UUID:
    try:
        return UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise OasstError(f"{what} {value!r} not found", code) from None


@dataclass(frozen=True)
class Result:
    status: int
    body: bytes | None
    position: int


class Batch:
    """The events one command emits, applied to the model as they are emitted."""

    def __init__(self, service: CommandService, client_id: UUID | None, now: datetime):
        self.service, self.client_id, self.now = service, client_id, now
        self.events: list[tuple[UUID, int, ev.Event]] = []

    def emit(self, cls: type[ev.Event], *, user_id: UUID | None = None, **fields) -> ev.Event:
        event = cls(id=ev.new_id(), at=self.now, user_id=user_id, api_client_id=self.client_id, **fields)
        stream = stream_of(event)
        version = self.service.model.next_version(stream)
        self.service.model.apply(event, stream, version)
        self.events.append((stream, version, event))
        return event

    def system(self, cls: type[ev.Event], **fields) -> ev.Event:
        """A tree-manager decision: no acting user."""
        return self.emit(cls, **fields)

    def ensure_user(self, user: User, display_name: str | None = None) -> None:
        if not user.exists:
            self.emit(ev.UserSeen, user_id=user.id, subject_id=user.id, auth_method=user.auth_method,
                      username=user.username, display_name=display_name or user.display_name)
        elif display_name and display_name != user.display_name and not user.deleted:
            self.emit(ev.UserRenamed, user_id=user.id, subject_id=user.id, display_name=display_name)


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

    # --- lifecycle -----------------------------------------------------------------

    def load(self) -> None:
        """(Re)build the write model: the newest usable checkpoint, then the log after it."""
        self.model, self.manager = self._build_model()

    def _build_model(self) -> tuple[WriteModel, TreeManager]:
        started = time.perf_counter()
        store_id = self._store_id() if self.checkpoints else None
        model = self.checkpoints.load(store_id, self._event_id_at, self.settings.tree) if store_id else None
        checkpoint = model.position if model else None
        model = model or WriteModel(self.settings.tree)
        self._checkpointed = (model.position, model.event_count)
        after, folded = model.position, 0
        while True:
            page = self.store.read_stored(after, 10_000)
            if not page:
                break
            for n in page:
                model.apply(ev.decode(n.state), n.originator_id, n.originator_version)
            after, folded = page[-1].id, folded + len(page)
        model.position = after
        self.loaded = {"checkpoint": checkpoint, "folded": folded, "position": after,
                       "seconds": round(time.perf_counter() - started, 3)}
        log.info("write model at position %d: checkpoint %s, %d events folded, %.1f s", after, checkpoint,
                 folded, self.loaded["seconds"])
        return model, TreeManager(model, self.settings.tree)

    def _event_id_at(self, position: int) -> UUID | None:
        found = self.store.read_positions([position])
        return ev.decode(found[0].state).id if found else None

    def _store_id(self) -> UUID | None:
        """The id of the log's first event: names the store's checkpoints."""
        first = self.store.read_stored(0, 1)
        return ev.decode(first[0].state).id if first else None

    def _on_commit_failure(self, exc: BaseException) -> None:
        log.error("append failed (%s); rebuilding the write model from the log", exc)
        self._recover()

    def _recover(self) -> None:
        """Rebuild the model off the event loop (other requests keep being answered; commands
        get 503 until it is done), retrying while the store cannot be read."""
        if self._recovering is None:
            self._recovering = asyncio.ensure_future(self._rebuild())

    async def _rebuild(self) -> None:
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
                    delay = min(delay * 2, 5.0)
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
        if self.checkpoints and self.settings.checkpoint_every and self._recovering is None \
                and self.model.event_count - self._checkpointed[1] >= self._worth_saving:
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
                position, count = self.model.position, self.model.event_count
                pid = self.checkpoints.save_in_child(self.model, self._store_id())  # None: saved here
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
            log.warning("not checkpointing: the log has %d events since %d, the model folded %d", logged,
                        since, self.model.event_count - count)
            return False
        return True

    def _save_checkpoint_here(self) -> None:
        if self._log_matches_model():
            self.checkpoints.save(self.model, self._store_id())
            self._checkpointed = (self.model.position, self.model.event_count)

    # --- running a command --------------------------------------------------------

    def client_for_key(self, api_key: str | None) -> ApiClient | None:
        return self.model.clients_by_key.get(key_digest(api_key)) if api_key else None

    async def execute(self, client_id: UUID | None, decide, idempotency_key: str | None = None) -> Result:
        """Run ``decide(batch) -> (status, body)``; append what it emitted; answer."""
        if idempotency_key:
            ikey = (client_id, idempotency_key)
            earlier = await self._earlier_response(ikey)
            if earlier:
                return Result(earlier.status, earlier.body, earlier.position)
        while self._paused is not None:  # a checkpoint is being taken (milliseconds)
            await asyncio.shield(self._paused)
        if self._recovering is not None:
            raise OasstError("the write model is being rebuilt after a failed append; retry shortly",
                             ErrorCode.STORE_UNAVAILABLE)
        batch = Batch(self, client_id, self.clock())
        try:
            status, body = decide(batch)
        except OasstError:
            if batch.events:
                log.error("a command failed after emitting events; rebuilding the model")
                self._recover()
            raise
        i = 0
        while i < len(batch.events):  # the tree manager reacts to each event, its own too
            self.manager.react(batch.events[i][2], batch.system)
            i += 1
        encoded = body if body is None or isinstance(body, bytes) else _json.encode(body)
        if not batch.events:
            return Result(status, encoded, self.model.position)
        pending = Pending(batch.events)
        if idempotency_key:
            pending.idempotency = (client_id, idempotency_key, status, encoded or b"")
        future = self.committer.submit(pending)
        if idempotency_key:
            self.inflight[ikey] = future
        try:
            positions = await future
        except Exception as exc:
            raise OasstError(f"the event store refused the append: {exc}", ErrorCode.STORE_UNAVAILABLE) from exc
        finally:
            if idempotency_key:
                self.inflight.pop(ikey, None)
        self.model.position = max(self.model.position, positions[-1])
        for listener in self.on_commit:
            listener(positions[-1])
        every = self.settings.checkpoint_every
        if self.checkpoints and every and self.model.position - self._checkpointed[0] >= every:
            self._checkpoint_soon()
        if idempotency_key:
            self._remember(ikey, StoredResponse(status, encoded or b"", positions[-1]))
        return Result(status, encoded, positions[-1])

    async def _earlier_response(self, ikey: tuple[UUID, str]) -> StoredResponse | None:
        if ikey in self.inflight:
            try:
                await asyncio.shield(self.inflight[ikey])
            except Exception:  # noqa: BLE001 - the first attempt failed: this one runs anew
                return None
        if ikey in self.responses:
            return self.responses[ikey]
        stored = await asyncio.to_thread(self.store.stored_response, *ikey)
        if stored:
            self._remember(ikey, stored)
        return stored

    def _remember(self, ikey: tuple[UUID, str], response: StoredResponse) -> None:
        self.responses[ikey] = response
        if len(self.responses) > 100_000:
            self.responses.popitem(last=False)

    # --- helpers for handlers -----------------------------------------------------

    def _acting_user(self, client: ApiClient, ref: p.User | None) -> User:
        if ref is None:
            raise OasstError("a user is required", ErrorCode.USER_NOT_SPECIFIED)
        user = self.model.user(client.id, ref.auth_method, ref.id)
        if user.deleted or not user.enabled:
            raise OasstError("user is disabled", ErrorCode.USER_DISABLED, 403)
        return user

    def _message(self, message_id: str | UUID) -> Message:
        mid = message_id if isinstance(message_id, UUID) else parse_uuid(message_id, ErrorCode.MESSAGE_NOT_FOUND, "message")
        msg = self.model.messages.get(mid)
        if msg is None:
            raise OasstError(f"message {mid} not found", ErrorCode.MESSAGE_NOT_FOUND)
        return msg

    def _user_by_id(self, user_id: str) -> User:
        uid = parse_uuid(user_id, ErrorCode.USER_NOT_FOUND, "user")
        user = self.model.users.get(uid)
        if user is None:
            raise OasstError(f"user {uid} not found", ErrorCode.USER_NOT_FOUND)
        return user

    def _task(self, client: ApiClient, task_id: str | UUID) -> Task:
        tid = task_id if isinstance(task_id, UUID) else parse_uuid(task_id, ErrorCode.TASK_NOT_FOUND, "task")
        task = self.model.tasks.get(tid)
        if task is None or task.api_client_id != client.id:
            raise OasstError(f"task {tid} not found", ErrorCode.TASK_NOT_FOUND)
        return task

    def _check_text(self, user: User, text: str, now: datetime) -> None:
        if not text or not text.strip():
            raise OasstError("message text is empty", ErrorCode.TASK_MESSAGE_TEXT_EMPTY)
        if len(text) > MAX_TEXT:
            raise OasstError(f"message text is longer than {MAX_TEXT} characters", ErrorCode.TASK_MESSAGE_TOO_LONG)
        digest = hash(text)
        for at, h in reversed(self.model.user_texts.get(user.id, ())):
            if now - at > DUPLICATE_TEXT_WINDOW:
                break
            if h == digest:
                raise OasstError("you submitted this text recently", ErrorCode.TASK_MESSAGE_DUPLICATED)

    def _check_labels(self, labels: dict[str, float], allowed: list[str] | None, required: list[str]) -> None:
        for name, value in labels.items():
            if name not in lab.LABELS or (allowed is not None and name not in allowed):
                raise OasstError(f"invalid label {name!r}", ErrorCode.TEXT_LABELS_INVALID_LABEL)
            if not 0.0 <= value <= 1.0:
                raise OasstError(f"label {name!r} must be in [0, 1]", ErrorCode.TEXT_LABELS_INVALID_LABEL)
        missing = [n for n in required if n not in labels]
        if missing:
            raise OasstError(f"mandatory labels missing: {missing}", ErrorCode.TEXT_LABELS_MANDATORY_LABEL_MISSING)

    def _pending_count(self, user: User, now: datetime) -> int:
        """OA counts a user's open tasks handed out within the recent-task span."""
        span = timedelta(seconds=self.settings.tree.recent_tasks_span_sec)
        tasks = self.model.tasks
        return sum(1 for tid in self.model.user_pending.get(user.id, ()) if now - tasks[tid].created_at <= span)

    # --- tasks ----------------------------------------------------------------------

    async def request_task(self, client: ApiClient, req: p.TaskRequest, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            user = self._acting_user(client, req.user)
            if req.type in ("summarize_story", "rate_summary"):
                raise OasstError(f"task type {req.type} is not supported", ErrorCode.TASK_INVALID_REQUEST_TYPE)
            if self._pending_count(user, b.now) >= self.settings.tree.max_pending_tasks_per_user:
                raise OasstError("too many pending tasks", ErrorCode.TASK_TOO_MANY_PENDING, 429)
            task_id = ev.new_id()
            plan = self.manager.plan(user, req.type, req.lang, b.now, random.Random(task_id.int))
            if plan is None:
                raise OasstError(f"no task of type {req.type!r} is available", ErrorCode.TASK_REQUESTED_TYPE_NOT_AVAILABLE, 503)
            b.ensure_user(user, req.user.display_name)
            for tid in list(self.model.user_pending.get(user.id, ())):
                task = self.model.tasks[tid]
                if task.expires_at and task.expires_at < b.now:
                    b.emit(ev.TaskExpired, user_id=user.id, task_id=tid)
            payload = {"id": str(task_id), **plan.payload}
            expires = None if req.collective else b.now + timedelta(minutes=self.settings.task_expire_minutes)
            b.emit(ev.TaskAssigned, user_id=user.id, task_id=task_id, task_type=plan.task_type,
                   collective=req.collective, lang=req.lang, expires_at=expires, payload=payload,
                   target_message_id=plan.target_message_id, tree_id=plan.tree_id,
                   label_mode=plan.label_mode, ranked_message_ids=plan.ranked_message_ids or [])
            return 200, payload

        return await self.execute(client.id, decide, ikey)

    def availability(self, client: ApiClient, ref: p.User, lang: str | None) -> dict[str, int]:
        user = self.model.user(client.id, ref.auth_method, ref.id)
        options = self.manager.candidates(user, lang, self.clock())
        types = ["random", *sorted(ev.TaskType.__args__)]
        counts = {t: len(options.get(t, ())) for t in types}
        counts["random"] = sum(counts.values())
        return counts

    async def ack(self, client: ApiClient, task_id: str, req: p.TaskAck, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            task = self._task(client, task_id)
            if task.status == "acked" and task.frontend_message_id == req.message_id:
                return 204, None  # a retry
            if task.status != "open":
                raise OasstError(f"task is {task.status}", ErrorCode.TASK_ALREADY_UPDATED)
            if task.expires_at and task.expires_at < b.now:
                raise OasstError("task expired", ErrorCode.TASK_EXPIRED)
            if (client.id, req.message_id) in self.model.tasks_by_frontend_id:
                raise OasstError("frontend message id already used", ErrorCode.INVALID_FRONTEND_MESSAGE_ID)
            b.emit(ev.TaskAcked, user_id=task.user_id, task_id=task.id, frontend_message_id=req.message_id)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    async def nack(self, client: ApiClient, task_id: str, req: p.TaskNAck, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            task = self._task(client, task_id)
            if task.status == "skipped":
                return 204, None
            if not task.pending:
                raise OasstError(f"task is {task.status}", ErrorCode.TASK_NACK_FAILED)
            b.emit(ev.TaskSkipped, user_id=task.user_id, task_id=task.id, reason=req.reason)
            marker = skip_marker(task.type)
            target = self.model.messages.get(task.target_message_id) if task.target_message_id else None
            if marker and target and task.user_id and task.user_id not in target.emojis.get(marker, ()):
                b.emit(ev.EmojiAdded, user_id=task.user_id, message_id=target.id, emoji=marker)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    async def interaction(self, client: ApiClient, body: p.Interaction, ikey: str | None = None) -> Result:
        if isinstance(body, p.TextLabels) and not body.task_id:
            return await self.free_labels(client, body, ikey)

        def decide(b: Batch):
            if isinstance(body, p.MessageRating):
                raise OasstError("message_rating is not supported", ErrorCode.TASK_INVALID_RESPONSE_TYPE)
            user = self._acting_user(client, body.user)
            task = self._interaction_task(client, body)
            digest = hashlib.sha256(_json.encode(body)).hexdigest()
            done = {"type": "task_done", "id": str(task.id)}
            if task.status == "done":
                same_reply = isinstance(body, p.TextReplyToMessage) and task.user_message_id == body.user_message_id
                if task.request_sha256 == digest or same_reply:
                    return 200, done  # a retry: the first answer, nothing appended
                raise OasstError("task already done", ErrorCode.TASK_ALREADY_DONE)
            self._check_task_open(task, user, b.now)
            emit_result = self._decide_interaction(task, user, body, b.now)
            b.ensure_user(user, body.user.display_name)
            emit_result(b)
            b.emit(ev.TaskCompleted, user_id=user.id, task_id=task.id, request_sha256=digest,
                   user_message_id=getattr(body, "user_message_id", None))
            return 200, done

        return await self.execute(client.id, decide, ikey)

    def _interaction_task(self, client: ApiClient, body) -> Task:
        if isinstance(body, p.TextLabels):
            return self._task(client, body.task_id)
        tid = self.model.tasks_by_frontend_id.get((client.id, body.message_id))
        if tid is None:
            raise OasstError(f"no task acked with message id {body.message_id!r}", ErrorCode.TASK_NOT_FOUND)
        return self.model.tasks[tid]

    def _check_task_open(self, task: Task, user: User, now: datetime) -> None:
        if task.status == "open":
            raise OasstError("task was not acknowledged", ErrorCode.TASK_NOT_ACK)
        if task.status == "expired" or (task.expires_at and task.expires_at < now):
            raise OasstError("task expired", ErrorCode.TASK_EXPIRED)
        if task.status != "acked":
            raise OasstError(f"task is {task.status}", ErrorCode.TASK_ALREADY_UPDATED)
        if task.user_id != user.id and not task.collective:
            raise OasstError("task belongs to another user", ErrorCode.TASK_NOT_ASSIGNED_TO_USER, 403)

    def _decide_interaction(self, task: Task, user: User, body, now: datetime):
        """Validate the interaction against its task; return what to emit."""
        expected = {
            p.TextReplyToMessage: ("initial_prompt", "prompter_reply", "assistant_reply"),
            p.TextLabels: ("label_initial_prompt", "label_prompter_reply", "label_assistant_reply"),
            p.MessageRanking: ("rank_prompter_replies", "rank_assistant_replies", "rank_initial_prompts"),
        }[type(body)]
        if task.type not in expected:
            raise OasstError(f"a {task.type} task cannot take {type(body).__name__}", ErrorCode.TASK_PAYLOAD_TYPE_MISMATCH)
        if isinstance(body, p.TextReplyToMessage):
            return self._decide_text(task, user, body, now)
        if isinstance(body, p.TextLabels):
            if body.message_id != str(task.target_message_id):
                raise OasstError("labels are for another message", ErrorCode.TEXT_LABELS_WRONG_MESSAGE_ID)
            msg = self._message(body.message_id)
            if msg.user_id == user.id:
                raise OasstError("you cannot label your own message", ErrorCode.TEXT_LABELS_NO_SELF_LABELING)
            self._check_labels(body.labels, task.valid_labels, lab.MANDATORY_LABELS)
            return lambda b: b.emit(ev.LabelsSubmitted, user_id=user.id, message_id=msg.id, labels=body.labels,
                                    kind="task", task_id=task.id, mode=task.label_mode, text=body.text)
        n = len(task.ranked_message_ids)
        if sorted(body.ranking) != list(range(n)):
            raise OasstError(f"ranking must be a permutation of 0..{n - 1}", ErrorCode.INVALID_RANKING_VALUE)
        order = [task.ranked_message_ids[i] for i in body.ranking]
        return lambda b: b.emit(ev.RankingSubmitted, user_id=user.id, parent_id=task.target_message_id,
                                task_id=task.id, ranked_message_ids=order, not_rankable=bool(body.not_rankable))

    def _decide_text(self, task: Task, user: User, body: p.TextReplyToMessage, now: datetime):
        self._check_text(user, body.text, now)
        if (task.api_client_id, body.user_message_id) in self.model.messages_by_frontend_id:
            raise OasstError("user_message_id already used", ErrorCode.INVALID_FRONTEND_MESSAGE_ID)
        message_id = ev.new_id()
        if task.type == "initial_prompt":
            return lambda b: b.emit(
                ev.InitialPromptSubmitted, user_id=user.id, message_id=message_id,
                frontend_message_id=body.user_message_id, task_id=task.id, text=body.text,
                lang=body.lang or task.lang or "en",
            )
        parent = self.model.messages.get(task.target_message_id)
        tree = self.model.trees[parent.tree_id]
        if tree.state in ("aborted_low_grade", "halted_by_moderator") or self.model.is_hidden(parent):
            raise OasstError("the conversation was closed", ErrorCode.TREE_IN_ABORTED_STATE)
        if (parent.id, user.id) in self.model.replied:
            raise OasstError("you already replied to this message", ErrorCode.TASK_MESSAGE_DUPLICATE_REPLY)
        role = "assistant" if task.type == "assistant_reply" else "prompter"
        return lambda b: b.emit(
            ev.ReplySubmitted, user_id=user.id, message_id=message_id, frontend_message_id=body.user_message_id,
            task_id=task.id, parent_id=parent.id, tree_id=tree.id, role=role, depth=parent.depth + 1,
            text=body.text, lang=body.lang or task.lang or parent.lang,
        )

    async def close(self, client: ApiClient, req: p.TaskClose, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            tid = self.model.tasks_by_frontend_id.get((client.id, req.message_id))
            if tid is None:
                raise OasstError(f"no task acked with message id {req.message_id!r}", ErrorCode.TASK_NOT_FOUND)
            task = self.model.tasks[tid]
            if task.status != "done":
                if task.status != "acked":
                    raise OasstError(f"task is {task.status}", ErrorCode.TASK_ALREADY_UPDATED)
                b.emit(ev.TaskCompleted, user_id=task.user_id, task_id=task.id, request_sha256="close")
            return 200, {"type": "task_done", "id": str(task.id)}

        return await self.execute(client.id, decide, ikey)

    # --- labels and reactions -------------------------------------------------------------

    async def free_labels(self, client: ApiClient, body: p.TextLabels, ikey: str | None = None) -> Result:
        if body.task_id:
            return await self.interaction(client, body, ikey)

        def decide(b: Batch):
            user = self._acting_user(client, body.user)
            msg = self._message(body.message_id)
            if msg.user_id == user.id:
                raise OasstError("you cannot label your own message", ErrorCode.TEXT_LABELS_NO_SELF_LABELING)
            report = bool(body.is_report)
            self._check_labels(body.labels, lab.REPORT_LABELS if report else None, [])
            b.ensure_user(user, body.user.display_name)
            b.emit(ev.LabelsSubmitted, user_id=user.id, message_id=msg.id, labels=body.labels,
                   kind="report" if report else "free", text=body.text)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    async def emoji(self, client: ApiClient, message_id: str, req: p.MessageEmojiRequest, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            user = self._acting_user(client, req.user)
            msg = self._message(message_id)
            has = user.id in msg.emojis.get(req.emoji, ())
            add = {"toggle": not has, "add": True, "remove": False}[req.op]
            if add and req.emoji in ("+1", "-1") and msg.user_id == user.id:
                raise OasstError("no thumbs on your own message", ErrorCode.EMOJI_OP_UNSUPPORTED)
            b.ensure_user(user, req.user.display_name)
            if add and not has:
                opposite = {"+1": "-1", "-1": "+1"}.get(req.emoji)
                if opposite and user.id in msg.emojis.get(opposite, ()):
                    b.emit(ev.EmojiRemoved, user_id=user.id, message_id=msg.id, emoji=opposite)
                b.emit(ev.EmojiAdded, user_id=user.id, message_id=msg.id, emoji=req.emoji)
            elif not add and has:
                b.emit(ev.EmojiRemoved, user_id=user.id, message_id=msg.id, emoji=req.emoji)
            return 202, {
                "message_id": str(msg.id),
                "emojis": {k: len(v) for k, v in sorted(msg.emojis.items()) if v and not k.startswith("_")},
                "user_emojis": sorted(k for k, v in msg.emojis.items() if user.id in v),
            }

        return await self.execute(client.id, decide, ikey)

    # --- moderation -----------------------------------------------------------------------

    async def delete_message(self, client: ApiClient, message_id: str, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            msg = self._message(message_id)
            if not msg.deleted:
                b.emit(ev.MessageDeleted, message_id=msg.id)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    async def undelete_message(self, client: ApiClient, message_id: str, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            msg = self._message(message_id)
            if self.model.is_hidden(msg):
                b.emit(ev.MessageUndeleted, message_id=msg.id)
            return 202, None

        return await self.execute(client.id, decide, ikey)

    def tree_state(self, message_id: str) -> dict:
        tree = self.model.trees[self._message(message_id).tree_id]
        cfg = self.settings.tree
        return {
            "message_tree_id": str(tree.id), "state": tree.state, "goal_tree_size": tree.goal_tree_size,
            "max_depth": cfg.max_tree_depth, "max_children_count": cfg.max_children_count,
            "active": tree.state in ACTIVE_STATES, "origin": tree.origin,
        }

    async def set_tree_halted(self, client: ApiClient, message_id: str, halt: bool, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            tree = self.model.trees[self._message(message_id).tree_id]
            if halt and tree.state != "halted_by_moderator":
                b.emit(ev.TreeHalted, tree_id=tree.id)
            elif not halt and tree.state == "halted_by_moderator":
                b.emit(ev.TreeResumed, tree_id=tree.id)
            return 200, None

        result = await self.execute(client.id, decide, ikey)
        return Result(result.status, _json.encode(self.tree_state(message_id)), result.position)

    async def update_user(self, client: ApiClient, user_id: str, enabled: bool | None, notes: str | None,
                          show_on_leaderboard: bool | None, tos_acceptance: bool | None, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            user = self._user_by_id(user_id)
            if enabled is not None and enabled != user.enabled:
                b.emit(ev.UserEnabled if enabled else ev.UserDisabled, subject_id=user.id)
            changes = {
                k: v for k, v in (("notes", notes), ("show_on_leaderboard", show_on_leaderboard),
                                  ("tos_accepted", tos_acceptance))
                if v is not None and v != getattr(user, k)
            }
            if changes:
                b.emit(ev.UserSettingsChanged, subject_id=user.id, **changes)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    async def delete_user(self, client: ApiClient, user_id: str, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            user = self._user_by_id(user_id)
            if not user.deleted:
                b.emit(ev.UserDeleted, subject_id=user.id)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    async def set_spammer(self, client: ApiClient, user_id: str, spammer: bool, ban: bool = False,
                          ikey: str | None = None) -> Result:
        def decide(b: Batch):
            user = self._user_by_id(user_id)
            if spammer and (not user.spammer or (ban and user.enabled)):
                b.emit(ev.UserMarkedSpammer, subject_id=user.id, ban=ban)
            elif not spammer and user.spammer:
                b.emit(ev.UserUnmarkedSpammer, subject_id=user.id)
            return 204, None

        return await self.execute(client.id, decide, ikey)

    # --- imports ------------------------------------------------------------------------

    def import_user(self, client: ApiClient) -> User:
        """The hidden system user that owns imported messages (as Open-Assistant's importer)."""
        return self.model.user(client.id, "system", "oasst-import")

    async def import_trees(self, client: ApiClient, origin: str, trees: list, ikey: str | None = None) -> Result:
        """Import parsed oasst trees (infra.oasst_format.ParsedTree) as facts, one
        TreeImported event each. Trees (or messages) already present are skipped, so
        importing a file twice adds nothing the second time."""
        def decide(b: Batch):
            user = self.import_user(client)
            imported = skipped = messages = 0
            for tree in trees:
                if tree.tree_id in self.model.trees or any(m.message_id in self.model.messages for m in tree.messages):
                    skipped += 1
                    continue
                if not user.exists:
                    b.ensure_user(user, "Imported data")
                    user = self.model.users[user.id]
                b.emit(ev.TreeImported, user_id=user.id, tree_id=tree.tree_id, state=tree.state,
                       origin=tree.origin or origin, lang=tree.lang, messages=tree.messages)
                imported += 1
                messages += len(tree.messages)
            return 200, {"trees_imported": imported, "trees_skipped": skipped, "messages_imported": messages}

        return await self.execute(client.id, decide, ikey)

    def system_stats(self, exclude_user: UUID | None = None) -> dict:
        """OA's SystemStats, optionally as if one user's messages (and subtrees) were gone."""
        m = self.model
        gone: set[UUID] = set()
        if exclude_user:
            for msg in m.messages.values():
                if msg.user_id == exclude_user or (msg.parent_id in gone):
                    gone.add(msg.id)
        live = [x for x in m.messages.values() if x.id not in gone]
        active = [x for x in live if not m.is_hidden(x)]
        by_lang: dict[str, int] = {}
        for x in active:
            by_lang[x.lang] = by_lang.get(x.lang, 0) + 1
        return {
            "all": len(live), "active": len(active), "active_by_lang": dict(sorted(by_lang.items())),
            "deleted": len(live) - len(active),
            "message_trees": sum(1 for x in live if x.parent_id is None),
        }

    async def purge_user(self, client: ApiClient, user_id: str, preview: bool, ban: bool, ikey: str | None = None) -> Result:
        started = utcnow()
        user = self._user_by_id(user_id)
        before = self.system_stats()
        after = self.system_stats(exclude_user=user.id)
        position = self.model.position
        if not preview:
            position = (await self.set_spammer(client, user_id, True, ban, ikey)).position
        body = {"before": before, "after": after, "preview": preview,
                "duration": (utcnow() - started).total_seconds()}
        return Result(200, _json.encode(body), position)

    # --- snapshots ------------------------------------------------------------------------

    async def record_snapshot(self, client_id: UUID | None, manifest: dict, ikey: str | None = None) -> Result:
        """Record a snapshot whose files were written (``SnapshotCreated``, once per id)."""
        def decide(b: Batch):
            if snapshot_stream(manifest["id"]) not in self.model.versions:
                b.emit(ev.SnapshotCreated, snapshot_id=manifest["id"], position=manifest["position"],
                       policy=manifest["policy"]["name"], manifest=manifest, parent_id=manifest["parent"])
            return 201, None

        return await self.execute(client_id, decide, ikey)

    # --- API clients and users ------------------------------------------------------------

    async def create_api_client(self, req: p.CreateApiClientRequest, key: str | None = None) -> Result:
        api_key = key or secrets.token_urlsafe(32)

        def decide(b: Batch):
            if key_digest(api_key) in self.model.clients_by_key:
                return 200, api_key
            b.emit(ev.ApiClientCreated, client_id=ev.new_id(), key_sha256=key_digest(api_key),
                   description=req.description, frontend_type=req.frontend_type,
                   trusted=bool(req.trusted), admin_email=req.admin_email)
            return 200, api_key

        return await self.execute(None, decide)

    async def create_frontend_user(self, client: ApiClient, req: p.CreateFrontendUserRequest, ikey: str | None = None) -> Result:
        def decide(b: Batch):
            user = self.model.user(client.id, req.auth_method, req.id)
            if user.deleted:
                raise OasstError("user was deleted", ErrorCode.USER_DISABLED, 403)
            if not user.exists:
                b.emit(ev.UserSeen, user_id=user.id, subject_id=user.id, auth_method=req.auth_method,
                       username=req.id, display_name=req.display_name, enabled=req.enabled,
                       show_on_leaderboard=req.show_on_leaderboard, notes=req.notes or "",
                       tos_accepted=bool(req.tos_acceptance))
            else:
                b.ensure_user(user, req.display_name)
                if req.enabled != user.enabled:
                    b.emit(ev.UserEnabled if req.enabled else ev.UserDisabled, subject_id=user.id)
            return 200, None

        result = await self.execute(client.id, decide, ikey)
        user = self.model.users[self.model.user(client.id, req.auth_method, req.id).id]
        return Result(200, _json.encode(frontend_user(user)), result.position)


def frontend_user(user: User) -> dict:
    """OA's FrontEndUser."""
    return {
        "id": user.username, "display_name": user.display_name, "auth_method": user.auth_method,
        "user_id": str(user.id), "enabled": user.enabled, "deleted": user.deleted, "notes": user.notes,
        "created_date": user.created_at.isoformat() if user.created_at else None,
        "show_on_leaderboard": user.show_on_leaderboard, "streak_days": None,
        "streak_last_day_date": None, "last_activity_date": None, "tos_acceptance_date": None,
    }
