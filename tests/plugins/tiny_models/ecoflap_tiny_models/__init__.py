"""The random tiny models of ecoflap's tests, registered as a third party's plugin would register them.

Never in the production registry: tests/conftest.py puts this folder on ``sys.path`` and ``PYTHONPATH``,
where the checked-in ``*.dist-info`` declares the plugin in the ``ecoflap`` entry-point group.
"""

from __future__ import annotations

from ecoflap.core.adapters import ModelSpec
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.models.hf_blip2 import Blip2Adapter
from ecoflap.plugins.models.hf_clip import ClipAdapter
from ecoflap.plugins.models.hf_vit import VitAdapter
from ecoflap_tiny_models import lavis, mini, text, vision

ECOFLAP_API_VERSION = "1.0"

MODELS = [
    ModelSpec("tiny-llama", text.causal_lm("tiny-llama", text.tiny_llama_config), "random 4-block LLaMA"),
    ModelSpec("tiny-opt", text.causal_lm("tiny-opt", text.tiny_opt_config), "random 4-block OPT"),
    ModelSpec(
        "tiny-blip2-opt",
        vision.loader("tiny-blip2-opt", Blip2Adapter, vision.tiny_blip2("opt")),
        "random BLIP-2 with a 2-block OPT",
    ),
    ModelSpec(
        "tiny-blip2-t5",
        vision.loader("tiny-blip2-t5", Blip2Adapter, vision.tiny_blip2("t5")),
        "random BLIP-2 with a 2+2-block T5",
    ),
    ModelSpec("tiny-clip", vision.loader("tiny-clip", ClipAdapter, vision.tiny_clip), "random CLIP"),
    ModelSpec(
        "tiny-vit",
        vision.loader("tiny-vit", VitAdapter, vision.tiny_vit),
        "random ViT classifier over easy-vqa captions",
    ),
    ModelSpec("tiny-lavis-blip2-opt", lavis.loader("tiny-lavis-blip2-opt", "blip2_opt"), "random LAVIS BLIP-2 OPT"),
    ModelSpec("tiny-lavis-blip2-t5", lavis.loader("tiny-lavis-blip2-t5", "blip2_t5"), "random LAVIS BLIP-2 T5"),
    ModelSpec("tiny-mini-blip2", mini.tiny_mini_blip2, "random tiny mini-blip2"),
    ModelSpec("tiny-mini-clip", mini.tiny_mini_clip, "random tiny mini-clip"),
]


@hookimpl
def register_models(register) -> None:
    for spec in MODELS:
        register(spec)
