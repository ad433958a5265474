"""What sealing personal text costs (issue #19, erasure by crypto-shredding), on PostgreSQL.

One synthetic history is appended twice per round in the same run, into fresh databases: once
as the service stores it (texts, display names and the texts task payloads quote sealed with
AES-GCM, a key per user, infra/keys.py) and once with sealing switched off (the baseline:
plaintext, as before #19).
Then both logs are read back: every event decoded (``decode_summary``, as the projection
runner does) and the message-tree and consensus views folded (``fold_at``, as a rebuild or a
snapshot does). Each measurement is repeated, alternating the two stores, and the best kept.
Appends are timed on the wall clock (the database's commits are most of their cost) and by
the appending process's CPU time (steadier; what sealing adds is there); reads by CPU time (what sealing adds is CPU here; on a shared 2-core machine the wall
clock of a read of a few thousand events mostly measures the neighbours).
Goal: each rate >= 0.9x the baseline's (a cost of at most 10 %).
"""

from __future__ import annotations

import contextlib
import time

from bench import common
from bench.common import row
from domain import events as ev
from infra.keys import RING
from infra.store import EventStore, Pending
from projections.dataset import fold_at

console = common.console
BATCH = 100  # events per append transaction (the group committer's batches under load are of this order)


def _history(url: str, quick: bool) -> list[tuple]:
    from devkit.simulator import seed_history

    seed_history(url, trees=100 if quick else 600, users=60 if quick else 200, seed=11)
    store = EventStore(url)
    try:
        return [(n.originator_id, n.originator_version, ev.decode(n.state)) for n in store.read_stored(0, 10_000_000)]
    finally:
        store.close()


def append_rate(url: str, events: list[tuple], sealed: bool) -> tuple[float, float]:
    """(events/s on the wall clock, events/s of this process's CPU time)."""
    store = EventStore(url)
    if not sealed:
        store.keys.seal = lambda e: e  # the baseline: stored as before #19
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(events), BATCH):
            store.append([Pending(events[i : i + BATCH])])
        return len(events) / (time.perf_counter() - started), len(events) / (time.process_time() - cpu)
    finally:
        store.close()


def decode_rate(url: str) -> float:
    store = EventStore(url)
    try:
        RING.gone.clear()
        started, after, n = time.process_time(), 0, 0
        while page := store.read_stored(after, 20_000):
            for note in page:
                ev.decode_summary(note.state)
            n, after = n + len(page), page[-1].id
        return n / (time.process_time() - started)
    finally:
        store.close()


def fold_rate(url: str) -> float:
    store = EventStore(url)
    try:
        started = time.process_time()
        state = fold_at(store)
        return state.position / (time.process_time() - started)
    finally:
        store.close()


def run(quick: bool) -> list[dict]:
    repeats = 3 if quick else 5
    rates: dict[str, tuple[list, list]] = {k: ([], []) for k in ("append", "append_cpu", "decode", "fold")}
    with contextlib.ExitStack() as stack:
        events = _history(stack.enter_context(common.postgres_database("oasst_bench_erasure")), quick)
        for r in range(repeats):  # alternating which goes first
            for sealed in (True, False) if r % 2 == 0 else (False, True):
                with common.postgres_database("oasst_bench_erasure") as url:
                    wall, cpu = append_rate(url, events, sealed)
                    rates["append"][not sealed].append(wall)
                    rates["append_cpu"][not sealed].append(cpu)
                    for _ in range(2):
                        rates["decode"][not sealed].append(decode_rate(url))
                        rates["fold"][not sealed].append(fold_rate(url))
    opened = sum(1 for _, _, e in events if type(e) in ev.SEALED and any(getattr(e, f) for f in ev.SEALED[type(e)][1]))
    tasks = sum(1 for _, _, e in events if type(e) is ev.TaskAssigned)
    console.print(
        f"{len(events):,} events: {opened:,} with a sealed text or name, {tasks:,} task payloads; "
        f"best of {repeats} appends, {2 * repeats} reads"
    )
    rows, names = (
        [],
        {
            "append": "append (100 events a transaction)",
            "append_cpu": "append, the appending process's CPU",
            "decode": "read + decode_summary",
            "fold": "rebuild: fold message_tree + consensus",
        },
    )
    for key, (with_seal, without) in rates.items():
        value, baseline = max(with_seal), max(without)
        console.print(
            f"  {names[key]:42} sealed {value:>10,.0f}/s  plain {baseline:>10,.0f}/s  {value / baseline:.2f}x"
        )
        rows.append(
            row(
                f"erasure: {names[key]}, sealed vs plain",
                round(value),
                "events/s (goal on ratio)",
                ">= 0.9",
                round(baseline),
            )
        )
    return rows


if __name__ == "__main__":
    import sys

    run("--quick" in sys.argv)
