"""Model size against memory and time: the fine step in memory and onloaded from disk (issue 13, item 4).

Three LLaMA-shaped models: random weights with TinyLlama-1.1B's block shapes, a ~3.5x smaller random one, and
the real SmolLM2-135M. The random ones are built from a config once (seeded) and saved as safetensors under
``--models`` (SmolLM2's tokenizer and vocabulary, so the job's Wikipedia calibration reads them). Each model is
pruned by ``ecoflap prune`` (uniform 50%, Wanda and SparseGPT) in a fresh process per cell, with the weights in
memory (``--offload none``) and onloaded block by block from disk (``--offload disk``), each with its own run
cache. The table gives, per cell: the fine step's time, the resident memory when it began and its peak, the
whole process's peak (its VmHWM read every 50 ms, all steps), and whether the onloaded masks equal the in-memory ones.

    python benchmarks/model_size.py                      # all three models -> benchmarks/results/model_size.json
    python benchmarks/model_size.py --model random-llama-0.3b --pruner wanda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "model_size.json"
#: LLaMA block shapes: hidden, intermediate, layers, heads, key-value heads
SHAPES = {
    "random-llama-1.1b": (2048, 5632, 22, 32, 4),  # TinyLlama-1.1B
    "random-llama-0.3b": (1024, 2816, 22, 16, 4),
}
MODELS = [*SHAPES, "smollm2-135m"]
PRUNERS = ["wanda", "sparsegpt"]
OFFLOADS = ["none", "disk"]


def build_folder(name: str, root: Path) -> Path:
    """The model's safetensors folder: the real SmolLM2's, or a random LLaMA built and saved once."""
    from ecoflap.plugins.models.hf_causal_lm import smollm2_folder

    if name not in SHAPES:
        return smollm2_folder()
    folder = root / name
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(), local_files_only=True)
    hidden, intermediate, layers, heads, kv_heads = SHAPES[name]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=len(tokenizer),
                         tie_word_embeddings=False, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True, max_shard_size="1GB")
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def prune(folder: Path, pruner: str, offload: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``ecoflap prune`` in a fresh process; its fine step's figures from report.json, its peak sampled."""
    output = work / "out"
    env = os.environ | {
        "ECOFLAP_THREADS": str(args.threads),
        "OMP_NUM_THREADS": str(args.threads),
        "ECOFLAP_RUN_CACHE": str(work / "run-cache"),
        "ECOFLAP_DATABASE_URL": f"sqlite:///{work / 'results.db'}",
        "TQDM_DISABLE": "1",
    }
    command = [sys.executable, "-m", "ecoflap.pipelines.cli", "prune", "--model", str(folder), "--device", "cpu",
               "--allocator", "uniform", "--sparsity", "0.5", "--pruner", pruner, "--offload", offload,
               "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--no-eval",
               "-o", str(output)]  # fmt: skip
    start = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_mb = process_peak_mb(child)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(work / 'log.txt').read_text()[-3000:]}")
    report = json.loads((output / "report.json").read_text())
    fine = report["steps"]["fine"]
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "fine_s": round(fine["seconds"], 1),
        "fine_start_rss_mb": round(fine["start_rss_mb"]),
        "fine_peak_rss_mb": round(fine["peak_rss_mb"]),
        "process_peak_rss_mb": round(peak_mb),
        "measured_sparsity": report["measured_sparsity"],
        "output": output,
    }


def process_peak_mb(child: subprocess.Popen) -> float:
    """The child's own peak resident memory until it exits: the largest VmHWM read every 50 ms (the job resets
    VmHWM at each step, so one final reading would give the last step's). Not wait4's ru_maxrss: that also counts
    the processes the child forks, each with the memory it shared with the child at the fork, so it overstates."""
    status = Path(f"/proc/{child.pid}/status")
    peak = 0.0
    while child.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            peak = max(peak, int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024)
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    return peak


def tensor_files(folder: Path) -> dict[str, Path]:
    """Each tensor's name -> the safetensors file of ``folder`` that holds it (headers only)."""
    from safetensors import safe_open

    files = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            files |= dict.fromkeys(f.keys(), file)
    return files


def same_masks(a: Path, b: Path) -> bool:
    """Whether two pruned checkpoints zero the same weights (read one tensor at a time)."""
    from safetensors import safe_open

    left, right = tensor_files(a), tensor_files(b)
    if left.keys() != right.keys():
        return False
    for name in sorted(left):
        with safe_open(str(left[name]), framework="pt") as f, safe_open(str(right[name]), framework="pt") as g:
            if not (f.get_tensor(name) == 0).equal(g.get_tensor(name) == 0):
                return False
    return True


def describe(folder: Path) -> dict[str, Any]:
    """Parameters and weights size, from the safetensors headers (nothing loaded)."""
    from safetensors import safe_open

    params = 0
    for name, file in tensor_files(folder).items():
        with safe_open(str(file), framework="pt") as f:
            params += math.prod(f.get_slice(name).get_shape())
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"params_m": round(params / 1e6, 1), "weights_mb": round(size / 2**20)}


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | params (M) | weights (MB) | pruner | offload | fine step (s) | resident at start (MB) | "
            "fine peak (MB) | process peak (MB) | masks = in memory |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        same = "-" if r["offload"] == "none" else ("yes" if r.get("same_masks") else "NO")
        lines.append(f"| {r['model']} | {r['params_m']} | {r['weights_mb']} | {r['pruner']} | {r['offload']} | "
                     f"{r['fine_s']} | {r['fine_start_rss_mb']} | {r['fine_peak_rss_mb']} | "
                     f"{r['process_peak_rss_mb']} | {same} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", choices=MODELS, help="repeatable [all three]")
    parser.add_argument("--pruner", action="append", choices=PRUNERS, help="repeatable [wanda, sparsegpt]")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "ecoflap-size-models",
                        help="where the random models are saved once [$TMPDIR/ecoflap-size-models]")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run [1]")
    parser.add_argument("--nsamples", type=int, default=16, help="fine-step calibration samples [16]")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per calibration sample [256]")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results [{RESULTS}]")
    args = parser.parse_args()
    from ecoflap.core.provenance import git_hash, write_json

    rows = []
    for name in args.model or MODELS:
        folder = build_folder(name, args.models)
        facts = {"model": name} | describe(folder)
        for pruner in args.pruner or PRUNERS:
            outputs = {}
            for offload in OFFLOADS:
                with tempfile.TemporaryDirectory(prefix="ecoflap-size-") as work:
                    cell = prune(folder, pruner, offload, args, Path(work))
                    if offload == "none":
                        kept = Path(tempfile.mkdtemp(prefix="ecoflap-size-in-memory-"))
                        shutil.copytree(cell["output"], kept, dirs_exist_ok=True, symlinks=False)
                        outputs["none"] = kept
                    else:
                        cell["same_masks"] = same_masks(outputs["none"], cell["output"])
                        shutil.rmtree(outputs["none"])
                    cell.pop("output")
                    rows.append(facts | {"pruner": pruner, "offload": offload} | cell)
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    settings = {"threads": args.threads, "nsamples": args.nsamples, "seqlen": args.seqlen, "sparsity": 0.5,
                "allocator": "uniform", "malloc_trim_threshold": os.environ.get("MALLOC_TRIM_THRESHOLD_")}  # fmt: skip
    command = "python benchmarks/model_size.py " + " ".join(sys.argv[1:])
    write_json(args.out, {"git_hash": git_hash(), "command": command.strip(), "settings": settings, "rows": rows})
    print(table(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
