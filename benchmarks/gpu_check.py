"""The GPU check of ecoflap (issue 13, item 5): pruning on a GPU gives the CPU's masks and perplexity, in float32
and bfloat16, and the coarse step's zeroth-order scorer needs no more device memory than a forward pass.

Run by ``benchmarks/gpu_check.sh`` on a machine with a GPU and no network (see that script); ``--device cpu
--quick`` is the dry run that proves the check itself works on any machine. Everything is random weights built
from configs with the shapes of the real models (SmolLM2-135M, TinyLlama-1.1B; the tests' tiny mini-blip2):
the real weights cannot travel with the check (at most 64 MiB go along), and the comparison is CPU against GPU
on the same weights, which random weights test as well. Each model is pruned on the CPU (the reference) and on
``--device`` in this one process, with the same seeded calibration tokens.

Prints a table and writes ``gpu_check.json`` under ``--out``; exits 1 when a float32 check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "plugins" / "tiny_models"))  # the tiny mini-blip2 of the tests

from ecoflap.core.adapters import Batch, LoadOptions, ModelAdapter, linears, split_batch  # noqa: E402
from ecoflap.core.compress import prune_fine, select_towers  # noqa: E402
from ecoflap.core.config import PruneConfig  # noqa: E402
from ecoflap.core.devices import describe_device, measure_step, resolve_device, to_device  # noqa: E402
from ecoflap.core.errors import EcoflapError  # noqa: E402
from ecoflap.core.scoring import first_order_scores, zeroth_order_scores  # noqa: E402
from ecoflap.plugins.models.hf_causal_lm import CausalLMAdapter  # noqa: E402
from ecoflap.plugins.pruners import SparseGPTPruner, WandaPruner  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: LLaMA shapes: (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
SMOLLM2_135M = (576, 1536, 30, 9, 3, 49152, True)
TINYLLAMA_1B = (2048, 5632, 22, 32, 4, 32000, False)
#: float32 on the GPU against the CPU: masks equal up to ties, perplexity within this relative difference
MAX_MASK_MISMATCH = 1e-3
MAX_PERPLEXITY_DIFF = 0.005


def llama(shape: tuple, layers: int | None, seed: int, dtype: torch.dtype) -> CausalLMAdapter:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, n_layers, heads, kv, vocab, tied = shape
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers or n_layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         tie_word_embeddings=tied, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    return CausalLMAdapter(model, None, f"random-llama-{hidden}x{layers or n_layers}")


def token_batch(vocab: int, samples: int, seqlen: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (samples, seqlen), generator=gen)}


def mini_blip2(dtype: torch.dtype, seed: int) -> ModelAdapter:
    from ecoflap_tiny_models.mini import tiny_mini_blip2

    adapter = tiny_mini_blip2(LoadOptions("tiny-mini-blip2", extra={"seed": seed}))
    adapter.model.to(dtype)
    return adapter


def image_caption_batch(adapter: Any, samples: int, seed: int) -> Batch:
    from PIL import Image

    rng = random.Random(seed)
    images = [Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3))) for _ in range(samples)]
    words = ["red", "blue", "circle", "square", "green", "triangle"]
    captions = [" ".join(rng.choice(words) for _ in range(3)) for _ in range(samples)]
    return {k: v.cpu() for k, v in adapter.caption_batch(images, captions).items()}


# ---- parity: the GPU against the CPU -------------------------------------------------------------------
def prune_on(device: torch.device, build: Any, batches: tuple[Batch, Batch], pruner: type) -> dict[str, Any]:
    """Build the model, place it, prune it to 50 % per layer, measure perplexity on the held-out batch."""
    adapter = build()
    adapter.place(device)
    towers = select_towers(adapter.towers(), [])
    config = PruneConfig(device=str(device), micro_batch=4)
    calibration, held_out = (to_device(b, device) for b in batches)
    sparsity = dict.fromkeys(linears(towers), 0.5)
    with measure_step(device) as step:
        prune_fine(adapter, towers, config, pruner, calibration, sparsity)
    with torch.no_grad():
        losses = torch.cat([adapter.loss(micro).float().cpu() for micro in split_batch(held_out, 4)])
    masks = {name: (layer.weight == 0).cpu() for name, layer in linears(towers).items()}
    return {"masks": masks, "perplexity": math.exp(float(losses.mean())), "step": step.to_dict()}


def parity(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    rows = []
    cases = [
        ("SmolLM2-135M shape", SMOLLM2_135M, WandaPruner),
        ("SmolLM2-135M shape", SMOLLM2_135M, SparseGPTPruner),
        ("tiny mini-blip2", None, WandaPruner),
    ]
    for name, shape, pruner in cases:
        for dtype_name, dtype in DTYPES.items():
            if shape is None:
                probe = mini_blip2(dtype, 0)
                batches = (image_caption_batch(probe, 8, 1), image_caption_batch(probe, 8, 2))
                build = lambda dtype=dtype: mini_blip2(dtype, 0)  # noqa: E731
            else:
                seqlen = 64 if quick else 256
                batches = (token_batch(shape[5], 8, seqlen, 1), token_batch(shape[5], 8, seqlen, 2))
                build = lambda shape=shape, dtype=dtype: llama(shape, 2 if quick else None, 0, dtype)  # noqa: E731
            cpu = prune_on(torch.device("cpu"), build, batches, pruner)
            gpu = prune_on(device, build, batches, pruner)
            rows.append(compare(f"{name} {pruner.name}", dtype_name, cpu, gpu))
            print(format_row(rows[-1]), flush=True)
    return rows


def compare(model: str, dtype: str, cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, Any]:
    total = sum(m.numel() for m in cpu["masks"].values())
    differ = sum(int((cpu["masks"][n] != gpu["masks"][n]).sum()) for n in cpu["masks"])
    diff = abs(gpu["perplexity"] - cpu["perplexity"]) / cpu["perplexity"]
    row = {"model": model, "dtype": dtype, "mask_mismatch": differ / total, "ppl_cpu": cpu["perplexity"],
           "ppl_device": gpu["perplexity"], "ppl_rel_diff": diff, "fine_s_cpu": cpu["step"]["seconds"],
           "fine_s_device": gpu["step"]["seconds"], "fine_peak_device_mb": gpu["step"]["peak_device_mb"]}  # fmt: skip
    row["ok"] = dtype != "float32" or (row["mask_mismatch"] <= MAX_MASK_MISMATCH and diff <= MAX_PERPLEXITY_DIFF)
    return row


def format_row(row: dict[str, Any]) -> str:
    peak = row["fine_peak_device_mb"]
    return (
        f"{row['model']:<34} {row['dtype']:<9} masks differ {row['mask_mismatch']:.2e}  ppl cpu {row['ppl_cpu']:.4g}"
        f" device {row['ppl_device']:.4g} (rel {row['ppl_rel_diff']:.2e})  fine {row['fine_s_cpu']:.1f} s cpu,"
        f" {row['fine_s_device']:.1f} s device, peak {peak if peak is None else round(peak)} MB"
        f"  {'ok' if row['ok'] else 'FAILED'}"
    )


# ---- the coarse step's memory: zeroth-order against first-order ------------------------------------------
def coarse_memory(device: torch.device, quick: bool) -> dict[str, Any]:
    """TinyLlama-1.1B shapes in bfloat16: a forward pass, zeroth-order and first-order scoring, each measured."""
    adapter = llama(TINYLLAMA_1B, 2 if quick else None, 0, torch.bfloat16)
    adapter.place(device)
    weights_mb = sum(p.numel() * p.element_size() for p in adapter.model.parameters()) / 2**20
    towers = adapter.towers()
    batch = to_device(token_batch(TINYLLAMA_1B[5], 4, 128, 3), device)
    figures = {"parameters": sum(p.numel() for p in adapter.model.parameters()), "weights_mb": weights_mb}
    with measure_step(device) as forward, torch.no_grad():
        adapter.loss(batch)
    with measure_step(device) as zeroth:
        zeroth_order_scores(adapter, towers, batch, micro_batch=4)
    with measure_step(device) as first:
        first_order_scores(adapter, towers, batch, micro_batch=4)
    for name, step in (("forward", forward), ("zeroth-order", zeroth), ("first-order", first)):
        figures[name] = step.to_dict()
        print(f"1.1B-shape {name:<13} {step.seconds:8.1f} s  peak device {step.peak_device_mb} MB"
              f"  peak RSS {step.peak_rss_mb:.0f} MB  (weights {weights_mb:.0f} MB)", flush=True)  # fmt: skip
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU [cuda]")
    parser.add_argument("--quick", action="store_true", help="2 blocks per model: the dry run on a CPU")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of gpu_check.json")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except EcoflapError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    print(f"ecoflap GPU check on {describe_device(device)}, torch {torch.__version__}", flush=True)
    rows = parity(device, args.quick)
    coarse = coarse_memory(device, args.quick)
    result = {"device": describe_device(device), "torch": torch.__version__, "quick": args.quick,
              "parity": rows, "coarse": coarse, "seconds": time.perf_counter() - start}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    failed = [r for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} parity checks ok in {result['seconds']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
