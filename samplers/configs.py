"""Named generation configs, after Open-Assistant's sampling reports
(model/model_eval/manual/config/*.json), written as transformers ``generate`` arguments.

The vLLM backend translates them (samplers.backends.vllm_sampling_kwargs); an argument
vLLM has no counterpart for (typical_p) makes that backend refuse the config up front.
"""

from __future__ import annotations

CONFIGS: dict[str, dict] = {
    # name            transformers generate() arguments
    "greedy":          {"do_sample": False},
    "top_k_50":        {"do_sample": True, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.2},  # OA "k50"
    "typical_0.95":    {"do_sample": True, "top_k": 1000, "top_p": 0.95, "typical_p": 0.95,
                        "repetition_penalty": 1.2},                                              # OA "typical95"
    "typical_0.2":     {"do_sample": True, "typical_p": 0.2},                                    # OA "typical2"
    "magic_numbers":   {"do_sample": True, "top_k": 9607, "top_p": 0.242},                       # OA "magic_numbers"
    "temperature_0.8": {"do_sample": True, "temperature": 0.8, "top_p": 0.9},
}  # fmt: skip


def config_args(name: str) -> dict:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown generation config {name!r}; known: {', '.join(CONFIGS)}") from None


def model_name(model: str, config: str, max_new_tokens: int) -> str:
    """OA's ``model_name`` of a synthetic reply: "<model>,k=v,…" naming the generation config."""
    args = {**config_args(config), "max_new_tokens": max_new_tokens}
    return ",".join([model, *(f"{k}={v}" for k, v in args.items())])


def samples_for(config: str, n: int) -> int:
    """Greedy decoding gives one answer however often it is asked: generate it once."""
    return n if config_args(config).get("do_sample", False) else 1
