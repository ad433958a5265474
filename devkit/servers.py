"""Server subprocesses for tests and benchmarks: the ``oasst`` CLI, started and stopped
in its own process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The CLI under the interpreter that runs us, so that no virtualenv path is assumed.
OASST = [sys.executable, "-m", "infra.cli"]


@contextlib.contextmanager
def server(
    cmd: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    ready_path: str = "/",
    timeout: float = 60,
    preexec_fn=None,
) -> Iterator[subprocess.Popen]:
    """Run an HTTP server subprocess (stdout+stderr to ``log``) until the block ends; it is
    ready once any HTTP answer comes back on ``ready_path``. ``preexec_fn``: run in the child
    before the server starts."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "wb")
    spawned = time.monotonic()
    # Own process group, so that stopping it also stops anything it spawned.
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}:\n" + tail(log))
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answered, only not with 2xx
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd} did not answer within {timeout}s") from None
                time.sleep(0.05)
        proc.startup_s = time.monotonic() - spawned  # from spawning to its first answer (± 0.05 s)
        yield proc
    finally:
        stop(proc)
        out.close()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
