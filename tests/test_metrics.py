"""Evaluation metrics against hand-computed values and the official evaluators' definitions."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import pytest
import torch

from ecoflap.evaluation.metrics import mean_stderr
from ecoflap.evaluation.metrics.classification import topk_accuracy
from ecoflap.evaluation.metrics.retrieval import best_ranks, retrieval_metrics
from ecoflap.evaluation.metrics.vqa import exact_match, normalize_answer, vqa_accuracy

# ----------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two", "2"),  # number words to digits
        ("Ten", "10"),
        ("none", "0"),
        ("isnt", "isn't"),  # the official map adds the apostrophe back ...
        ("isn't", "isn't"),  # ... and keeps it ("'" is not in the punctuation list)
        ("dont know", "don't know"),
        ("The dog", "dog"),  # articles dropped
        ("a red circle", "red circle"),
        ("an apple", "apple"),
        ("Yes.", "yes"),  # a period not in a number is stripped
        ("3.5", "3.5"),  # one inside a number is kept
        ("yes!", "yes"),
        ("black/white", "black white"),  # punctuation without a space next to it becomes a space
        ("black / white", "black white"),  # with a space next to it, it is removed
        ("1,000", "1000"),  # a comma between digits: all punctuation removed
        ("  red\tcar\n", "red car"),
        ("left-hand", "left hand"),
    ],
)
def test_vqa_normalisation_matches_the_official_script(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_vqa_accuracy_is_the_ten_choose_nine_average() -> None:
    humans = ["2"] * 3 + ["3"] * 7
    # a "2" annotator left out: 2 of the other 9 say "2" -> 2/3; a "3" annotator left out: 3 say "2" -> 1
    assert vqa_accuracy("two", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("3", humans) == pytest.approx(1.0)
    assert vqa_accuracy("4", humans) == 0.0
    one = ["cat"] + ["dog"] * 9
    assert vqa_accuracy("cat", one) == pytest.approx(9 * (1 / 3) / 10)  # left in by 9 subsets, once each
    assert vqa_accuracy("The Dog.", ["dog"] * 10) == 1.0


def test_vqa_accuracy_normalises_human_answers_only_when_they_differ() -> None:
    # official quirk: identical human answers are compared as given (no punctuation processing)
    assert vqa_accuracy("ice cream", ["ice-cream"] * 10) == 0.0
    assert vqa_accuracy("ice cream", ["ice-cream"] * 9 + ["icecream"]) == pytest.approx(1.0 * 9 / 10 + 1.0 / 10)


def _official_vqa_eval():
    """LAVIS's verbatim copy of the official VQA evaluation class, loaded from its file only."""
    spec = importlib.util.find_spec("lavis")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("salesforce-lavis is not installed")
    path = Path(spec.submodule_search_locations[0]) / "common" / "vqa_tools" / "vqa_eval.py"
    module_spec = importlib.util.spec_from_file_location("official_vqa_eval", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.VQAEval


def test_vqa_accuracy_equals_the_official_evaluate_on_random_cases(capsys: pytest.CaptureFixture) -> None:
    VQAEval = _official_vqa_eval()
    rng = random.Random(0)
    pool = ["two", "2", "Yes.", "yes", "no", "the cat", "cat", "isnt", "black/white", "1,000", "ice-cream", "red"]
    qa, res, ours = {}, {}, []
    for qid in range(200):
        humans = [rng.choice(pool) for _ in range(10)]
        answer = rng.choice(pool)
        qa[qid] = {"question_type": "t", "answer_type": "a",
                   "answers": [{"answer": h, "answer_id": i + 1} for i, h in enumerate(humans)]}  # fmt: skip
        res[qid] = {"answer": answer}
        ours.append(vqa_accuracy(answer, humans))
    evaluator = VQAEval(n=10)
    evaluator.vqa = type("G", (), {"qa": qa})()
    evaluator.vqaRes = type("R", (), {"qa": res})()
    evaluator.evaluate(list(qa))
    capsys.readouterr()
    for qid, value in enumerate(ours):
        assert evaluator.evalQA[qid] == pytest.approx(round(100 * value, 10))


def test_gqa_exact_match_normalises_the_prediction() -> None:
    assert exact_match("The Table.", "table") == 1.0
    assert exact_match("two", "2") == 1.0
    assert exact_match("chair", "table") == 0.0


# ----------------------------------------------------------------------------- retrieval, top-k, stderr


def test_recall_at_k_on_a_4x4_similarity_matrix() -> None:
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # image 0: its text 0 first          -> rank 0
            [0.8, 0.7, 0.1, 0.0],  # image 1: its text 1 second         -> rank 1
            [0.1, 0.2, 0.3, 0.9],  # image 2: its text 2 third (of 0.9, 0.3, 0.2, 0.1 -> index 3, 2) -> rank 1
            [0.9, 0.8, 0.7, 0.1],  # image 3: its text 3 last           -> rank 3
        ]
    )
    pairs = [[0], [1], [2], [3]]
    assert best_ranks(sim, pairs) == [0, 1, 1, 3]
    # columns: text 0 -> images by 0.9 (0), 0.9 (3), 0.8, 0.1: image 0 first (stable) -> 0
    # text 1 -> 0.8 (3), 0.7 (1) -> 1; text 2 -> 0.7 (3), 0.3 (2) -> 1; text 3 -> 0.9 (2), 0.3 (0), 0.1 (3) -> 2
    assert best_ranks(sim.t(), pairs) == [0, 1, 1, 2]
    metrics = retrieval_metrics(sim, pairs, pairs)
    assert metrics["tr_r1"] == 0.25 and metrics["tr_r5"] == 1.0 and metrics["tr_r10"] == 1.0
    assert metrics["ir_r1"] == 0.25 and metrics["ir_r5"] == 1.0
    assert metrics["r_mean"] == pytest.approx(((0.25 + 1 + 1) / 3 + (0.25 + 1 + 1) / 3) / 2)


def test_recall_counts_the_best_of_several_captions() -> None:
    sim = torch.tensor([[0.1, 0.5, 0.9], [0.9, 0.2, 0.1]])
    assert best_ranks(sim, [[0, 1], [1, 2]]) == [1, 1]  # image 0: text 1 at rank 1; image 1: text 1 at rank 1


def test_topk_accuracy() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.1, 0.2, 0.7]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, (1, 2, 5)) == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top5": 1.0})


def test_mean_stderr_is_lm_evals() -> None:
    values = [1.0, 0.0, 1.0, 1.0]
    mu = 0.75
    expected = math.sqrt(sum((v - mu) ** 2 for v in values) / 3) / 2
    assert mean_stderr(values) == pytest.approx(expected)
    from lm_eval.api.metrics import mean_stderr as lm_eval_stderr

    assert mean_stderr(values) == pytest.approx(lm_eval_stderr(values))
    assert mean_stderr([1.0]) is None


# ----------------------------------------------------------------------------- captions (java: one call)


@pytest.fixture(scope="module")
def caption_result():
    from ecoflap.evaluation.metrics.captioning import caption_scores

    references = {1: ["A big red circle."], 2: ["the small green triangle"]}
    candidates = {1: "a big red circle", 2: "blue square thing here"}
    return caption_scores(references, candidates)


def test_bleu_on_known_pairs(caption_result) -> None:
    # corpus BLEU: n-gram matches 4/8, 3/6, 2/4, 1/2 (image 1 all, image 2 none); lengths equal -> BP = 1
    # pycocoevalcap adds tiny=1e-15 to matches and small=1e-9 to totals
    tiny, small = 1e-15, 1e-9
    precisions = [(m + tiny) / (t + small) for m, t in [(4, 8), (3, 6), (2, 4), (1, 2)]]
    for n in range(1, 5):
        expected = math.prod(precisions[:n]) ** (1 / n)
        assert caption_result.metrics[f"bleu_{n}"] == pytest.approx(expected, rel=1e-9)


def test_cider_and_rouge_on_known_pairs(caption_result) -> None:
    # CIDEr-D: an exact 4-word match has cosine 1 for n = 1..4 (x 10); no shared n-gram -> 0; mean over images
    assert caption_result.per_image[1]["cider"] == pytest.approx(10.0)
    assert caption_result.per_image[2]["cider"] == pytest.approx(0.0)
    assert caption_result.metrics["cider"] == pytest.approx(5.0)
    assert caption_result.metrics["rouge_l"] == pytest.approx(0.5)  # F = 1 for the match, 0 for no overlap
    assert caption_result.per_image[1]["meteor"] > 0.9 > caption_result.per_image[2]["meteor"]


def test_spice_is_unavailable_not_zero(caption_result) -> None:
    from ecoflap.evaluation.metrics.captioning import spice_missing

    if spice_missing() is None:
        assert "spice" in caption_result.metrics
    else:
        assert "spice" not in caption_result.metrics
        assert any("SPICE unavailable" in note for note in caption_result.notes)
