"""Completion sampling (issue #7): a tiny Llama built here (no download) samples the threads
of a real snapshot of a seeded history through local Ray with the transformers backend;
the replies are posted as ranking-only trees and show up in the tree route and in rank
tasks. vLLM runs only where it is installed and CUDA exists; its request building is
tested here."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient
from typer.testing import CliRunner

from devkit.simulator import seed_history
from devkit.tiny_lm import build_tiny_lm
from domain.config import TreeConfig
from infra.app import create_app
from projections.snapshot import create_snapshot
from samplers import post_completions, sample_completions
from samplers.backends import Request, VLLMBackend, check_backend, clean_text, vllm_sampling_kwargs
from samplers.configs import CONFIGS, model_name
from samplers.trees import build_trees, reply_id, select_replies, thread_ids
from tests.config import API_KEY, make_settings
from tests.frontend import user

N, CONFIG_NAMES, MAX_NEW_TOKENS = 3, ("top_k_50", "greedy"), 12


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the whole module (starting it takes seconds); the jobs reuse it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A seeded history on SQLite and a real snapshot of it; settings that activate every
    backlog tree when a tree finishes (p_activate_backlog_tree=1)."""
    root = tmp_path_factory.mktemp("seeded")
    url = f"sqlite:///{root / 'oasst.sqlite3'}"
    seed_history(url, trees=20, users=15, seed=4)
    settings = make_settings(url, root, tree=TreeConfig(p_activate_backlog_tree=1.0))
    manifest = create_snapshot(settings)
    assert manifest["counts"]["prompts.parquet"] > 10
    return settings, manifest


@pytest.fixture(scope="module")
def api(seeded):
    """The whole app on the seeded store, as the sampler (and a frontend) sees it."""
    with TestClient(create_app(seeded[0])) as client:
        client.headers["X-API-Key"] = API_KEY
        yield client


@pytest.fixture(scope="module")
def first_run(seeded, tiny_lm, ray_session, api, tmp_path_factory):
    """The job, once for real through Ray, posting to the app as it goes."""
    settings, manifest = seeded
    return sample_completions(
        manifest["id"],
        tiny_lm,
        n=N,
        configs=CONFIG_NAMES,
        seed=0,
        max_new_tokens=MAX_NEW_TOKENS,
        data_dir=settings.data_dir,
        out=tmp_path_factory.mktemp("run0"),
        client=api,
        api_key=API_KEY,
        post_batch_size=7,
    )


def rows(summary: dict) -> list[dict]:
    return pq.read_table(summary["completions"]).to_pylist()


def last_position(api) -> int:
    return api.get("/api/v1/events", params={"after": 0, "limit": 1}).json()["last_position"]


# --- the job through Ray --------------------------------------------------------------------


def test_job_samples_every_thread_and_keeps_unique_replies_with_lineage(first_run, seeded, tiny_lm):
    s, manifest = first_run, seeded[1]
    assert s["threads"] == manifest["counts"]["prompts.parquet"]
    # greedy is asked once per thread, top_k_50 N times
    assert s["samples"] == s["threads"] * (N + 1)
    assert s["threads_kept"] + s["threads_dropped"] == s["threads"] and s["threads_kept"] > 0
    assert s["tokens"] > 0 and s["tokens_per_s"] > 0 and s["actors"] == 1
    assert {"ray_init", "job", "model_load", "generate", "ray_overhead", "total"} <= set(s["seconds"])
    out = rows(s)
    assert len(out) == s["replies"]
    by_parent: dict[str, list[dict]] = {}
    for r in out:
        by_parent.setdefault(r["message_id"], []).append(r)
        assert r["snapshot_id"] == manifest["id"] and r["seed"] == 0 and r["model"] == tiny_lm.name
        assert r["config"] in CONFIG_NAMES and r["model_name"] == model_name(r["model"], r["config"], MAX_NEW_TOKENS)
        assert r["text"] == r["text"].strip() and "<|" not in r["text"]  # special tokens stripped
        assert r["messages"][-1]["role"] == "user"
    for replies in by_parent.values():
        texts = [r["text"] for r in replies]
        assert 2 <= len(texts) <= 5 and len(set(texts)) == len(texts)


def test_same_seed_same_completions_through_the_cli(first_run, seeded, tiny_lm, tmp_path, monkeypatch):
    from infra.cli import app

    settings, manifest = seeded
    monkeypatch.setenv("OASST_DATA_DIR", str(settings.data_dir))
    args = [
        "sample",
        "--snapshot",
        manifest["id"],
        "--model",
        str(tiny_lm),
        "--n",
        str(N),
        "--seed",
        "0",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--out",
        str(tmp_path),
    ]
    for c in CONFIG_NAMES:
        args += ["--config", c]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not posted" in result.output
    again = pq.read_table(tmp_path / "completions.parquet")
    assert again.to_pylist() == rows(first_run)
    assert again.equals(pq.read_table(first_run["completions"]))


def test_another_seed_gives_other_completions(first_run, seeded, tiny_lm, ray_session, tmp_path):
    settings, manifest = seeded
    other = sample_completions(
        manifest["id"],
        tiny_lm,
        n=N,
        configs=("top_k_50",),
        seed=1,
        max_new_tokens=MAX_NEW_TOKENS,
        data_dir=settings.data_dir,
        out=tmp_path,
    )
    first = {(r["message_id"], r["text"]) for r in rows(first_run) if r["config"] == "top_k_50"}
    second = {(r["message_id"], r["text"]) for r in rows(other)}
    assert first and second and not first & second
    assert {r["tree_id"] for r in rows(first_run)}.isdisjoint({r["tree_id"] for r in rows(other)})


# --- what lands in the views and in tasks -----------------------------------------------------


def test_posted_trees_show_up_in_the_tree_route(first_run, api):
    assert first_run["posted"]["trees_imported"] == first_run["threads_kept"]
    assert first_run["posted"]["requests"] == -(-first_run["threads_kept"] // 7)  # in batches of 7
    at = last_position(api)
    for tree in build_trees(rows(first_run)):
        r = api.get(f"/api/v1/messages/{tree['message_tree_id']}/tree", params={"min_position": at})
        assert r.status_code == 200, r.text
        got = {m["id"]: m for m in r.json()["messages"]}
        node = tree["prompt"]
        while node["replies"] and not node["replies"][0]["synthetic"]:
            assert got[node["message_id"]]["text"] == node["text"] and not got[node["message_id"]]["synthetic"]
            node = node["replies"][0]
        for reply in node["replies"]:
            m = got[reply["message_id"]]
            assert m["synthetic"] and m["is_assistant"] and m["parent_id"] == node["message_id"]
            assert m["text"] == reply["text"] and m["model_name"] == reply["model_name"]
        state = api.get(f"/api/v1/messages/{tree['message_tree_id']}/tree/state", params={"min_position": at})
        assert state.json()["state"] in ("backlog_ranking", "ranking")


def test_reposting_the_same_file_adds_nothing(first_run, api):
    before = last_position(api)
    again = post_completions(first_run["completions"], client=api, api_key=API_KEY)
    assert again["trees_imported"] == 0 and again["messages_imported"] == 0
    assert again["trees_skipped"] == first_run["threads_kept"]
    assert last_position(api) == before


def test_sample_post_over_http_to_a_running_server_is_idempotent(first_run, tmp_path):
    """`oasst sample-post` against `oasst serve` (an empty store): everything once, then nothing."""
    import json

    from infra.cli import app
    from tests.servers import oasst_serve

    key = "sample-key"
    with oasst_serve(tmp_path, key) as url:
        answers = []
        for _ in range(2):
            result = CliRunner().invoke(
                app, ["sample-post", first_run["completions"], "--api-url", url, "--api-key", key, "--batch-size", "10"]
            )
            assert result.exit_code == 0, result.output
            answers.append(json.loads(result.output))
    kept = first_run["threads_kept"]
    assert answers[0]["trees_imported"] == kept and answers[0]["requests"] == -(-kept // 10)
    assert answers[1]["trees_imported"] == 0 and answers[1]["trees_skipped"] == kept


def test_rankers_get_the_synthetic_replies_once_a_backlog_tree_is_activated(first_run, api):
    """A tree that finishes (here: halted by a moderator) activates a backlog tree
    (p_activate_backlog_tree=1); its rank task reveals that every reply is synthetic."""
    ours = {
        r["tree_id"]: {x["reply_id"] for x in rows(first_run) if x["tree_id"] == r["tree_id"]} for r in rows(first_run)
    }
    halted = []
    for i in range(10):
        task = api.post(
            "/api/v1/tasks/", json={"type": "rank_assistant_replies", "user": user(f"ranker{i}"), "lang": "en"}
        )
        if task.status_code == 200 and task.json()["message_tree_id"] in ours:
            break
        # no rank task, or one of the seeded history's: halting a tree activates one of ours
        tree_id = task.json()["message_tree_id"] if task.status_code == 200 else next(iter(ours))
        r = api.put(f"/api/v1/messages/{tree_id}/tree/state", params={"halt": "true"})
        assert r.status_code == 200, r.text
        halted.append(tree_id)
        ours.pop(tree_id, None)
    else:
        pytest.fail(f"no rank task on a sampled tree after halting {halted}")
    task = task.json()
    replies = task["reply_messages"]
    assert {m["id"] for m in replies} == ours[task["message_tree_id"]]
    assert all(m["synthetic"] for m in replies) and task["reveal_synthetic"] is True


# --- pieces, without Ray -----------------------------------------------------------------------


def test_duplicates_empty_replies_and_threads_with_fewer_than_two_unique_replies_are_dropped():
    def samples(*texts):
        return [{"text": t, "config": "top_k_50", "sample": i} for i, t in enumerate(texts)]

    kept, stats = select_replies(samples("a", "b", "a", "", "c", "b"), seed=0, key="m")
    assert [s["text"] for s in kept] == ["a", "b", "c"] and stats == {"empty": 1, "duplicates": 2}
    assert select_replies(samples("a", "a", "", "a"), seed=0, key="m")[0] == []
    assert select_replies(samples("only"), seed=0, key="m")[0] == []
    many = samples(*"abcdefgh")
    five = select_replies(many, seed=0, key="m")[0]
    assert len(five) == 5 and five == select_replies(many, seed=0, key="m")[0]
    assert [s["sample"] for s in five] == sorted(s["sample"] for s in five)  # generation order kept


def test_greedy_alone_gives_one_reply_per_thread_so_every_thread_is_dropped(seeded, tiny_lm):
    from samplers.job import ThreadSampler, _completion_rows

    prompts = pq.read_table(seeded[0].data_dir / "snapshots" / seeded[1]["id"] / "prompts.parquet").to_pylist()[:4]
    prompts = [{**p, "row": i} for i, p in enumerate(prompts)]
    sampler = ThreadSampler("transformers", str(tiny_lm), ["greedy"], 4, 0, MAX_NEW_TOKENS)
    generated = sampler(pa.Table.from_pylist(prompts)).to_pylist()
    assert [len(g["samples"]) for g in generated] == [1] * 4
    out, counts = _completion_rows(prompts, generated, "s", "r", "k", "tiny", "transformers", 4, 0, MAX_NEW_TOKENS, 5)
    assert out == [] and counts["threads_dropped"] == 4


def test_special_tokens_cut_the_reply():
    specials = ["<|im_end|>", "<|im_start|>", "<|pad|>"]
    assert clean_text("  Hello there.<|im_end|>", specials) == "Hello there."
    assert clean_text("Yes.<|im_start|>user\nmore", specials) == "Yes."
    assert clean_text("<|im_end|>", specials) == ""
    assert clean_text("a\x00b\x1fc\nd", specials) == "abc\nd"


def test_a_tree_is_the_thread_copied_with_synthetic_siblings_under_its_last_prompt():
    thread = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    tree_id = "5b2d7d3c-8a49-5f6e-9d3e-2f1b7a8c9d0e"
    parent = thread_ids(tree_id, 3)[-1]
    common = {"tree_id": tree_id, "messages": thread, "lang": "en", "model_name": "tiny,do_sample=True"}
    rows_ = [{**common, "text": t, "reply_id": reply_id(parent, "tiny,do_sample=True", t)} for t in ("x", "y")]
    [tree] = build_trees(rows_)
    assert tree["message_tree_id"] == tree_id == tree["prompt"]["message_id"]
    assert tree["tree_state"] == "backlog_ranking"
    q1 = tree["prompt"]
    a1 = q1["replies"][0]
    q2 = a1["replies"][0]
    assert (q1["role"], a1["role"], q2["role"]) == ("prompter", "assistant", "prompter")
    assert q2["message_id"] == parent and [r["text"] for r in q2["replies"]] == ["x", "y"]
    assert all(r["synthetic"] and r["review_result"] and r["parent_id"] == parent for r in q2["replies"])
    assert not any(n["synthetic"] for n in (q1, a1, q2))
    assert build_trees(rows_) == [tree]  # deterministic ids


def test_config_table_and_model_names():
    assert {"greedy", "top_k_50", "typical_0.95"} <= set(CONFIGS)
    assert (
        model_name("tiny", "top_k_50", 32)
        == "tiny,do_sample=True,top_k=50,top_p=0.95,repetition_penalty=1.2,max_new_tokens=32"
    )
    with pytest.raises(ValueError, match="unknown generation config"):
        check_backend("transformers", ["nope"], 4, 32)
    with pytest.raises(ValueError, match="unknown backend"):
        check_backend("onnx", ["greedy"], 4, 32)


# --- vLLM ----------------------------------------------------------------------------------


def test_vllm_sampling_params_follow_the_named_config():
    r = Request([1, 2], "top_k_50", 4, 1234, 64)
    assert vllm_sampling_kwargs(r) == {
        "n": 4,
        "seed": 1234,
        "max_tokens": 64,
        "skip_special_tokens": False,
        "top_k": 50,
        "top_p": 0.95,
        "repetition_penalty": 1.2,
    }
    assert vllm_sampling_kwargs(replace(r, config="greedy", n=1)) == {
        "n": 1,
        "seed": 1234,
        "max_tokens": 64,
        "skip_special_tokens": False,
        "temperature": 0.0,
    }
    assert vllm_sampling_kwargs(replace(r, config="temperature_0.8"))["temperature"] == 0.8
    with pytest.raises(ValueError, match="typical_p"):
        vllm_sampling_kwargs(replace(r, config="typical_0.95"))
    with pytest.raises(ValueError, match="cannot run on vLLM"):
        check_backend("vllm", ["top_k_50", "typical_0.2"], 4, 64)  # refused before any model loads


def test_vllm_backend_sends_one_request_per_prompt_with_its_own_seed(tiny_lm, monkeypatch):
    """vLLM itself cannot run here (no GPU): a stand-in module records what the backend asks."""
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def generate(self, prompts, params, use_tqdm=True):
            calls["generate"] = (prompts, params)
            out = types.SimpleNamespace
            return [
                out(outputs=[out(text=f"reply {i}.<|im_end|>", token_ids=[5, 3])] * p.kwargs["n"])
                for i, p in enumerate(params)
            ]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    backend = VLLMBackend(str(tiny_lm), seed=7, enforce_eager=True)
    assert calls["init"] == {"model": str(tiny_lm), "seed": 7, "enforce_eager": True}
    requests = [Request([2, 10, 11], "top_k_50", 3, 11, 16), Request([2, 12], "greedy", 1, 12, 16)]
    samples = backend.generate(requests)
    prompts, params = calls["generate"]
    assert prompts == [{"prompt_token_ids": [2, 10, 11]}, {"prompt_token_ids": [2, 12]}]
    assert [p.kwargs["seed"] for p in params] == [11, 12] and [p.kwargs["n"] for p in params] == [3, 1]
    assert [[s.text for s in group] for group in samples] == [["reply 0.<|im_end|>"] * 3, ["reply 1.<|im_end|>"]]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not _cuda(),
    reason="vLLM needs a CUDA GPU and the gpu extra (pip install -e '.[gpu]'); run `make gpu-check` there",
)
def test_vllm_backend_end_to_end(ray_session, tmp_path):
    from samplers.testing import write_snapshot

    model = build_tiny_lm(tmp_path / "model", hidden_size=256, heads=4)
    snap = write_snapshot(tmp_path, threads=6)
    runs = [
        sample_completions(
            snap,
            model,
            backend="vllm",
            n=4,
            configs=("top_k_50",),
            seed=s,
            max_new_tokens=24,
            out=tmp_path / f"out{i}",
            backend_options={"enforce_eager": True},
        )
        for i, s in enumerate((0, 0, 1))
    ]
    assert runs[0]["samples"] == 6 * 4 and runs[0]["tokens"] > 0
    assert rows(runs[0]) == rows(runs[1])  # same seed, same completions
    assert [r["text"] for r in rows(runs[0])] != [r["text"] for r in rows(runs[2])]
