"""Completion sampling from snapshots on Ray (issue #7).

    from samplers import sample_completions, post_completions
    summary = sample_completions("SNAPSHOT_ID", "path/to/model", n=4, configs=("top_k_50", "greedy"),
                                 api_url="http://127.0.0.1:8080/api/v1", api_key="...")

Modules: ``configs`` (the named generation configs), ``backends`` (transformers on CPU,
vLLM on GPU), ``trees`` (dedup, ids, ranking-only trees, posting), ``job`` (the Ray job).
"""

from __future__ import annotations

__all__ = ["sample_completions", "post_completions", "CONFIGS"]


def __getattr__(name: str):
    # Imported on first use: the `oasst` CLI imports this package at start and should not
    # pay for pyarrow (let alone torch or Ray) unless it samples.
    if name in ("sample_completions", "post_completions"):
        from samplers import job

        return getattr(job, name)
    if name == "CONFIGS":
        from samplers.configs import CONFIGS

        return CONFIGS
    raise AttributeError(f"module 'samplers' has no attribute {name!r}")
