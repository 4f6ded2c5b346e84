"""Hugging Face vision(-language) models as ecoflap model adapters: the local-folder loaders.

Registered names: ``hf-blip2``, ``hf-clip``, ``hf-vit`` (``config.json`` architectures decide). The
adapters live one family per module: hf_blip2.py (BLIP-2, OPT or T5: why T5 has two towers is
there), hf_clip.py, hf_vit.py, on the shared hf_image_text.py. The random tiny models of the tests
are a test plugin (tests/plugins/tiny_models), not registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ecoflap.core.adapters import LoadOptions, ModelSpec
from ecoflap.core.errors import EcoflapError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.plugins.models import hf_folder
from ecoflap.plugins.models.hf_blip2 import Blip2Adapter
from ecoflap.plugins.models.hf_causal_lm import _torch_dtype
from ecoflap.plugins.models.hf_clip import ClipAdapter
from ecoflap.plugins.models.hf_image_text import ImageTextAdapter
from ecoflap.plugins.models.hf_vit import VitAdapter


@dataclass(frozen=True)
class FolderKind:
    """Which architectures one folder loader takes, and how it builds the adapter."""

    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    model_class: str
    adapter: type[ImageTextAdapter]
    needs_tokenizer: bool = True

    @property
    def needs(self) -> hf_folder.FolderNeeds:
        return hf_folder.FolderNeeds(self.model_class, tokenizer=self.needs_tokenizer, processor=True)


FOLDERS = {
    "hf-blip2": FolderKind(
        ("Blip2ForConditionalGeneration",), ("blip-2",), "Blip2ForConditionalGeneration", Blip2Adapter
    ),
    "hf-clip": FolderKind(("CLIPModel",), ("clip",), "CLIPModel", ClipAdapter),
    "hf-vit": FolderKind(("ViTForImageClassification",), (), "ViTForImageClassification", VitAdapter, False),
}


def _matcher(kind: FolderKind) -> Callable[[Path], bool]:
    def matches(path: Path) -> bool:
        """A folder of this kind (by its architectures, else its model_type); a broken one fails here."""
        config = hf_folder.folder_config(path)
        names = hf_folder.architectures(config)
        ours = any(a in kind.architectures for a in names) if names else config.get("model_type") in kind.model_types
        if ours:
            hf_folder.check_folder(path, kind.needs)
        return ours

    return matches


def _folder_loader(kind: FolderKind) -> Callable[[LoadOptions], ImageTextAdapter]:
    def load(options: LoadOptions) -> ImageTextAdapter:
        import transformers

        path = Path(options.source).expanduser()
        if not path.is_dir():
            raise EcoflapError(f"model folder {path} does not exist")
        hf_folder.check_folder(path, kind.needs)
        model_class = getattr(transformers, kind.model_class)
        try:
            model = model_class.from_pretrained(path, dtype=_torch_dtype(options.dtype), local_files_only=True)
            processor = transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
            tokenizer = (
                transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
                if kind.needs_tokenizer
                else None
            )
        except EcoflapError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises about a user's folder is one line
            raise hf_folder.load_failure(path, exc) from None
        return kind.adapter(model, processor, tokenizer, str(path), targets=options.targets, ignore=options.ignore)

    return load


@hookimpl
def register_models(register) -> None:
    for name, kind in FOLDERS.items():
        register(
            ModelSpec(name, _folder_loader(kind), f"a local Hugging Face {kind.model_class} folder", _matcher(kind))
        )
