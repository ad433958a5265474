"""Tiny causal language models for tests, the pipeline and CPU benchmarks.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the given texts and a
small Llama-shaped model is built from a config with seeded weights. The chat template
marks assistant turns with ``{% generation %}`` so TRL can train on assistant tokens only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Enough text for a tokenizer to learn common English pieces when the caller has few texts.
BASE_CORPUS = [
    "Can you tell me about the history of the printing press?",
    "The printing press made books cheaper and spread ideas across Europe.",
    "How do I bake bread at home? Mix flour, water, salt and yeast, knead, rest and bake.",
    "Write a short poem about the sea and the moon.",
    "Water is called the universal solvent because it dissolves more substances than any other liquid.",
    "What is the capital of France? The capital of France is Paris.",
    "Explain recursion to a child: a story that contains a smaller copy of itself.",
    "Thank you! I am happy to help with anything else you need.",
    "Python is a programming language. A function takes arguments and returns a value.",
    "Please summarise the main points of the article in three sentences.",
]


def build_tiny_lm(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts`` (plus a small built-in corpus), build a seeded tiny
    LlamaForCausalLM and save both to ``out_dir`` (loadable with from_pretrained)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = [*BASE_CORPUS, *texts]

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=max_positions,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    return out
