"""mini-blip2: the DINOv2 conversion, easy-vqa labels, the adapter's inference paths and joint pruning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.core.compress import Methods, compress, select_towers
from ecoflap.core.config import PruneConfig
from ecoflap.core.datasets import easy_vqa
from ecoflap.core.errors import EcoflapError
from ecoflap.core.sequential import capture_inputs
from ecoflap.plugins.allocators import EcoflapAllocator
from ecoflap.plugins.models.mini_blip2 import load_folder
from ecoflap.plugins.models.mini_common import load_image
from ecoflap.plugins.pruners import WandaPruner
from ecoflap.plugins.scorers import ZerothOrderScorer
from ecoflap_tiny_models.mini import tiny_mini_blip2

ECOFLAP = [sys.executable, "-m", "ecoflap.pipelines.cli"]


@pytest.fixture()
def adapter():
    return tiny_mini_blip2(LoadOptions("tiny-mini-blip2"))


@pytest.fixture(scope="module")
def pairs() -> list[tuple[Path, str]]:
    paths = easy_vqa.image_paths("test")
    return [(paths[i], easy_vqa.caption(*easy_vqa.image_labels("test")[i])) for i in sorted(paths)[:40]]


def test_dinov2_conversion_matches_the_onnx_model() -> None:
    from ecoflap.plugins.models.dinov2_onnx import convert, onnx_backbone_output

    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 224, 224)  # the ONNX graph is fixed at 224 px
    with torch.no_grad():
        ours = convert()(pixel_values=pixels).last_hidden_state
    reference = onnx_backbone_output(pixels)
    assert ours.shape == reference.shape == (1, 257, 384)
    assert (ours - reference).abs().max().item() < 1e-4  # seen: 1.1e-5 at 224 px, outputs up to ~9


def test_easy_vqa_labels_agree_with_every_colour_and_shape_answer(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECOFLAP_CACHE", str(tmp_path))  # computed here, not read from an older cache
    easy_vqa.image_labels.cache_clear()
    labels = easy_vqa.image_labels("test")
    assert (tmp_path / "easy-vqa" / "labels-test-v1.json").is_file()
    easy_vqa.image_labels.cache_clear()
    assert easy_vqa.image_labels("test") == labels  # the cached file reads back the same
    checked = 0
    for q in easy_vqa.questions("test"):
        colour, shape = labels[q.image_id]
        if q.answer in easy_vqa.COLOURS:
            assert q.answer == colour, q
            checked += 1
        if q.answer in easy_vqa.SHAPES:
            assert q.answer == shape, q
            checked += 1
    assert len(labels) == 1000 and checked > 2000
    assert easy_vqa.caption("red", "circle") == "a red circle"


def test_rank_scores_equal_the_loss_of_each_candidate(adapter, pairs) -> None:
    """The KV-cache ranking path equals the training loss's log-likelihood, under other left padding."""
    images = [p for p, _ in pairs[:3]]
    questions = ["what color is the shape?", "is there a triangle in the image?", "what shape is it?"]
    end = len(adapter.tokenizer(adapter.generation.answer_end, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        ranked = adapter._candidate_logprobs(
            ["teal", "no"], *adapter._prompt_pass(adapter.vqa_batch(images, questions, None))
        )
        for j, candidate in enumerate(["teal", "no"]):
            batch = adapter.vqa_batch(images, questions, [candidate] * 3)
            batch["labels"][:, -end:] = -100  # rank scores the answer tokens, not the end marker
            n_tokens = (batch["labels"] != -100).sum(1)
            loglik = -adapter.model.target_loss(batch) * n_tokens
            assert torch.allclose(loglik, ranked[:, j], atol=1e-4)


def test_batched_answers_equal_one_at_a_time(adapter, pairs) -> None:
    images = [p for p, _ in pairs[:4]]
    questions = ["what color is the shape?", "is there a red shape?", "what is the blue shape?", "is it a circle?"]
    together = adapter.answer_questions(images, questions)
    alone = [adapter.answer_questions([i], [q])[0] for i, q in zip(images, questions, strict=True)]
    assert together == alone
    candidates = easy_vqa.answers()
    generated, ranked, loglik = adapter.answer_and_rank(images, questions, candidates)
    assert (generated, ranked) == (together, adapter.rank_answers(images, questions, candidates))
    assert loglik.shape == (4, len(candidates)) and ranked == [candidates[i] for i in loglik.argmax(1).tolist()]
    with torch.no_grad():
        first, cache, mask = adapter._prompt_pass(adapter.vqa_batch(images, questions, None))
        alone = adapter._candidate_logprobs(candidates, first, cache, mask)
    assert torch.allclose(loglik, alone, atol=1e-5)  # the rank scores, which equal the training loss (above)
    assert adapter.rank_answers(images, questions, candidates) == [
        adapter.rank_answers([i], [q], candidates)[0] for i, q in zip(images, questions, strict=True)
    ]


def test_joint_pruning_shares_one_budget_and_replays_pruned_vision(adapter, pairs) -> None:
    config = PruneConfig(model="tiny-mini-blip2", sparsity=0.5, nsamples=8, score_nsamples=4, micro_batch=4)
    batch = adapter.calibration_batch(pairs, 8, 0, 0)
    language_block = adapter.towers()[1].blocks[0]
    with torch.no_grad():
        dense_inputs = capture_inputs(adapter, language_block, batch).hidden.clone()
    methods = Methods(ZerothOrderScorer(seed=0, micro_batch=4), EcoflapAllocator(), WandaPruner)
    result = compress(adapter, config, methods, batch)
    towers = result.summary()["per_tower"]
    assert set(towers) == {"vision", "language"}
    total = sum(t["params"] for t in towers.values())
    allocated = sum(t["allocated"] * t["params"] for t in towers.values()) / total
    assert allocated == pytest.approx(0.5, abs=1e-3)  # one budget across both towers
    assert towers["vision"]["allocated"] != pytest.approx(towers["language"]["allocated"], abs=1e-3)
    assert all(t["measured"] > 0.3 for t in towers.values())
    blocks = result.summary()["per_block"]
    assert len(blocks) == 2 + 4 and all(b["allocated"] <= config.cap + 1e-9 for b in blocks.values())
    with torch.no_grad():
        pruned_inputs = capture_inputs(adapter, language_block, batch).hidden
    assert not torch.allclose(dense_inputs, pruned_inputs)


def test_select_towers(adapter) -> None:
    towers = adapter.towers()
    assert [t.name for t in select_towers(towers, ["language"])] == ["language"]
    assert [t.name for t in select_towers(towers, [])] == ["vision", "language"]
    with pytest.raises(EcoflapError, match="unknown tower 'visoin'.*vision, language"):
        select_towers(towers, ["visoin"])


def test_save_reload_same_outputs(adapter, pairs, tmp_path: Path) -> None:
    batch = adapter.calibration_batch(pairs, 4, 0, 1)
    adapter.save(tmp_path / "m")
    again = load_folder(LoadOptions(str(tmp_path / "m")))
    with torch.no_grad():
        assert torch.equal(adapter.loss(batch), again.loss(batch))
    images = [p for p, _ in pairs[:3]]
    assert again.answer_questions(images, ["what color?"] * 3) == adapter.answer_questions(images, ["what color?"] * 3)


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(EcoflapError, match=f"cannot decode image {broken}"):
        load_image(broken)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mini_blip2.json").write_text("{}")
    with pytest.raises(EcoflapError, match="cannot load the model in .*: mini_blip2.json lacks or mistypes 'bridge'"):
        load_folder(LoadOptions(str(tmp_path / "m")))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"OMP_NUM_THREADS": "1", "ECOFLAP_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    env["PYTHONPATH"] = os.environ["PYTHONPATH"]  # the tiny models' test plugin (conftest.py)
    return subprocess.run([*ECOFLAP, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cli_prunes_both_towers_and_reports_them(tmp_path: Path) -> None:
    root = Path(__file__).parent.parent
    out = tmp_path / "run"
    proc = run_cli(
        "prune", "--model", "tiny-mini-blip2", "--nsamples", "8", "--score-nsamples", "4", "-o", str(out),
        "--db", f"sqlite:///{tmp_path / 'results.db'}", cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["per_tower"]) == {"vision", "language"}
    assert abs(report["measured_sparsity"] - 0.5) < 0.02
    missing = run_cli("prune", "--model", str(out / "vision"), cwd=root)
    assert missing.returncode == 1 and missing.stderr.startswith("Error:") and "Traceback" not in missing.stderr
    (out / "mini_blip2_bridge.safetensors").unlink()
    gone = run_cli("prune", "--model", str(out), "--no-eval", cwd=root)
    assert gone.returncode == 1
    errors = [line for line in gone.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: cannot load the model in {out}: no mini_blip2_bridge.safetensors"]
    tower = run_cli("prune", "--model", "tiny-mini-blip2", "--towers", "text", "--no-eval", cwd=root)
    assert tower.returncode == 1 and "unknown tower 'text'" in tower.stderr
