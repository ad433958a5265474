"""One interface, two generation backends: transformers ``generate`` on CPU (the default,
runs anywhere) and vLLM's offline ``LLM.generate`` on GPU machines (optional ``gpu`` extra).

Both take the same requests (token ids of a chat-formatted thread, a named config, how many
samples, a seed) and return raw decoded texts; ``clean_text`` then cuts them the same way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from samplers.configs import config_args, samples_for

BACKENDS = ("transformers", "vllm")

# transformers generate() argument -> vLLM SamplingParams argument
VLLM_ARGS = {
    "top_k": "top_k",
    "top_p": "top_p",
    "temperature": "temperature",
    "repetition_penalty": "repetition_penalty",
    "min_new_tokens": "min_tokens",
}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # NUL breaks PostgreSQL text; the rest is noise


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    config: str
    n: int  # samples wanted (greedy asks for one)
    seed: int
    max_new_tokens: int


@dataclass(frozen=True)
class Sample:
    text: str  # decoded with special tokens still in; clean_text strips them
    tokens: int  # generated tokens, the end-of-turn token included


class Backend(Protocol):
    tokenizer: object  # a transformers tokenizer (chat template, special tokens)

    def generate(self, requests: list[Request]) -> list[list[Sample]]:
        """The samples of each request, in request order."""


def request_seed(seed: int, message_id: str, config: str) -> int:
    """A thread's own seed: the same completions whichever batch or actor it lands in."""
    digest = hashlib.sha256(f"{seed}|{message_id}|{config}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def special_tokens(tokenizer) -> list[str]:
    return sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)


def clean_text(text: str, specials: list[str]) -> str:
    """A reply ends at the first special token (end of turn, or the model starting a new
    turn), as OA's filter_text; control characters go, whitespace is trimmed."""
    cut = min((i for i in (text.find(s) for s in specials) if i >= 0), default=len(text))
    return _CONTROL.sub("", text[:cut]).strip()


def encode_thread(tokenizer, messages: list[dict], max_new_tokens: int) -> list[int]:
    """The thread in the model's chat format, ready for the assistant's turn; too long a
    thread keeps its end (the turn being answered) and loses its beginning."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = max(1, tokenizer.model_max_length - max_new_tokens)
    return ids[-room:]


def make_backend(name: str, model: str, *, seed: int = 0, **options) -> Backend:
    if name == "transformers":
        return TransformersBackend(model, **options)
    if name == "vllm":
        return VLLMBackend(model, seed=seed, **options)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


class TransformersBackend:
    """transformers ``generate`` on CPU, one request at a time: each is seeded on its own,
    so results do not depend on what else shares the batch (and no padding is involved)."""

    def __init__(self, model: str, *, threads: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.eos = self.model.generation_config.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos

    def generate(self, requests: list[Request]) -> list[list[Sample]]:
        return [self._one(r) for r in requests]

    def _one(self, r: Request) -> list[Sample]:
        torch = self.torch
        torch.manual_seed(r.seed)
        ids = torch.tensor([r.prompt_ids])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                **config_args(r.config),
                num_return_sequences=r.n,
                max_new_tokens=r.max_new_tokens,
                pad_token_id=self.pad,
            )
        samples = []
        for row in out[:, ids.shape[1] :].tolist():
            end = row.index(self.eos) + 1 if self.eos in row else len(row)
            samples.append(Sample(self.tokenizer.decode(row[:end], skip_special_tokens=False), end))
        return samples


def vllm_sampling_kwargs(r: Request) -> dict:
    """SamplingParams arguments for a request (kept apart from vLLM so it is tested on CPU)."""
    args = dict(config_args(r.config))
    do_sample = args.pop("do_sample", False)
    missing = sorted(set(args) - set(VLLM_ARGS))
    if missing:
        raise ValueError(f"config {r.config!r} cannot run on vLLM: it has no {', '.join(missing)}")
    # temperature 0 is vLLM's greedy decoding (it then ignores top_k/top_p)
    kwargs = {VLLM_ARGS[k]: v for k, v in args.items()} if do_sample else {"temperature": 0.0}
    # special tokens stay in the text so clean_text cuts it exactly as for transformers
    return {"n": r.n, "seed": r.seed, "max_tokens": r.max_new_tokens, "skip_special_tokens": False, **kwargs}


class VLLMBackend:
    """vLLM's offline engine: a whole batch of requests in one ``LLM.generate`` call, each
    with its own SamplingParams (n samples, its own seed)."""

    def __init__(self, model: str, *, seed: int = 0, **engine_options):
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams  # only on GPU machines (the gpu extra)

        self.SamplingParams = SamplingParams
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.llm = LLM(model=model, seed=seed, **engine_options)

    def generate(self, requests: list[Request]) -> list[list[Sample]]:
        prompts = [{"prompt_token_ids": r.prompt_ids} for r in requests]
        params = [self.SamplingParams(**vllm_sampling_kwargs(r)) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[Sample(o.text, len(o.token_ids)) for o in out.outputs] for out in outputs]


def check_backend(name: str, configs: list[str], n: int, max_new_tokens: int) -> None:
    """Refuse an unknown backend or config before any model is loaded."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    for config in configs:
        config_args(config)
        if name == "vllm":
            vllm_sampling_kwargs(Request([], config, samples_for(config, n), 0, max_new_tokens))
