"""LAVIS BLIP-2 (``blip2_opt``, ``blip2_t5``) as ecoflap model adapters.

Towers: ``vision`` (the EVA ViT's ``visual_encoder.blocks``), then the language model's blocks
(OPT: ``language``; T5: ``language-encoder`` and ``language-decoder``, see hf_blip2.py for why
two). Q-Former, query tokens, ``ln_vision``, the projection and the LM's embeddings and head stay
dense. Loss, calibration pairs and capabilities are those of the Hugging Face BLIP-2 adapter
(:class:`ecoflap.plugins.models.hf_blip2.Blip2Adapter`); captions and answers come from LAVIS's own
``generate`` with greedy decoding. All compatibility code lives in lavis_compat.py.

Names (the random ``tiny-lavis-blip2-*`` of the tests are a test plugin, tests/plugins/tiny_models):
- ``lavis:blip2_opt:pretrain_opt2.7b`` (and the other LAVIS model types listed in ``LAVIS_TYPES``):
  real weights through ``lavis.models.load_model_and_preprocess`` from LOCAL files only. Pass
  ``LoadOptions.extra["checkpoint"]`` (or ``$ECOFLAP_LAVIS_CHECKPOINT``): the LAVIS ``.pth`` file
  (it holds the ViT, Q-Former and projection weights), and ``extra["lm_path"]`` (or
  ``$ECOFLAP_LAVIS_LM``): a local folder of the language model (facebook/opt-2.7b, google/flan-t5-xl).
- a folder written by ``save`` (``ecoflap_lavis.json`` + ``lavis_checkpoint.pth``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ecoflap.core.adapters import LoadOptions, ModelSpec
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.plugins import load_plugins
from ecoflap.plugins.models.hf_blip2 import Blip2Adapter
from ecoflap.plugins.models.hf_causal_lm import _torch_dtype
from ecoflap.plugins.models.hf_image_text import load_image
from ecoflap.plugins.models.lavis_compat import ensure_lavis, ensure_process_group, offline_constructors

CHECKPOINT = "lavis_checkpoint.pth"
MANIFEST = "ecoflap_lavis.json"
LAVIS_TYPES = {
    "blip2_opt": ("pretrain_opt2.7b", "pretrain_opt6.7b", "caption_coco_opt2.7b", "caption_coco_opt6.7b"),
    "blip2_t5": ("pretrain_flant5xl", "pretrain_flant5xxl", "caption_coco_flant5xl"),
}


class LavisBlip2Adapter(Blip2Adapter):
    """A LAVIS ``Blip2OPT`` / ``Blip2T5`` model, with its eval image processor."""

    kind = "lavis-blip2"

    def __init__(self, model: nn.Module, image_processor: Any, model_id: str, source: dict[str, Any], **kw: Any):
        tokenizer = getattr(model, "opt_tokenizer", None) or model.t5_tokenizer
        super().__init__(model, image_processor, tokenizer, model_id, **kw)
        self.source = source  # how to rebuild the architecture (MANIFEST)

    def _is_decoder_only(self) -> bool:
        return hasattr(self.model, "opt_model")

    def _lm(self) -> nn.Module:
        return self.model.opt_model if self._is_decoder_only() else self.model.t5_model

    def _lm_prefix(self) -> str:
        return "opt_model" if self._is_decoder_only() else "t5_model"

    def tower_modules(self) -> list[tuple[str, Sequence[nn.Module], str]]:
        return [("vision", list(self.model.visual_encoder.blocks), "visual_encoder.blocks")] + self._lm_towers()

    def pixel_values(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([self.image_processor(load_image(i)) for i in images]).to(self._dtype())

    def query_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model
        image_embeds = m.ln_vision(m.visual_encoder(pixel_values))
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = m.Qformer.bert(query_embeds=query, encoder_hidden_states=image_embeds, encoder_attention_mask=atts)
        proj = m.opt_proj if self._is_decoder_only() else m.t5_proj
        return proj(out.last_hidden_state)

    @torch.no_grad()
    def _generate(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        """LAVIS's own ``generate``, greedy (its beam search breaks on transformers >= 4.49), one image at
        a time: ``Blip2OPT.generate`` takes one prompt string for its whole batch and pads on the right."""
        s = self.settings
        settings = {"num_beams": 1, "max_length": max_new_tokens, "min_length": 1}
        settings |= {"length_penalty": s.length_penalty, "repetition_penalty": s.repetition_penalty}
        pixels = self.pixel_values(images)
        return [
            self.model.generate({"image": pixels[i : i + 1], "prompt": prompt}, **settings)[0]
            for i, prompt in enumerate(prompts)
        ]

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.model.state_dict()}, path / CHECKPOINT)
        (path / MANIFEST).write_text(json.dumps(self.source, indent=2) + "\n")


def eval_processor(image_size: int) -> Any:
    from lavis.processors.blip_processors import BlipImageEvalProcessor

    return BlipImageEvalProcessor(image_size=image_size)


def lavis_adapter(model: nn.Module, processor: Any, name: str, source: dict[str, Any], options: LoadOptions):
    ensure_process_group()
    model = model.float().eval()  # LAVIS loads its LM in fp16, for GPUs; ecoflap's default is fp32
    if options.dtype != "float32":
        model.to(_torch_dtype(options.dtype))
    return LavisBlip2Adapter(model, processor, name, source, targets=options.targets, ignore=options.ignore)


# ---------------------------------------------------------------------------------------------
# real checkpoints, through lavis.models.load_model_and_preprocess, local files only
# ---------------------------------------------------------------------------------------------


def _local_path(options: LoadOptions, key: str, env: str, what: str) -> Path:
    value = options.extra.get(key) or os.environ.get(env)
    if not value:
        raise EcoflapError(f"{options.source} needs {what}: set LoadOptions.extra[{key!r}] or ${env}")
    path = Path(value).expanduser()
    if not path.exists():
        raise EcoflapError(f"{what} {path} does not exist")
    return path


def _local_model_type(arch: str, model_type: str, checkpoint: Path, lm_path: Path) -> str:
    """A copy of LAVIS's config for ``model_type`` that points at local files, registered under a new type."""
    from lavis.common.registry import registry
    from omegaconf import OmegaConf

    cls = registry.get_model_class(arch)
    cfg = OmegaConf.load(cls.default_config_path(model_type))
    cfg.model.pretrained = str(checkpoint)
    cfg.model.load_finetuned = False
    cfg.model.vit_precision = "fp32"
    cfg.model["opt_model" if arch == "blip2_opt" else "t5_model"] = str(lm_path)
    target = Path(tempfile.mkdtemp(prefix="ecoflap-lavis-")) / f"{model_type}.yaml"
    OmegaConf.save(cfg, target)
    local_type = f"ecoflap-local-{model_type}"
    cls.PRETRAINED_MODEL_CONFIG_DICT[local_type] = str(target)  # an absolute path: LAVIS keeps it as is
    return local_type


def _lavis_loader(arch: str, model_type: str) -> Callable[[LoadOptions], LavisBlip2Adapter]:
    def load(options: LoadOptions) -> LavisBlip2Adapter:
        checkpoint = _local_path(options, "checkpoint", "ECOFLAP_LAVIS_CHECKPOINT", "a LAVIS checkpoint (.pth)")
        lm_path = _local_path(options, "lm_path", "ECOFLAP_LAVIS_LM", "a local language-model folder")
        ensure_lavis()
        from lavis.models import load_model_and_preprocess

        local_type = _local_model_type(arch, model_type, checkpoint, lm_path)
        try:
            with offline_constructors():
                model, vis, _ = load_model_and_preprocess(arch, local_type, is_eval=True, device="cpu")
        except (OSError, RuntimeError, ValueError) as exc:
            raise EcoflapError(f"cannot load {options.source}: {str(exc).splitlines()[0]}") from None
        source = {"model": options.source, "checkpoint": str(checkpoint), "lm_path": str(lm_path)}
        return lavis_adapter(model, vis["eval"], options.source, source, options)

    return load


# ---------------------------------------------------------------------------------------------
# folders written by save
# ---------------------------------------------------------------------------------------------


def _is_saved_folder(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def load_saved(options: LoadOptions) -> LavisBlip2Adapter:
    """Rebuild the saved model's architecture, then load its (pruned) weights."""
    path = Path(options.source).expanduser()
    for name in (MANIFEST, CHECKPOINT):
        if not (path / name).is_file():
            raise EcoflapError(f"LAVIS model folder {path} has no {name}")
    source = json.loads((path / MANIFEST).read_text())
    builder = _builder(source.get("model", ""))
    if builder is None:
        raise EcoflapError(f"{path / MANIFEST} names an unknown LAVIS model {source.get('model')!r}")
    extra = options.extra | {k: v for k, v in source.items() if k in ("checkpoint", "lm_path")}
    adapter = builder(LoadOptions(source["model"], options.targets, options.ignore, options.dtype, extra))
    try:
        state = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    except (OSError, RuntimeError, KeyError) as exc:
        raise EcoflapError(f"cannot read {path / CHECKPOINT}: {str(exc).splitlines()[0]}") from None
    adapter.model.load_state_dict(state)
    adapter.model_id = str(path)
    return adapter


def _builder(name: str) -> Callable[[LoadOptions], Any] | None:
    """The loader that rebuilds the architecture ``name``: a LAVIS type here, or another plugin's model."""
    if name in REGISTERED:
        return REGISTERED[name]
    models = load_plugins().models
    return models.get(name).load if name in models else None


REGISTERED: dict[str, Callable[[LoadOptions], LavisBlip2Adapter]] = {
    f"lavis:{arch}:{t}": _lavis_loader(arch, t) for arch, types in LAVIS_TYPES.items() for t in types
}


@hookimpl
def register_models(register) -> None:
    for name, load in REGISTERED.items():
        register(ModelSpec(name, load, "LAVIS BLIP-2 from a local checkpoint"))
    register(ModelSpec("lavis-saved", load_saved, "a LAVIS BLIP-2 folder saved by ecoflap", _is_saved_folder))
