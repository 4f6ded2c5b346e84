"""Time and memory per step: the peak resident memory is reset at each step's start (Linux), so a step is
not charged with an earlier step's peak; the figures reach report.json and the results block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecoflap.core import job
from ecoflap.core.config import PruneConfig
from ecoflap.core.devices import measure_step, peak_rss_mb
from ecoflap.core.plugins import load_plugins
from ecoflap.core.record import results_block

REGISTRIES = load_plugins()
BIG_MB = 256


def test_each_step_has_its_own_peak() -> None:
    with measure_step() as big:
        block = torch.ones(BIG_MB * 2**18)  # BIG_MB MiB of float32, touched
        del block
    with measure_step() as small:
        torch.ones(1000).sum()
    if big.peak_rss_scope != "step":
        pytest.skip("this kernel cannot reset the peak resident memory (/proc/self/clear_refs)")
    assert big.peak_rss_mb - small.peak_rss_mb > BIG_MB * 0.8, (big, small)
    assert small.peak_rss_mb <= peak_rss_mb() + 1
    assert big.seconds > 0 and big.peak_device_mb is None and big.peak_mb == big.peak_rss_mb


def test_a_step_records_what_was_resident_when_it_began() -> None:
    """The step's own growth is its peak less its start: memory held before it is not the step's."""
    held = torch.ones(BIG_MB * 2**18)  # held across the step, allocated before it
    with measure_step() as step:
        torch.ones(1000).sum()
    assert step.start_rss_mb is not None and step.start_rss_mb > BIG_MB * 0.9
    assert 0 <= step.peak_rss_mb - step.start_rss_mb < BIG_MB * 0.2, step
    del held


def test_a_step_records_the_thread_count_that_made_its_numbers() -> None:
    """The count while the step ran, not when it is read: a cached step keeps it when a run at another count
    reuses it (float sums round differently; one seed's VQA answers moved by 5 points)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with measure_step() as one:
            torch.ones(1000).sum()
        torch.set_num_threads(2)
        with measure_step() as two:
            torch.ones(1000).sum()
    finally:
        torch.set_num_threads(before)
    assert (one.threads, two.threads) == (1, 2) and one.to_dict()["threads"] == 1


def test_report_and_results_block_carry_each_step(tmp_path: Path, toy_corpus: Path) -> None:
    config = PruneConfig.build(model="tiny-llama", corpus=str(toy_corpus), device="cpu", nsamples=4, seqlen=32,
                               score_nsamples=2, score_seqlen=16, granularity="layer")  # fmt: skip
    methods = job.resolve_methods(REGISTRIES, config)
    adapter = job.load_model(REGISTRIES, config)
    identity = job.identify(adapter, config)
    coarse = job.coarse_scores(adapter, config, methods)
    result = job.fine_step(adapter, config, methods, job.allocation(identity["layers"], config, methods,
                                                                    coarse["scores"]))  # fmt: skip
    report = job.report(config, identity, result, coarse)
    assert set(report["steps"]) == {"coarse", "fine"}
    for step in report["steps"].values():
        assert step["seconds"] > 0 and step["peak_rss_mb"] > 0 and step["device"] == "cpu"
        assert step["peak_device_mb"] is None  # no GPU in use
        assert step["threads"] == torch.get_num_threads()
    assert report["timings_s"]["fine"] == report["steps"]["fine"]["seconds"]
    assert report["peak_memory_mb"] == max(s["peak_rss_mb"] for s in report["steps"].values())
    assert report["config"]["device"] == "cpu" and report["device"] == {"device": "cpu"}
    block = results_block(model="tiny-llama", model_hash=identity["weights_hash"], checkpoint=None, report=report,
                          allocation=[], tasks=[], evaluation={"seed": 0}, timings=report["timings_s"],
                          steps=report["steps"])  # fmt: skip
    assert block["steps"] == report["steps"]
    assert "device" not in block["method"]  # pruned on the CPU: the method key of before devices


def test_reports_before_devices_read_as_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A report without a device was pruned on the CPU, even when read on a GPU machine (auto would say cuda)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    old = {"config": PruneConfig().model_dump(exclude={"device", "offload"}), "measured_sparsity": 0.5}
    block = results_block(model="m", model_hash=None, checkpoint=None, report=old, allocation=[], tasks=[],
                          evaluation={"seed": 0}, timings={})  # fmt: skip
    assert "device" not in block["method"]
