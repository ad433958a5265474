"""Crash test (issue #9; bench/crash.py is the longer variant): OA flows against
``oasst serve`` on PostgreSQL while the server, the projection runner and the Kafka relay
are SIGKILLed and restarted. Nothing acknowledged is lost, nothing is doubled, the views
equal a clean fold of the log and the relay's topic has no gaps. Then what the service
depends on goes away and comes back (issue #19: devkit/faults.py)."""

from __future__ import annotations

import pytest

from devkit import faults
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


@pytest.mark.slow
@pytest.mark.postgres
def test_dependencies_away_under_load_lose_nothing_and_recover_in_time(pg_url, tmp_path):
    """bench/crash.py's outages, short (issue #19): PostgreSQL stopped, the Kafka broker
    SIGKILLed, the disk full during snapshots, each for 2 s under load, then back."""
    results = {
        "postgres": faults.postgres_away(tmp_path, users=4, down_s=2),
        "kafka": faults.kafka_away(tmp_path, pg_url, users=4, down_s=2),
        "disk": faults.disk_full(tmp_path, pg_url, users=4, down_s=2),  # on the same log, after the Kafka run
    }
    for name, r in results.items():
        assert r["acknowledged"] > 50, (name, r)
        assert (r["lost"], r["other_5xx"], r["dropped"]) == (0, 0, 0), (name, r)
        assert r["recovery_s"] is not None and r["recovery_s"] <= 5, (name, r)
    assert results["postgres"]["answers"].get(503, 0) > 0  # it was away, and said so
    assert results["kafka"]["answered_2xx_while_away"] > 0  # Kafka is downstream of the log
    assert (results["kafka"]["topic_duplicates"], results["kafka"]["topic_gaps"]) == (0, 0)
    assert results["disk"]["snapshots_refused"].get(507, 0) > 0 and results["disk"]["partial_snapshots_left"] == 0
