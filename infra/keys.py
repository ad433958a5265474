"""Keys for sealed personal text: erasure by crypto-shredding.

The fields ``domain/events.py`` lists in ``SEALED`` (message texts, label comments,
display names) are stored encrypted with AES-GCM under a key of the user who owns
them. Keys live in their own table, ``user_keys`` (key id, user id, key), in the same
database as the log but never in it: the log stays immutable, and erasing a user deletes
their rows, after which every copy of their text (the log, its backups, Kafka's topic)
is ciphertext no one can open.

``StoreKeys`` is one store's table: it seals events on append (creating a user's key on
their first text) and destroys keys before a ``UserErased`` is appended. Reading goes
through one process-wide ring (``_Ring``): ``domain.events.decode`` hands it every event
with sealed fields, and it opens them with keys cached in memory, asking the stores'
tables only for a key it has not seen (all of a table's keys are loaded on its first
use). A key found nowhere was destroyed: its fields read as ``ERASED``, and the id is
remembered so that a rebuild does not ask again. Reading a ``UserErased`` makes the ring
forget that user's keys, so a process that cached them before another one erased the
user stops using them once it reads the erasure.
"""

from __future__ import annotations

import os
import threading
import weakref
from uuid import UUID

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg.sql import SQL, Identifier

from domain import events as ev

KEY_ID_BYTES, NONCE_BYTES = 16, 12
RECENT = 20_000  # sealed texts remembered for reuse
_PREFIX = ev.SEAL_PREFIX
_SKIP = len(_PREFIX)


def _seal_text(text: str, key_id: bytes, cipher: AESGCM) -> str:
    nonce = os.urandom(NONCE_BYTES)
    blob = key_id + nonce + cipher.encrypt(nonce, text.encode(), None)
    return _PREFIX + blob.decode("latin-1")  # one char a byte: 2x faster to undo than base64


class _Ring:
    """Key id -> cipher, for every store this process opened (stores register here)."""

    def __init__(self) -> None:
        self.ciphers: dict[bytes, AESGCM] = {}
        self.owners: dict[UUID, set[bytes]] = {}
        self.gone: set[bytes] = set()  # destroyed keys (none of the stores has them)
        self.sources: weakref.WeakSet[StoreKeys] = weakref.WeakSet()
        self.lock = threading.Lock()

    def add(self, key_id: bytes, owner: UUID, key: bytes) -> AESGCM:
        cipher = AESGCM(key)
        self.ciphers[key_id] = cipher
        self.owners.setdefault(owner, set()).add(key_id)
        self.gone.discard(key_id)
        return cipher

    def forget(self, owner: UUID) -> None:
        """A user was erased: their cached keys must not be used again (a store that
        still has one, e.g. another database with the same user id, is asked again)."""
        for key_id in self.owners.pop(owner, ()):
            self.ciphers.pop(key_id, None)
        for source in list(self.sources):
            source.by_owner.pop(owner, None)
            source.recent.clear()

    def cipher(self, key_id: bytes) -> AESGCM | None:
        cipher = self.ciphers.get(key_id)
        if cipher is not None or key_id in self.gone:
            return cipher
        with self.lock:
            unreachable = []
            for source in list(self.sources):
                try:
                    cipher = source.lookup(key_id)
                except (OperationalError, InterfaceError) as exc:
                    # another store this process opened may be gone (its database dropped): the
                    # key may well be in one that answers; if none has it, it is not known gone
                    unreachable.append(exc)
                    continue
                if cipher is not None:
                    return cipher
            if unreachable:
                raise unreachable[0]
            self.gone.add(key_id)
        return None

    def open_text(self, value: str) -> str:
        try:
            blob = value[_SKIP:].encode("latin-1")
        except UnicodeEncodeError:
            return value  # not ours (a plaintext that happens to start like a sealed one)
        cipher = self.cipher(blob[:KEY_ID_BYTES])
        if cipher is None:
            return ev.ERASED
        start = KEY_ID_BYTES + NONCE_BYTES
        return cipher.decrypt(blob[KEY_ID_BYTES:start], blob[start:], None).decode()

    def open_event(self, e: ev.Event) -> ev.Event:
        """The event with its sealed fields opened (plaintext passes through)."""
        sealed = ev.SEALED.get(type(e))
        if sealed is None:
            if type(e) is ev.TaskAssigned:
                msgspec.structs.force_setattr(e, "payload", self._open_any(e.payload))
            else:  # a UserErased
                self.forget(e.subject_id)
            return e
        for name in sealed[1]:
            value = getattr(e, name)
            if value.startswith(_PREFIX):  # (a decoded event is ours alone: set in place, no copy)
                msgspec.structs.force_setattr(e, name, self.open_text(value))
        return e

    def _open_any(self, value):
        """A payload with every sealed string in it opened."""
        if isinstance(value, str):
            return self.open_text(value) if value.startswith(_PREFIX) else value
        if isinstance(value, dict):
            return {k: self._open_any(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._open_any(v) for v in value]
        return value


RING = _Ring()
ev.set_opener(RING.open_event)


class StoreKeys:
    """The ``user_keys`` table of one store (SQLite or PostgreSQL)."""

    def __init__(self, backend: str, datastore, schema: str = ""):
        self.backend, self.datastore = backend, datastore
        self.by_owner: dict[UUID, tuple[bytes, AESGCM]] = {}  # the key new text of a user is sealed with
        self._new: dict[UUID, tuple[bytes, bytes]] = {}  # created, not yet written: owner -> (id, key)
        self._erase: list[UUID] = []
        self._loaded = False
        # (owner, text) -> sealed value, recent ones: a message is quoted by every task of its
        # tree (an identical ciphertext for an identical text says nothing the ids do not)
        self.recent: dict[tuple, str] = {}
        if backend == "sqlite":
            self.table, self.mark = "user_keys", "?"
            self.responses = "command_responses"
            self.quotes = "instr(body, ?) > 0"
        else:
            self.table, self.mark = SQL("{}.user_keys").format(Identifier(schema)).as_string(), "%s"
            self.responses = SQL("{}.command_responses").format(Identifier(schema)).as_string()
            self.quotes = "position(%s::bytea in body) > 0"
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} "
            f"(key_id {self._bytes} PRIMARY KEY, user_id TEXT NOT NULL, key {self._bytes} NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS user_keys_user ON {self.table} (user_id)",
        )
        RING.sources.add(self)

    @property
    def _bytes(self) -> str:
        return "BLOB" if self.backend == "sqlite" else "bytea"

    def _execute(self, *statements: str, params=()) -> None:
        with self.datastore.transaction(commit=True) as c:
            for sql in statements:
                c.execute(sql, params) if params else c.execute(sql)

    def _rows(self, sql: str, params=(), again: bool = True) -> list:
        try:
            with self.datastore.transaction(commit=False) as c:
                c.execute(sql, params)
                return [(bytes(r["key_id"]), UUID(r["user_id"]), bytes(r["key"])) for r in c.fetchall()]
        except (OperationalError, InterfaceError):
            # a pooled connection the server cut: the datastore reconnects on the next try (keys
            # are looked up inside folds, which have no retry of their own)
            if not again:
                raise
            return self._rows(sql, params, again=False)

    def _load(self) -> None:
        """Every key of the table, once (a rebuild then asks the database nothing)."""
        if not self._loaded:
            for key_id, owner, key in self._rows(f"SELECT key_id, user_id, key FROM {self.table}"):
                self.by_owner[owner] = (key_id, RING.add(key_id, owner, key))
            self._loaded = True

    def lookup(self, key_id: bytes) -> AESGCM | None:
        """The cipher of a key this process has not cached (None: not in this table)."""
        if self._loaded:
            sql = f"SELECT key_id, user_id, key FROM {self.table} WHERE key_id = {self.mark}"
            for _, owner, key in self._rows(sql, (key_id,)):
                RING.add(key_id, owner, key)
        else:
            self._load()
        return RING.ciphers.get(key_id)

    # --- writing ---------------------------------------------------------------------

    def seal(self, e: ev.Event) -> ev.Event:
        """``e`` as stored: its sealed fields encrypted with its owner's key (created on the
        owner's first text). A UserErased drops the owner's key for what follows."""
        sealed = ev.SEALED.get(type(e))
        if sealed is None:
            if type(e) is ev.TaskAssigned:
                return msgspec.structs.replace(e, payload=self._seal_payload(e.payload))
            if type(e) is ev.UserErased:
                self._erase.append(e.subject_id)
                self._new.pop(e.subject_id, None)
                self.by_owner.pop(e.subject_id, None)
                RING.forget(e.subject_id)
            return e
        owner = getattr(e, sealed[0])
        changes = {name: getattr(e, name) for name in sealed[1] if getattr(e, name)}
        if owner is None or not changes:
            return e
        return msgspec.structs.replace(e, **{k: self._seal_text_of(v, owner) for k, v in changes.items()})

    def _seal_text_of(self, text, owner) -> str:
        """``text`` sealed with the key of ``owner`` (a UUID, or a payload's id string)."""
        if not text or owner is None or not isinstance(text, str):
            return text
        sealed = self.recent.get((owner, text))  # (emptied by any erasure: a hit's key is alive)
        if sealed is None:
            key = owner if isinstance(owner, UUID) else UUID(owner)
            key_id, cipher = self.by_owner.get(key) or self._create(key)
            if len(self.recent) >= RECENT:
                self.recent.clear()
            sealed = self.recent[owner, text] = _seal_text(text, key_id, cipher)
        return sealed

    def _seal_message(self, m: dict) -> dict:
        return {**m, "text": self._seal_text_of(m.get("text"), m.get("user_id"))}

    def _seal_payload(self, payload: dict) -> dict:
        """A task's payload with the message texts it quotes sealed, each with its author's
        key (events.SEALED_PAYLOAD_PATHS)."""
        p = dict(payload)
        thread = (payload.get("conversation") or {}).get("messages") or []
        if thread:
            p["conversation"] = {**payload["conversation"], "messages": [self._seal_message(m) for m in thread]}
            for name in ("prompt", "reply"):  # a label task's message: the thread's last
                if name in p:
                    p[name] = self._seal_text_of(p[name], thread[-1].get("user_id"))
        replies = payload.get("reply_messages")
        if replies:
            p["reply_messages"] = [self._seal_message(m) for m in replies]
            if len(payload.get("replies") or ()) == len(replies):
                authors = [m.get("user_id") for m in replies]
                p["replies"] = [self._seal_text_of(t, a) for t, a in zip(payload["replies"], authors, strict=True)]
        return p

    def _create(self, owner: UUID) -> tuple[bytes, AESGCM]:
        self._load()
        if owner in self.by_owner:
            return self.by_owner[owner]
        key_id, key = os.urandom(KEY_ID_BYTES), AESGCM.generate_key(bit_length=256)
        self._new[owner] = (key_id, key)
        self.by_owner[owner] = (key_id, RING.add(key_id, owner, key))
        return self.by_owner[owner]

    def take(self) -> tuple[list[UUID], dict[UUID, tuple[bytes, bytes]]] | None:
        """The key changes the events sealed since the last call need (None: none): the
        store writes them with ``write`` in the events' own transaction."""
        if not self._new and not self._erase:
            return None
        changes = (self._erase, self._new)
        self._new, self._erase = {}, []
        return changes

    def write(self, c, changes) -> None:
        """On the append's cursor, before its events: destroy the keys of users erased in the
        batch, store the keys created for it."""
        erase, new = changes
        m = self.mark
        for owner in erase:
            c.execute(f"DELETE FROM {self.table} WHERE user_id = {m}", (str(owner),))
            # replies kept for retries (command_responses) hold what was sent in plain: a task
            # quoting their messages names them as its messages' user_id; a retry of one is run again
            c.execute(f"DELETE FROM {self.responses} WHERE {self.quotes}", (str(owner).encode(),))
        if new:
            rows = [(key_id, str(owner), key) for owner, (key_id, key) in new.items()]
            c.executemany(f"INSERT INTO {self.table} VALUES ({m}, {m}, {m})", rows)

    def failed(self, changes) -> None:
        """The append failed: the keys created for it were not stored (nor its events)."""
        erase, new = changes
        self.recent.clear()  # (it may hold values sealed with those keys)
        for owner, (key_id, _) in new.items():
            if self.by_owner.get(owner, (None,))[0] == key_id:
                del self.by_owner[owner]
        self._erase = erase + self._erase  # (a retried erasure deletes them again anyway)
