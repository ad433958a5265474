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
def oasst_serve(data_dir: Path, api_key: str, timeout: float = 60) -> Iterator[str]:
    """Serve a SQLite store in ``data_dir`` until the block ends; yields the API's base URL."""
    port = free_port()
    env = {
        **os.environ,
        "OASST_DATA_DIR": str(data_dir),
        "OASST_DATABASE_URL": f"sqlite:///{data_dir}/oasst.sqlite3",
        "OASST_BOOTSTRAP_API_KEY": api_key,
        "OASST_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
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
