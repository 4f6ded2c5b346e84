"""The rule that chose the zeroth-order default (benchmarks/zo_choice.py): pairs, gaps and the choice."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import zo_choice
from job_table import summary

SAMPLED, SMOOTH3, SMOOTH5 = zo_choice.CANDIDATES[:3]
HERE = {"torch": "2.9", "machine": "x86_64", "cpu": "one processor"}
THERE = HERE | {"cpu": "another processor"}


def vqa(name: str, acc: float, sparsity: float = 0.3, seed: int = 42, versions: dict | None = None,
        nll: float | None = None) -> dict[str, Any]:  # fmt: skip
    results = {"vqa": {"acc,none": acc} | ({"answer_nll,none": nll} if nll is not None else {})}
    return {"name": name, "sparsity": sparsity, "seed": seed, "results": results, "versions": versions or HERE}


def ppl(name: str, word: float, sparsity: float = 0.5, seed: int = 42) -> dict[str, Any]:
    results = {"wikitext": {"word_perplexity,none": word}}
    return {"name": name, "sparsity": sparsity, "seed": seed, "results": results, "versions": HERE}


def test_gaps_pair_same_seed_sparsity_and_machine_only() -> None:
    rows = [
        vqa("first-order", 0.60),
        vqa(SAMPLED, 0.55),  # -5 points against the first-order run of its seed and machine
        vqa("first-order", 0.70, seed=1),
        vqa(SAMPLED, 0.73, seed=1),  # +3
        vqa("first-order", 0.10, versions=THERE),  # the same key elsewhere: never paired with HERE's rows
        vqa(SAMPLED, 0.50, sparsity=0.4),  # no first-order at 40%: no pair
        ppl("first-order", 200.0),
        ppl(SAMPLED, 210.0),  # +5%
    ]
    found = zo_choice.gaps({Path("a.json"): rows}, "accuracy")
    assert sorted(found[SAMPLED]["vqa"]) == pytest.approx([-5.0, 3.0])
    assert found[SAMPLED]["wikitext"] == pytest.approx([5.0])
    assert found[SMOOTH5] == {"vqa": [], "wikitext": []}


def test_rows_without_versions_pair_within_their_file() -> None:
    old = [vqa("first-order", 0.60) | {"versions": None}, vqa(SAMPLED, 0.50) | {"versions": None}]
    other = [vqa("first-order", 0.40) | {"versions": None}]
    found = zo_choice.gaps({Path("old.json"): old, Path("other.json"): other}, "accuracy")
    assert found[SAMPLED]["vqa"] == pytest.approx([-10.0])


def test_a_row_whose_coarse_step_ran_at_other_threads_is_not_paired() -> None:
    """A coarse step reused from a two-thread run's cache gives other scores than one computed at one thread:
    the rows pair on their steps' thread counts, where they record them."""
    one = {"coarse": 1, "fine": 1, "eval:vqa": 1}
    rows = [
        vqa("first-order", 0.60) | {"step_threads": one},
        vqa(SAMPLED, 0.50) | {"step_threads": one | {"coarse": 2}},  # the reused scores: no pair
        vqa("first-order", 0.70, seed=1) | {"step_threads": one},
        vqa(SAMPLED, 0.73, seed=1) | {"step_threads": one},  # +3
    ]
    assert zo_choice.gaps({Path("a.json"): rows}, "accuracy")[SAMPLED]["vqa"] == pytest.approx([3.0])


def two_stages(name: str, points: float, percent: float) -> list[dict[str, Any]]:
    return [vqa(name, 0.6 + points / 100), ppl(name, 200.0 * (1 + percent / 100))]


FIRST_ORDER = [vqa("first-order", 0.6), ppl("first-order", 200.0)]


def far_behind(*named: str) -> list[dict[str, Any]]:
    """Every candidate not ``named``, 10 points behind on mini-blip2 (worst 5.0): judged, never chosen."""
    return [row for c in zo_choice.CANDIDATES if c not in named for row in two_stages(c, -10.0, 0.0)]


def test_choose_takes_the_cheapest_passing_candidate() -> None:
    rows = FIRST_ORDER + two_stages(SAMPLED, -1.0, 4.0) + two_stages(SMOOTH5, 0.0, 0.0) + far_behind(SAMPLED, SMOOTH5)
    assert zo_choice.choose({Path("s.json"): rows}, "accuracy").splitlines()[-1] == f"chosen: {SAMPLED} (passes)"


def test_choose_the_least_bad_when_none_passes() -> None:
    # worst gap: max(-points / 2, percent / 5): sampled 1.5 (-3 points), smooth5 1.2 (+6%)
    rows = FIRST_ORDER + two_stages(SAMPLED, -3.0, 0.0) + two_stages(SMOOTH5, 0.0, 6.0) + far_behind(SAMPLED, SMOOTH5)
    lines = zo_choice.choose({Path("s.json"): rows}, "accuracy").splitlines()
    assert lines[-1] == f"chosen: {SMOOTH5} (none passes: the least bad)"
    assert f"{SAMPLED}: -3.0 points, +0.0% perplexity over 1 VQA / 1 WikiText pairs (worst 1.50)" in lines


def test_choose_names_one_stage_candidates_that_could_still_win() -> None:
    rows = FIRST_ORDER + two_stages(SAMPLED, -4.0, 0.0) + far_behind(SAMPLED, SMOOTH3)  # worst 2.0
    rows += [vqa(SMOOTH3, 0.6 - 0.03)]  # fails on its one stage (1.5) but less than 2.0: not judged
    lines = zo_choice.choose({Path("s.json"): rows}, "accuracy").splitlines()
    assert f"{SMOOTH3}: -3.0 points over 1 VQA / 0 WikiText pairs (fails; worst at least 1.50)" in lines
    assert lines[-1] == f"chosen: {SAMPLED} (none passes: the least bad; not judged: {SMOOTH3})"


def test_choose_lists_candidates_without_rows_as_not_judged() -> None:
    rows = FIRST_ORDER + two_stages(SAMPLED, 0.0, 0.0)  # passes; the others have no runs
    assert (
        zo_choice.choose({Path("s.json"): rows}, "accuracy")
        .splitlines()[-1]
        .startswith(f"chosen: {SAMPLED} (passes; not judged: ")
    )


def test_choose_needs_a_candidate_on_both_stages() -> None:
    with pytest.raises(SystemExit, match="no candidate has seed rows on both"):
        zo_choice.choose({Path("s.json"): FIRST_ORDER + [vqa(SAMPLED, 0.6)]})


def test_summary_names_towers_and_task() -> None:
    row = vqa("x", 0.5) | {"per_tower": {"vision": 0.4, "language": 0.28}}
    row["results"]["vqa"]["rank_acc,none"] = 0.61
    assert summary(row) == "vision 0.400 / language 0.280, VQA generate 0.500, rank 0.610"
    text = ppl("y", 180.0) | {"per_tower": {"language": 0.5}}
    text["results"]["wikitext"]["token_perplexity,none"] = 44.0
    assert summary(text) == "word ppl 180.00, token ppl 44.00"


def test_wilson_interval_of_the_generation_accuracy() -> None:
    low, high = zo_choice.wilson(vqa("x", 0.5475) | {"questions": 400})  # 219 of 400
    assert (round(low, 3), round(high, 3)) == (0.499, 0.596)  # the README's interval for 0.547


def test_seed_report_means_and_paired_gaps() -> None:
    rows = [vqa("first-order", 0.60), vqa(SMOOTH5, 0.50), vqa("first-order", 0.70, seed=1), vqa(SMOOTH5, 0.66, seed=1)]
    rows += [vqa(SMOOTH5, 0.30, seed=2)]  # no first-order at seed 2: in its mean, in no pair
    report = zo_choice.seed_report({Path("t.json"): rows}).splitlines()
    # accuracies 0.50, 0.66, 0.30: mean 0.487, SE = sd / sqrt(3) = 0.1804 / 1.732; gaps -10 and -4: -7 +- 3
    assert f"| {SMOOTH5} | 30% | 3 | 0.487 ± 0.104 | -7.0 ± 3.0 (2 pairs) | - | - |" in report
    assert "| first-order | 30% | 2 | 0.650 ± 0.050 | - | - | - |" in report
    assert zo_choice.mean_se([4.0]) == (4.0, 0.0)
    assert zo_choice.paired_gap([-3.0]) == "-3.0 ± 0.0 (1 pair)"


def test_answer_nll_gaps_are_answer_perplexity_percent_and_skip_rows_without_it() -> None:
    rows = [
        vqa("first-order", 0.60, nll=1.0),
        vqa(SAMPLED, 0.50, nll=1.0 + math.log(1.2)),  # +20% answer perplexity (accuracy -10 points: not read)
        vqa("first-order", 0.60, seed=1, nll=2.0),
        vqa(SAMPLED, 0.70, seed=1),  # no answer_nll (vqa 1.0): no pair
        ppl("first-order", 200.0),
        ppl(SAMPLED, 210.0),
    ]
    found = zo_choice.gaps({Path("a.json"): rows}, "answer-nll")
    assert found[SAMPLED]["vqa"] == pytest.approx([20.0]) and found[SAMPLED]["wikitext"] == pytest.approx([5.0])
    lines = zo_choice.choose({Path("a.json"): rows}, "answer-nll").splitlines()
    # worst: max(20 / 5, 5 / 5) = 4.0 (by accuracy it would be max(10 / 2, 1) = 5.0)
    assert f"{SAMPLED}: +20.0% answer perplexity, +5.0% perplexity over 1 VQA / 1 WikiText pairs (worst 4.00)" in lines
    assert lines[-1].startswith(f"chosen: {SAMPLED} (none passes: the least bad")


def test_seed_report_shows_answer_nll_and_counts_the_later_file_of_one_key() -> None:
    old = [vqa("first-order", 0.60), vqa(SMOOTH5, 0.40)]  # the same keys, re-run later with answer_nll
    new = [vqa("first-order", 0.60, nll=1.0), vqa(SMOOTH5, 0.50, nll=1.0 + math.log(1.1))]
    report = zo_choice.seed_report({Path("old.json"): old, Path("new.json"): new}).splitlines()
    row = f"| {SMOOTH5} | 30% | 1 | 0.500 ± 0.000 | -10.0 ± 0.0 (1 pair) | 1.095 ± 0.000 | +10.0 ± 0.0 (1 pair) |"
    assert row in report  # the old file's 0.40 is replaced, not averaged in
