"""``oasst serve`` as a real subprocess for tests that need a server over HTTP."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from devkit.brokers import free_port


@contextlib.contextmanager
def oasst_serve(
    data_dir: Path,
    api_key: str,
    timeout: float = 60,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    preexec_fn=None,
) -> Iterator[str]:
    """Serve a store until the block ends (a SQLite store in ``data_dir`` unless
    ``database_url`` names one; ``env``: more settings; ``log``: where its output goes;
    ``preexec_fn``: run in the child before the server starts, e.g. to set a limit);
    yields the API's base URL."""
    port = free_port()
    env = {
        **os.environ,
        "OASST_DATA_DIR": str(data_dir),
        "OASST_DATABASE_URL": database_url or f"sqlite:///{data_dir}/oasst.sqlite3",
        "OASST_BOOTSTRAP_API_KEY": api_key,
        "OASST_PORT": str(port),
        **(env or {}),
    }
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed when the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{url}/snapshots", headers={"X-API-Key": api_key}, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "oasst serve did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        if log:
            out.close()
