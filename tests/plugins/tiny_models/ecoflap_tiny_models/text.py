"""A byte tokenizer built in code and the tiny LLaMA / OPT / T5 configs; the tiny causal LMs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.plugins.models.hf_causal_lm import CausalLMAdapter


@functools.cache
def byte_tokenizer() -> Any:
    """A 259-token byte-level tokenizer built in code (no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    settings = {
        "vocab_size": 259,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    return LlamaConfig(**(settings | overrides))


def tiny_opt_config(**overrides: Any) -> Any:
    from transformers import OPTConfig

    settings = {
        "vocab_size": 259,
        "hidden_size": 64,
        "ffn_dim": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "word_embed_proj_dim": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    return OPTConfig(**(settings | overrides))


def tiny_t5_config() -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=259,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
    )


def causal_lm(name: str, config_fn: Callable[[], Any]) -> Callable[[LoadOptions], CausalLMAdapter]:
    """The loader of a random causal LM of ``config_fn``'s sizes, seeded by ``extra["seed"]``."""

    def load(options: LoadOptions) -> CausalLMAdapter:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(int(options.extra.get("seed", 0)))
        model = AutoModelForCausalLM.from_config(config_fn(), dtype=torch.float32)
        return CausalLMAdapter(model, byte_tokenizer(), name, targets=options.targets, ignore=options.ignore)

    return load
