"""What mini-blip2 and mini-clip share: the shipped-weights folder, image preprocessing, the cached
DINOv2 features of easy-vqa's images that their training reads, and the provenance of a training run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.cache import cache_dir
from ecoflap.core.errors import EcoflapError
from ecoflap.core.provenance import write_file

#: the weights that ship inside the package (read only: ``ecoflap zoo train`` writes to the cache or ``-o``)
WEIGHTS = Path(__file__).parent / "weights"
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path) -> Any:
    """An RGB PIL image; a file that cannot be decoded is one clear error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise EcoflapError(f"cannot decode image {path}: {str(exc).splitlines()[0]}") from None


def pixel_values(images: Sequence[Any], size: int) -> torch.Tensor:
    """Resize (bicubic) to ``size`` x ``size`` and normalise with ImageNet statistics, as DINOv2 expects."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for image in images:
        image = load_image(image) if isinstance(image, (str, Path)) else image.convert("RGB")
        tensor = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        tensor = TF.resize(tensor, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        out.append(TF.normalize(tensor, IMAGE_MEAN, IMAGE_STD))
    return torch.stack(out)


def feature_cache(split: str, size: int) -> Path:
    return cache_dir() / "features" / f"dinov2s-{size}-easyvqa-{split}.pt"


@torch.no_grad()
def image_features(vision: torch.nn.Module, split: str, size: int, log: Any = print) -> dict[int, torch.Tensor]:
    """Frozen DINOv2 features of every image of ``split``, computed once (fp16 on disk)."""
    from ecoflap.core.datasets import easy_vqa

    path = feature_cache(split, size)
    if path.is_file():
        return torch.load(path)
    paths = easy_vqa.image_paths(split)
    ids = sorted(paths)
    chunks = []
    start = time.perf_counter()
    for i in range(0, len(ids), 64):
        chunks.append(vision(pixel_values=pixel_values([paths[j] for j in ids[i : i + 64]], size)).last_hidden_state)
        log(f"features {split}: {min(i + 64, len(ids))}/{len(ids)} images, {time.perf_counter() - start:.0f} s")
    features = dict(zip(ids, torch.cat(chunks).half(), strict=True))
    write_file(path, lambda tmp: torch.save(features, tmp))
    return features


def zoo_output(name: str, out: Path | None) -> Path:
    """Where ``ecoflap zoo train NAME`` writes: ``out``, or the cache's ``zoo/NAME`` (never the package)."""
    return out if out is not None else cache_dir() / "zoo" / name
