"""Property: views maintained incrementally (in pages of any size, flushed and restored
at arbitrary points, as after crashes) equal views rebuilt from scratch, for random
histories made through the command API."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projections.runner import ProjectionRunner
from tests.histories import make_history

action = st.one_of(
    st.tuples(st.just("task"), st.integers(0, 4), st.floats(0, 1)),
    st.tuples(st.just("nack"), st.integers(0, 4), st.just(0.0)),
    st.tuples(st.just("emoji"), st.integers(0, 4), st.sampled_from(["+1", "-1", "red_flag", "heart_eyes"])),
    st.tuples(st.just("delete"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("halt"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("spammer"), st.integers(0, 4), st.booleans()),
    st.tuples(st.just("report"), st.integers(0, 4), st.integers(0, 50)),
)


def snapshot(runner: ProjectionRunner) -> dict:
    enc = msgspec.msgpack.Encoder(uuid_format="bytes")  # as views store rows
    return {
        (v.key, t.name, str(k)): enc.encode(row)
        for v in runner.views
        for t in v.tables.values()
        for k, row in t.rows.items()
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(action, min_size=5, max_size=60), pages=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_incremental_views_equal_a_rebuild(actions, pages):
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'log.sqlite3'}"
        store = asyncio.run(make_history(url, actions))
        # incremental: pages of varying size, a flush and a restart (restore) after each
        runner = ProjectionRunner(store, page_size=pages[0])
        runner.restore()
        for size in pages * 50:
            runner.page_size = size
            page = store.read_stored(runner.position, size)
            if not page:
                break
            runner.fold(page)
            runner.flush()
            runner = ProjectionRunner(store, page_size=size)  # as after a crash
            runner.restore()
        runner.catch_up()
        incremental = snapshot(runner)
        # a rebuild from scratch, in memory only
        fresh = ProjectionRunner(store)
        fresh.fold(store.read_stored(0, 1_000_000))
        assert incremental == snapshot(fresh)
        store.close()
