"""The batched projection runner: reads the log in pages, folds each page into every
view in memory, and writes the views' changed rows with their new positions in one
transaction. After a crash, views resume from their stored rows and positions, so every
event is applied exactly once to what is stored.

Inside ``oasst serve`` the runner shares the event loop with the query routes: pages
are read and rows written in a worker thread, folds run on the loop in slices, so a
query never sees a half-applied event.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from domain import events as ev
from infra.store import STORE_AWAY_ERRORS, EventStore
from projections.base import View
from projections.consensus import ConsensusView
from projections.history import HistoryView
from projections.leaderboard import LeaderboardView
from projections.message_tree import MessageTreeView
from projections.relational import VOTE_EVENTS, Changes
from projections.storage import ViewStorage

log = logging.getLogger("oasst.projections")


@dataclass
class _Flush:
    """What one flush takes from the views, to write, or to give back if writing fails."""

    changes: list = field(default_factory=list)
    history: tuple | None = None
    history_view: HistoryView | None = None
    relational: Changes | None = None  # the SQL read models' rows (of the live message-tree view)
    submissions: list = field(default_factory=list)  # (position, event) behind its label_votes and rankings
    taken: list = field(default_factory=list)  # (table, keys)


def take_view_changes(view: View, taken: list) -> tuple[str, int, list]:
    """(view key, position, changed rows) of one view; the taken keys go to ``taken``
    as (table, keys), to be given back if writing fails."""
    rows = []
    for table in view.tables.values():
        keys, changed = table.take_changes()
        taken.append((table, keys))
        rows.extend((table.name, k, v) for k, v in changed)
    return view.key, view.position, rows


def _merged(changes: Changes | None, more: Changes) -> Changes:
    """One flush's SQL rows from two views (the tables of each are their own)."""
    if changes is None:
        return more
    changes.upserts.update(more.upserts)
    changes.deletes.update(more.deletes)
    return changes


def all_views() -> list[View]:
    return [MessageTreeView(), ConsensusView(), LeaderboardView(), HistoryView()]


@contextlib.contextmanager
def gc_paused():
    """Folding creates millions of long-lived rows; the cyclic collector would rescan
    them again and again (it tripled catch-up time). Pause it, then freeze what was built."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


class ProjectionRunner:
    def __init__(
        self, store: EventStore, views: list[View] | None = None, page_size: int = 10_000, flush_every: int = 50_000
    ):
        self.store = store
        self.storage = ViewStorage(store)
        self.views = views if views is not None else all_views()
        self.by_name = {v.name: v for v in self.views}
        self.page_size = page_size
        self.flush_every = flush_every  # events folded between two flushes during catch-up
        self.position = 0  # every view has folded the log up to here
        self._wakeup = asyncio.Event()
        self._reached = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # set once the stored views are restored
        self._restoring: asyncio.Future | None = None
        self._ready_at = 0  # the log's end at start: ready once folded
        self.current_at = time.monotonic()  # when a read last found the views at the log's end
        self.away_since: float | None = None  # when reading the log began to fail (the store is away)
        self._submissions: list = []  # label and ranking submissions the live message-tree view folded, unwritten
        # the view the SQL read models follow (none while rebuilding or in a Kafka shard)
        self.live_tree = next((v for v in self.views if isinstance(v, MessageTreeView) and not v.suffix), None)
        # whose label and ranking submissions are kept: the live view's go to the tables at each flush;
        # a rebuilt one's wait for its switch (projections/rebuild.py)
        self.submissions_of: MessageTreeView | None = self.live_tree
        # a rebuild's catch-up writes rows once, at its end (an interrupted one starts over), and
        # only the history entries between: each flush rewrites every changed row whole
        self.rows_at_end = False
        self.live_board = next((v for v in self.views if isinstance(v, LeaderboardView) and not v.suffix), None)
        self._writer: ThreadPoolExecutor | None = None  # a rebuild's history writes (flush_history)
        self._history_writes: list[Future] = []

    # --- storage -------------------------------------------------------------------

    def restore(self) -> None:
        """Load every view's rows and position (what the last flush wrote)."""
        with gc_paused():
            self._restore()

    def _restore(self) -> None:
        for view in self.views:
            view.position = self.storage.position(view.key)
            for table, key, value in self.storage.rows(view.key):
                view.tables[table].restore(key, value, view.key_types[table])
            view.restored()
        self.position = min((v.position for v in self.views), default=0)

    def take_submissions(self) -> list:
        """The kept submissions not yet handed to the tables (a rebuild's, for its switch)."""
        taken, self._submissions = self._submissions, []
        return taken

    def flush_history(self) -> None:
        """Write only the history entries folded so far (what ``rows_at_end`` flushes between). On
        PostgreSQL in a thread while the fold goes on (the COPY of OA's 9M entries kept the fold
        waiting ~6 s); the writes are waited for before the last flush (``_history_written``), and
        one that failed fails the rebuild, which starts over."""
        view = next((v for v in self.views if isinstance(v, HistoryView)), None)
        if view is None:
            return
        entries = view.take_entries()
        if self.storage.pg:  # (SQLite: a connection per thread, and an in-memory store is one thread's)
            view.entries_written(True)  # handed to the writer: a failure surfaces from its future
            self._writer = self._writer or ThreadPoolExecutor(1)
            self._history_writes.append(self._writer.submit(self._write_history, view.key, entries))
            return
        try:
            self._write_history(view.key, entries)
        except BaseException:
            view.entries_written(False)
            raise
        view.entries_written(True)

    def _write_history(self, key: str, entries: list) -> None:
        with self.storage.datastore.transaction(commit=True) as c:
            self.storage.write_history(c, (key, entries))

    def _history_written(self) -> None:
        """Wait for the history writes handed to the writer thread (raising the first failure)."""
        writes, self._history_writes = self._history_writes, []
        for write in writes:
            write.result()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def flush(self) -> None:
        flush = self._collect()
        self._done(flush, self._write(flush))

    def _collect(self) -> _Flush:
        """Take every view's changed rows (encoded now, on the thread that folds)."""
        flush = _Flush()
        for view in self.views:
            start = len(flush.taken)
            flush.changes.append(take_view_changes(view, flush.taken))
            if view is self.live_tree:
                flush.submissions, self._submissions = self._submissions, []
                tree_changes = self.storage.relational.view_changes(view, flush.taken[start:], flush.submissions)
                flush.relational = _merged(flush.relational, tree_changes)
            if view is self.live_board:
                flush.relational = _merged(flush.relational, Changes({}, {}))
                self.storage.relational.board_changes(flush.relational, view.users.rows, flush.taken[start:])
            if isinstance(view, HistoryView):
                flush.history = (view.key, view.take_entries())
                flush.history_view = view
        return flush

    def _write(self, flush: _Flush) -> BaseException | None:
        try:
            self.storage.write(flush.changes, flush.history, flush.relational)
        except Exception as exc:  # noqa: BLE001 - handed to _done, which keeps the changes for the next try
            return exc
        return None

    def _done(self, flush: _Flush, error: BaseException | None) -> None:
        """After a write: on failure give the rows back, so the next flush retries them."""
        if flush.history_view:
            flush.history_view.entries_written(error is None)
        if error is not None:
            for table, keys in flush.taken:
                table.untake(keys)
            self._submissions[:0] = flush.submissions
            raise error

    # --- folding -------------------------------------------------------------------

    def fold(self, notifications) -> None:
        if not notifications:
            return
        if all(view.position < notifications[0].id for view in self.views):
            self._fold_behind(notifications)
        else:
            self._fold_each(notifications)
        self.position = max(self.position, notifications[-1].id)

    def _fold_each(self, notifications) -> None:
        """Each event into each view that has not folded it yet."""
        tree = self.submissions_of
        for n in notifications:
            event = ev.decode_summary(n.state)
            if tree is not None and n.id > tree.position and isinstance(event, VOTE_EVENTS):
                self._submissions.append((n.id, event))  # label_votes and rankings are made from these
            for view in self.views:
                if n.id > view.position:
                    view.apply(n.id, event)

    def _fold_behind(self, notifications) -> None:
        """Every view is behind the whole page (a catch-up, a rebuild): no position to compare per
        event and view, each event goes straight to the handlers that want it, and the views'
        positions are set once, at the page's end (~3.4M events x 4 views at OA's size)."""
        plain = [v for v in self.views if type(v).apply is View.apply]  # handlers only: see View.apply
        own = [v for v in self.views if type(v).apply is not View.apply]
        keep, folded = self.submissions_of is not None, None
        try:
            for n in notifications:
                event = ev.decode_summary(n.state)
                kind = type(event)
                if keep and kind in VOTE_EVENTS:
                    self._submissions.append((n.id, event))  # label_votes and rankings are made from these
                for view in plain:
                    handler = view._handlers.get(kind)
                    if handler is not None:
                        handler(view, event)
                for view in own:
                    view.apply(n.id, event)
                folded = n.id
        finally:  # (an event that raised is where a fold of each event would have stopped too)
            for view in plain if folded is not None else ():
                view.position = folded

    def catch_up(self, progress: Callable[[int], None] | None = None, stop: Callable[[], bool] | None = None) -> int:
        """Fold everything in the log now (blocking); returns the number of events.
        ``stop`` is asked between pages (never inside a fold): true ends early."""
        with gc_paused():
            return self._catch_up(progress, stop)

    def _catch_up(self, progress: Callable[[int], None] | None, stop: Callable[[], bool] | None = None) -> int:
        done = since_flush = 0
        pages = self.store.pages(self.position, page_size=self.page_size)
        while not (stop and stop()):
            page = next(pages, None)
            if page is None:  # the end as it was when the pages began: anything appended since?
                pages = self.store.pages(self.position, page_size=self.page_size)
                page = next(pages, None)
            if page is None:
                break
            self.fold(page)
            done += len(page)
            since_flush += len(page)
            if progress:
                progress(len(page))
            if since_flush >= self.flush_every:
                self.flush_history() if self.rows_at_end else self.flush()
                since_flush = 0
        self._history_written()
        if since_flush or (self.rows_at_end and done):
            self.flush()
        return done

    # --- running inside a server ---------------------------------------------------

    def notify(self) -> None:
        """New events were appended (called by the command service after a commit)."""
        self._wakeup.set()

    async def start(self) -> None:
        """Restore the stored views in a thread, then follow the log. The server answers
        meanwhile: queries wait for ``ready`` (bounded; query_api.common.Views.caught_up), which is set
        once the views are restored and have folded the log as it was at start."""
        self._restoring = asyncio.ensure_future(asyncio.to_thread(self.restore))
        self._task = asyncio.get_running_loop().create_task(self._restore_then_run())

    async def _restore_then_run(self) -> None:
        await asyncio.shield(self._restoring)
        self._ready_at = await asyncio.to_thread(self.store.max_position)
        await self._run()

    async def stop(self) -> None:
        if self._restoring and not self._restoring.done():
            await asyncio.wait([self._restoring])  # a thread cannot be cancelled: let it end
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._restoring is None or (self._restoring.done() and not self._restoring.exception()):
            await asyncio.to_thread(self.flush)  # (nothing to flush where the views were never restored)

    async def _run(self, poll_seconds: float = 0.5, slice_events: int = 2000) -> None:
        last_flush, unflushed = time.monotonic(), False
        while True:
            page = await self._next_page()
            if page is None:  # the store is away: the views go on answering from memory
                await asyncio.sleep(poll_seconds)
                continue
            unflushed = unflushed or bool(page)
            for start in range(0, len(page), slice_events):
                self.fold(page[start : start + slice_events])
                await asyncio.sleep(0)  # let queries in between slices
            if page:
                async with self._reached:
                    self._reached.notify_all()
            if not self.ready.is_set() and self.position >= self._ready_at:
                self.ready.set()
            # a crash replays at most ~1 s; a quiet log still gets its last changes (and the SQL tables) written
            if unflushed and time.monotonic() - last_flush > 1.0:
                flush = self._collect()
                try:
                    self._done(flush, await asyncio.to_thread(self._write, flush))
                    unflushed = False
                except Exception:  # noqa: BLE001 - the views go on; the next flush retries
                    log.exception("writing the views failed; retrying at the next flush")
                last_flush = time.monotonic()
            if len(page) < self.page_size:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), poll_seconds)
                except TimeoutError:
                    pass

    async def _next_page(self) -> list | None:
        """The log's next page, or None while the store cannot be read (then ``stale_seconds``
        says how long the views have not been known to be current)."""
        asked = time.monotonic()
        try:
            page = await asyncio.to_thread(self.store.read_stored, self.position, self.page_size)
        except STORE_AWAY_ERRORS as exc:  # try again at the next poll
            if self.away_since is None:
                log.warning("reading the log failed (%s); the views answer from memory until it is back", exc)
                self.away_since = asked
            return None
        if self.away_since is not None:
            log.warning("the log is readable again after %.1f s", asked - self.away_since)
            self.away_since = None
        if len(page) < self.page_size:
            self.current_at = asked
        return page

    def stale_seconds(self) -> float | None:
        """While the log cannot be read: seconds since the views were last at its end; else None."""
        return None if self.away_since is None else time.monotonic() - self.current_at

    async def wait_for(self, position: int, timeout: float) -> bool:
        """Read-your-writes: wait until every view has folded ``position``."""
        if self.position >= position:
            return True
        self.notify()
        try:
            async with asyncio.timeout(timeout):
                async with self._reached:
                    await self._reached.wait_for(lambda: self.position >= position)
            return True
        except TimeoutError:
            return False
