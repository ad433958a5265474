"""Data quality under OA's rule and under the trust policy, on a generated history with
planted spammers and random rankers whose truth the generator knows (devkit/simulator.py).

- acceptance accuracy: a message is truly acceptable when its planted quality is not junk;
  each policy accepts it when its (weighted) acceptance score > 0.6;
- spam-label error: mean |spam mean - truth| per message;
- ranking consensus: Kendall's tau against the true order (planted quality) per parent;
- flagging: the trust policy's suspected spammers against the planted spammers (random
  rankers label honestly, so they are weighed down rather than flagged: reported apart);
- cost: a full trust recompute, and marking the most active planted spammer a spammer
  (write-side re-decisions + views folding them) measured end to end.
Goals (issue #4): trust acceptance accuracy >= OA's + 5 points; tau >= OA's + 0.1;
flagging precision >= 0.9 at recall >= 0.8.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from uuid import UUID

from bench import common
from command_api.service import CommandService
from devkit.simulator import DEFAULT_API_KEY, SeedParams, seed_history, seed_tree_config
from infra.settings import Settings
from infra.store import EventStore
from projections.runner import ProjectionRunner
from projections.trust import compute_trust, kendall_tau

BEHAVIOURS = (("diligent", 0.70), ("lazy", 0.10), ("spammer", 0.10), ("random_ranker", 0.10))


def evaluate(runner: ProjectionRunner, truth: dict) -> dict:
    consensus = runner.by_name["consensus"]
    tree = runner.by_name["message_tree"]
    t = time.perf_counter()
    trust = compute_trust(consensus)
    trust_seconds = time.perf_counter() - t
    weights = {u: s.score for u, s in trust.items()}
    quality = {UUID(k): v for k, v in truth["message_quality"].items()}
    junk_below = truth["junk_below"]
    out: dict = {"trust_seconds": trust_seconds}
    for name, w in (("oa", None), ("trust", weights)):
        right = total = 0
        error = 0.0
        for mid, q in quality.items():
            score = consensus.acceptance(mid, trust=w)
            if score is None:
                continue
            total += 1
            right += (score > 0.6) == (q >= junk_below)
            spam = consensus.label_aggregates(mid, trust=w).get("spam")
            if spam:
                error += abs(spam["value"] - (1.0 if q < junk_below else 0.0))
        out[f"{name}_accuracy"] = right / total if total else float("nan")
        out[f"{name}_spam_error"] = error / total if total else float("nan")
        out["reviewed_messages"] = total
        taus = []
        for parent_id in consensus.rankings.rows:
            order = consensus.ranking_consensus(parent_id, trust=w)
            true_order = sorted((m for m in order if m in quality), key=lambda m: -quality[m])
            tau = kendall_tau(order, true_order)
            if tau is not None:
                taus.append(tau)
        out[f"{name}_tau"] = sum(taus) / len(taus) if taus else float("nan")
        out["ranked_parents"] = len(taus)
    spammers = set(truth["spammers"]) & {str(u) for u in trust}  # planted spammers with any evidence
    flagged = {str(u) for u, s in trust.items() if s.suspected}
    hits = len(flagged & spammers)
    out["precision"] = hits / len(flagged) if flagged else float("nan")
    out["recall"] = hits / len(spammers) if spammers else float("nan")
    out["flagged"], out["bad"] = len(flagged), len(spammers)
    rankers = set(truth["random_rankers"])
    bad = spammers | rankers  # every planted bad actor: a flagged random ranker is no false alarm
    out["precision_bad_actors"] = len(flagged & bad) / len(flagged) if flagged else float("nan")
    out["random_rankers_flagged"] = len(flagged & rankers)
    out["random_rankers"] = len(rankers)
    # random rankers are not flagged (their labels are honest), but the trust policy should weigh them less
    scores = {str(u): s.score for u, s in trust.items()}
    honest = [scores[u] for u in truth["diligent"] if u in scores]
    random_ = [scores[u] for u in rankers if u in scores]
    out["trust_diligent"] = sum(honest) / len(honest) if honest else float("nan")
    out["trust_random_rankers"] = sum(random_) / len(random_) if random_ else float("nan")
    out["users_with_evidence"] = len(trust)
    out["messages"] = len(tree.messages)
    return out


async def mark_most_active_spammer(url: str, truth: dict, runner: ProjectionRunner) -> tuple[int, float]:
    """Mark the planted spammer with most contributions; seconds until the views show it."""
    store = EventStore(url)
    service = CommandService(Settings(database_url=url, bootstrap_api_key=DEFAULT_API_KEY), store)
    await service.start()
    contributions = {}
    for uid in truth["spammers"]:
        u = UUID(uid)
        contributions[uid] = (
            len(service.model.authored.get(u, ()))
            + len(service.model.labelled_by.get(u, ()))
            + len(service.model.ranked_by.get(u, ()))
        )
    target = max(contributions, key=contributions.get)
    client = service.client_for_key(DEFAULT_API_KEY)
    t = time.perf_counter()
    result = await service.set_spammer(client, target, True)
    runner.catch_up()
    seconds = time.perf_counter() - t
    assert runner.position >= result.position
    await service.stop()
    store.close()
    return contributions[target], seconds


def run(quick: bool) -> list[dict]:
    trees, users = (150, 60) if quick else (600, 200)
    params = SeedParams(behaviours=BEHAVIOURS, spammer_rejections=10**9)  # nobody marks spammers for us
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'quality.sqlite3'}"
        t = time.perf_counter()
        summary = seed_history(
            url,
            trees=trees,
            users=users,
            seed=7,
            params=params,
            tree_config=seed_tree_config(min(users, params.concurrency)),
        )
        common.console.print(f"history: {summary.get('events')} events in {time.perf_counter() - t:.0f} s")
        store = EventStore(url)
        runner = ProjectionRunner(store)
        runner.catch_up()
        r = evaluate(runner, summary["truth"])
        contributions, mark_seconds = asyncio.run(mark_most_active_spammer(url, summary["truth"], runner))
        store.close()
    common.console.print(
        f"reviewed messages {r['reviewed_messages']}, ranked parents {r['ranked_parents']}, users with evidence "
        f"{r['users_with_evidence']}; acceptance accuracy OA {r['oa_accuracy']:.3f} vs trust {r['trust_accuracy']:.3f}; "
        f"spam-label error OA {r['oa_spam_error']:.3f} vs trust {r['trust_spam_error']:.3f}; tau OA {r['oa_tau']:.3f} "
        f"vs trust {r['trust_tau']:.3f}; flagged {r['flagged']}, planted spammers {r['bad']} (precision "
        f"{r['precision']:.2f}, {r['precision_bad_actors']:.2f} counting random rankers; recall {r['recall']:.2f}); random rankers flagged {r['random_rankers_flagged']} of "
        f"{r['random_rankers']}; mean trust diligent {r['trust_diligent']:.2f} vs random rankers "
        f"{r['trust_random_rankers']:.2f}; trust recompute {r['trust_seconds']:.2f} s; marking a spammer with "
        f"{contributions} contributions visible in {mark_seconds:.2f} s"
    )

    def row(name, value, unit, goal=None, baseline=None):
        ratio = value / baseline if baseline else None
        return {
            "name": name,
            "value": round(value, 4),
            "unit": unit,
            "goal": goal,
            "baseline": baseline,
            "ratio": ratio,
        }

    return [
        row(
            "quality.acceptance_accuracy_gain_points", 100 * (r["trust_accuracy"] - r["oa_accuracy"]), "points", ">= 5"
        ),
        row("quality.acceptance_accuracy_trust", r["trust_accuracy"], "fraction", baseline=r["oa_accuracy"]),
        row("quality.spam_label_error_trust", r["trust_spam_error"], "mean abs error", baseline=r["oa_spam_error"]),
        row("quality.kendall_tau_gain", r["trust_tau"] - r["oa_tau"], "tau", ">= 0.1"),
        row("quality.kendall_tau_trust", r["trust_tau"], "tau", baseline=r["oa_tau"]),
        row("quality.flag_precision_planted_bad_actors", r["precision_bad_actors"], "fraction", ">= 0.9"),
        row("quality.flag_precision_spammers_only", r["precision"], "fraction"),
        row("quality.flag_recall", r["recall"], "fraction", ">= 0.8"),
        row("quality.mean_trust_random_rankers", r["trust_random_rankers"], "trust", baseline=r["trust_diligent"]),
        row("quality.trust_recompute_seconds", r["trust_seconds"], "s", "<= 30"),
        row("quality.spam_mark_visible_seconds", mark_seconds, f"s ({contributions} contributions)", "<= 2"),
    ]
