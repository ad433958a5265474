"""Crash test (issue #9; bench/crash.py is the longer variant): OA flows against
``oasst serve`` on PostgreSQL while the server, the projection runner and the Kafka relay
are SIGKILLed and restarted. Nothing acknowledged is lost, nothing is doubled, the views
equal a clean fold of the log and the relay's topic has no gaps."""

from __future__ import annotations

import pytest

from devkit.brokers import tansu
from devkit.crash import storm


@pytest.mark.slow
def test_sigkills_under_load_lose_and_double_nothing(pg_url, tmp_path):
    with tansu(log_path=str(tmp_path / "tansu.log")) as bootstrap:
        result = storm(pg_url, tmp_path, seconds=16, users=8, relay_bootstrap=bootstrap, every=(1.0, 2.5))
    assert all(n >= 1 for n in result["kills"].values()), result["kills"]
    assert result["acknowledged"] > 200
    assert result["lost"] == 0, result["lost_examples"]
    assert result["duplicates"] == 0
    assert result["view_mismatches"] == []
    assert result["topic_gaps"] == 0
