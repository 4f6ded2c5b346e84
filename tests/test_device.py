"""Device and precision: --device resolved and checked before any model loads; bfloat16 weights prune with
float32 statistics; the CPU (given or chosen by auto) gives the masks of before."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ecoflap.core import job
from ecoflap.core.adapters import ModelSpec
from ecoflap.core.config import PruneConfig
from ecoflap.core.devices import device_identity, resolve_device, to_device
from ecoflap.core.errors import EcoflapError
from ecoflap.core.plugins import load_plugins
from ecoflap.pipelines.cli import cli
from ecoflap.plugins.pruners import SparseGPTPruner, WandaPruner

REGISTRIES = load_plugins()


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A sandbox in which loading any model fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(job, "load_model", refuse)
    monkeypatch.setenv("ECOFLAP_RUN_CACHE", str(tmp_path / "run-cache"))
    monkeypatch.setenv("ECOFLAP_DATABASE_URL", f"sqlite:///{tmp_path / 'results.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_error_line(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_cuda_without_cuda_is_one_error_line(no_model_loads: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_error_line(["prune", "--model", "tiny-llama", "--no-eval", "--device", "cuda"])
    assert "device" in line and "no CUDA GPU" in line and "--device cpu" in line
    assert list(no_model_loads.iterdir()) == []  # no run folder, no database


def test_a_gpu_this_machine_lacks_is_one_error_line(no_model_loads: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = one_error_line(["prune", "--model", "tiny-llama", "--no-eval", "--device", "cuda:3"])
    assert "has 2 CUDA GPU(s), cuda:0 to cuda:1" in line
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "cpu:0 "])
def test_a_device_name_that_is_none_is_one_error_line(no_model_loads: Path, name: str) -> None:
    line = one_error_line(["prune", "--model", "tiny-llama", "--no-eval", "--device", name])
    assert "device" in line and "use auto, cpu, cuda or cuda:N" in line


def test_auto_is_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert PruneConfig.build(device="auto").method() == PruneConfig.build(device="cpu").method()
    assert "device" not in PruneConfig.build().method()  # CPU keys stay those of before devices


def test_a_gpu_is_part_of_the_method_identity() -> None:
    """A checkpoint pruned on a GPU rounds differently: its method (and so its keys) differ from the CPU's."""
    cpu = PruneConfig(device="cpu").method()
    gpu = PruneConfig(device="cuda:1").method()  # read from a report: no GPU needed to compute its identity
    assert gpu == cpu | {"device": "cuda"}
    assert device_identity("cuda:0") == device_identity("cuda:1") == "cuda"


def test_to_device_moves_nested_tensors() -> None:
    batch = {"ids": torch.ones(2), "more": [torch.zeros(1), (torch.zeros(1), 3)], "name": "x"}
    moved = to_device(batch, torch.device("meta"))
    assert moved["ids"].is_meta and moved["more"][0].is_meta and moved["more"][1][0].is_meta
    assert moved["more"][1][1] == 3 and moved["name"] == "x"


# ---- precision: bfloat16 weights, float32 statistics ---------------------------------------------------
def _layers(seed: int = 0) -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
    """A bfloat16 layer, a float32 copy of the same (bfloat16-rounded) weights, and bfloat16 inputs."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(32, 64, generator=gen))
    reference = copy.deepcopy(layer).float()
    inputs = torch.randn(4, 16, 64, generator=gen).to(torch.bfloat16)
    return layer, reference, inputs


@pytest.mark.parametrize("pruner_class", [WandaPruner, SparseGPTPruner])
def test_bfloat16_weights_prune_with_float32_statistics(pruner_class) -> None:
    layer, reference, inputs = _layers()
    pruner, expected = pruner_class(layer, "row"), pruner_class(reference, "row")
    for batch in inputs.split(2):
        pruner.add_batch(batch, layer(batch))
        expected.add_batch(batch.float(), reference(batch.float()))
    statistic = pruner.H if pruner_class is SparseGPTPruner else pruner.scaler_row
    assert statistic.dtype == torch.float32
    reference_statistic = expected.H if pruner_class is SparseGPTPruner else expected.scaler_row
    assert torch.equal(statistic, reference_statistic)  # bf16 inputs, accumulated exactly as their fp32 values
    mask, expected_mask = pruner.prune(0.5), expected.prune(0.5)
    assert torch.equal(mask, expected_mask)
    assert layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer.weight, reference.weight.to(torch.bfloat16))  # SparseGPT's update in fp32, rounded once


def test_sparsegpt_cholesky_factor_is_float32_for_bfloat16_weights() -> None:
    layer, _, inputs = _layers(1)
    pruner = SparseGPTPruner(layer)
    pruner.add_batch(inputs, layer(inputs))
    factor = pruner._inverse_hessian_factor(layer.weight.detach().float().clone())
    assert factor.dtype == torch.float32 and torch.equal(factor, factor.triu())


# ---- the CPU gives the masks of before -------------------------------------------------------------------
def _pruned_weights(config: PruneConfig) -> dict[str, torch.Tensor]:
    methods = job.resolve_methods(REGISTRIES, config)
    adapter = job.load_model(REGISTRIES, config, offload=True)
    identity = job.identify(adapter, config)
    coarse = job.coarse_scores(adapter, config, methods)
    sparsity = job.allocation(identity["layers"], config, methods, coarse["scores"])
    job.fine_step(adapter, config, methods, sparsity)
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


def test_cpu_and_auto_give_the_masks_of_before(toy_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = {"model": "tiny-llama", "corpus": str(toy_corpus), "nsamples": 4, "seqlen": 32, "score_nsamples": 2,
                "score_seqlen": 16, "granularity": "layer", "pruner": "sparsegpt"}  # fmt: skip
    before = _pruned_weights(PruneConfig.build(**settings))  # no device given: auto
    for device in ("cpu", "auto"):
        after = _pruned_weights(PruneConfig.build(**settings, device=device))
        assert all(torch.equal(before[k], after[k]) for k in before), device
    assert any((v == 0).float().mean() > 0.3 for v in before.values())  # it did prune


def test_loaded_model_sits_on_the_configured_device() -> None:
    adapter = job.load_model(REGISTRIES, PruneConfig.build(model="tiny-llama", device="cpu"))
    assert adapter.device == torch.device("cpu")
    assert {p.device.type for p in adapter.model.parameters()} == {"cpu"}


def test_an_unavailable_device_fails_before_the_weights_load(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PruneConfig(model="tiny-llama", device="cuda")  # validated elsewhere (a report read on this machine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refusing = ModelSpec("tiny-llama", lambda options: pytest.fail("the weights were read"))
    monkeypatch.setattr(job, "resolve_model", lambda registries, source: refusing)
    with pytest.raises(EcoflapError, match="no CUDA GPU"):
        job.load_model(REGISTRIES, config)


def test_eval_on_a_gpu_this_machine_lacks_is_one_error_line(
    no_model_loads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_error_line(["eval", "--model", "tiny-llama", "--tasks", "wikitext", "--device", "cuda"])
    assert "no CUDA GPU" in line and "--device cpu" in line
    assert not (no_model_loads / "runs").exists()


def test_a_run_evaluates_on_its_device_in_its_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ecoflap run --device D --dtype T`` evaluates where and how it pruned; the precision is in the eval key."""
    from ecoflap.pipelines.run_config import RunConfig
    from ecoflap.pipelines.steps import eval_config, eval_key, request_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    identity = {"weights_hash": "0" * 64}
    half = request_for(RunConfig.build(model="tiny-llama", device="cpu", dtype="bfloat16"), identity, None)
    full = request_for(RunConfig.build(model="tiny-llama", device="cpu"), identity, None)
    assert (half.device, half.dtype, eval_config(half).dtype) == ("cpu", "bfloat16", "bfloat16")
    assert half.evaluation()["dtype"] == "bfloat16" and "dtype" not in full.evaluation()
    assert eval_key(half, "wikitext", REGISTRIES) != eval_key(full, "wikitext", REGISTRIES)
    auto = full.model_copy(update={"device": "auto"})
    assert eval_key(auto, "wikitext", REGISTRIES) == eval_key(full, "wikitext", REGISTRIES)  # auto is the CPU here
