"""Reproducible: the same job, seed and thread count give bit-identical scores, allocations and masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_end_to_end import prune_job

from ecoflap.core.config import PruneConfig


def _pruned_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize(
    "settings",
    [
        {"model": "tiny-llama", "scorer": "zeroth-order", "pruner": "wanda"},
        {"model": "tiny-opt", "scorer": "first-order", "pruner": "sparsegpt"},
    ],
    ids=["zeroth-order+wanda", "first-order+sparsegpt"],
)
def test_the_job_twice_gives_identical_masks(tmp_path: Path, toy_corpus: Path, settings: dict) -> None:
    config = PruneConfig.build(
        **settings, corpus=str(toy_corpus), allocator="ecoflap", granularity="layer", sparsity=0.5, nsamples=4,
        seqlen=32, score_nsamples=4, score_seqlen=32, zo_noise=2,
    )  # fmt: skip
    first, second = prune_job(config, tmp_path / "a"), prune_job(config, tmp_path / "b")
    assert first["scores"] == second["scores"] and first["allocation"] == second["allocation"]
    a, b = _pruned_weights(tmp_path / "a"), _pruned_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name] == 0, b[name] == 0), f"mask of {name} differs"
        assert torch.equal(a[name], b[name]), f"weights of {name} differ"
    # and the seed is what makes them so: another seed draws other calibration samples and perturbations
    third = prune_job(config.model_copy(update={"seed": config.seed + 1}), tmp_path / "c")
    assert third["scores"] != first["scores"]


@pytest.mark.slow  # two fresh processes of the whole command: 85 s on 2 cores
def test_the_command_twice_in_fresh_processes_gives_identical_pruned_weights(tmp_path: Path) -> None:
    """``ecoflap prune`` twice, each in its own process (other hash seeds, empty run caches): the same weights."""
    import os
    import subprocess
    import sys

    folders = []
    for run, hash_seed in enumerate(("1", "2")):
        env = os.environ | {
            "PYTHONHASHSEED": hash_seed,
            "ECOFLAP_THREADS": "1",
            "ECOFLAP_RUN_CACHE": str(tmp_path / f"cache{run}"),
            "PREFECT_HOME": str(tmp_path / f"prefect{run}"),
        }
        out = tmp_path / f"run{run}"
        command = [sys.executable, "-m", "ecoflap.pipelines.cli", "prune", "--model", "tiny-mini-blip2", "--no-eval"]
        command += [
            "--nsamples",
            "4",
            "--seqlen",
            "32",
            "--score-nsamples",
            "4",
            "--score-seqlen",
            "32",
            "-o",
            str(out),
        ]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        folders.append(out)
    first, second = (_pruned_weights_everywhere(f) for f in folders)
    assert first.keys() == second.keys() and len(first) > 0
    assert all(torch.equal(first[name], second[name]) for name in first)


def _pruned_weights_everywhere(folder: Path) -> dict[str, torch.Tensor]:
    return {
        f"{f.relative_to(folder)}:{k}": v
        for f in sorted(folder.rglob("*.safetensors"))
        for k, v in load_file(f).items()
    }
