"""WikiText-style perplexity through lm-eval, checked against a direct forward pass of a tiny LLaMA."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
import torch

from ecoflap.core.errors import EcoflapError

SENTENCES = [
    "The model prunes the weights of a tower, block by block.",
    "A sparse block keeps the layer small; the allocator sets its sparsity.",
    "Calibration text flows through each block before the fine step.",
    "Perplexity measures how surprised the model is by held-out text.",
    "Zeroth-order scores need forward passes only, so memory stays low.",
]
TEXTS = [" ".join(SENTENCES[(k + i) % len(SENTENCES)] for i in range(n)) for k, n in [(0, 3), (1, 2), (2, 4), (4, 1)]]


@pytest.fixture(scope="module", autouse=True)
def _hf_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """HF caches in a temporary folder and everything offline."""
    home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    """A word-level tokenizer trained here that adds BOS itself, as LLaMA's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    bos = ("<s>", raw.token_to_id("<s>"))
    raw.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    raw.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model(tokenizer):  # noqa: ANN001, ANN201
    """A tiny random LlamaForCausalLM (hidden 32, 2 layers, 4 heads) over that tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def window_loglikelihood(model, context: list[int], predicted: list[int]) -> float:  # noqa: ANN001
    """Sum of log p(predicted | context) from one plain forward pass."""
    ids = torch.tensor([context + predicted[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    scored = logprobs[-len(predicted) :]
    return float(scored.gather(1, torch.tensor(predicted)[:, None]).sum())


def test_one_window_matches_a_plain_forward_pass(model, tokenizer) -> None:  # noqa: ANN001
    from ecoflap.evaluation.perplexity import perplexity

    ids = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
    assert max(map(len, ids)) < 128  # one window per document
    direct = sum(window_loglikelihood(model, [tokenizer.bos_token_id], doc) for doc in ids)
    n_tokens = sum(map(len, ids))
    n_words = sum(len(re.split(r"\s+", text)) for text in TEXTS)  # lm-eval's count_words
    n_bytes = sum(len(text.encode("utf-8")) for text in TEXTS)

    model.train()
    result = perplexity(model, tokenizer, TEXTS, max_length=128, batch_size=2)

    assert result["n_documents"] == len(TEXTS)
    assert result["n_tokens"] == n_tokens  # BOS is the prefix, never a predicted token
    assert result["token_perplexity"] == pytest.approx(math.exp(-direct / n_tokens), rel=1e-3)
    assert result["word_perplexity"] == pytest.approx(math.exp(-direct / n_words), rel=1e-3)
    assert result["byte_perplexity"] == pytest.approx(math.exp(-direct / n_bytes), rel=1e-3)
    assert result["bits_per_byte"] == pytest.approx(-direct / n_bytes / math.log(2), rel=1e-3)
    assert n_words != n_tokens  # punctuation is its own token: the two perplexities differ
    assert model.training  # the caller's mode is restored
    model.eval()
    assert tokenizer.pad_token_id is None  # lm-eval set a pad token on a copy only


def test_rolling_windows_follow_lm_eval(model, tokenizer) -> None:  # noqa: ANN001
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from ecoflap.evaluation.perplexity import perplexity

    direct, n_tokens, n_windows = 0.0, 0, 0
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False)
        windows = get_rolling_token_windows(ids, tokenizer.bos_token_id, 8, 1)
        for context, predicted in map(make_disjoint_window, windows):
            direct += window_loglikelihood(model, context[-(8 + 1 - len(predicted)) :], predicted)
            n_tokens += len(predicted)
            n_windows += 1
    bars: list[list[int]] = []

    class Bar:  # one bar over every rolling window: its total, then each batch's windows
        def __init__(self, *, total: int, desc: str) -> None:
            bars.append([total])

        def update(self, n: int = 1) -> None:
            bars[-1].append(n)

        def close(self) -> None:
            return None

    result = perplexity(model, tokenizer, TEXTS, max_length=8, progress=Bar)
    assert result["n_tokens"] == n_tokens
    assert len(bars) == 1 and bars[0][0] == n_windows == sum(bars[0][1:])
    assert result["token_perplexity"] == pytest.approx(math.exp(-direct / n_tokens), rel=1e-3)


def test_dtype_and_device_are_kept(model, tokenizer) -> None:  # noqa: ANN001
    import copy

    from ecoflap.evaluation.perplexity import perplexity

    half = copy.deepcopy(model).to(torch.bfloat16)
    pointer = half.model.embed_tokens.weight.data_ptr()
    dense = perplexity(model, tokenizer, TEXTS[:2], max_length=128)
    result = perplexity(half, tokenizer, TEXTS[:2], max_length=128)
    assert half.model.embed_tokens.weight.data_ptr() == pointer  # not moved, not copied
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    assert result["token_perplexity"] == pytest.approx(dense["token_perplexity"], rel=0.05)


def test_limit_tokens_keeps_whole_texts_then_cuts_at_a_word(tokenizer) -> None:  # noqa: ANN001
    from ecoflap.evaluation.perplexity import count_tokens, limit_texts

    first = count_tokens(tokenizer, TEXTS[0])
    kept = limit_texts(TEXTS, tokenizer, first + 10)
    assert kept[0] == TEXTS[0] and len(kept) == 2
    assert TEXTS[1].startswith(kept[1]) and TEXTS[1][len(kept[1])] == " "
    assert 7 <= count_tokens(tokenizer, kept[1]) <= 10  # whole words only, at most the budget
    assert limit_texts(TEXTS, tokenizer, first + 10) == kept  # deterministic
    assert limit_texts(TEXTS, tokenizer, 10**6) == TEXTS
    with pytest.raises(EcoflapError, match="limit_tokens"):
        limit_texts(TEXTS, tokenizer, 0)


def test_limit_tokens_bounds_the_evaluation(model, tokenizer) -> None:  # noqa: ANN001
    from ecoflap.evaluation.perplexity import count_tokens, perplexity

    assert count_tokens(tokenizer, TEXTS[0]) < 40
    result = perplexity(model, tokenizer, TEXTS, max_length=16, limit_tokens=40)
    assert 37 <= result["n_tokens"] <= 40  # a word is at most 3 tokens here
    assert result["n_documents"] == 2


def test_no_text_is_an_error(model, tokenizer) -> None:  # noqa: ANN001
    from ecoflap.evaluation.perplexity import perplexity

    with pytest.raises(EcoflapError, match="non-empty text"):
        perplexity(model, tokenizer, ["", "  \n"])
    with pytest.raises(EcoflapError, match="list of texts"):
        perplexity(model, tokenizer, "one string")  # type: ignore[arg-type]


@pytest.mark.parametrize("max_length", [0, 1, -8])
def test_a_window_of_fewer_than_two_tokens_is_an_error(model, tokenizer, max_length: int) -> None:  # noqa: ANN001
    from ecoflap.evaluation.perplexity import perplexity

    with pytest.raises(EcoflapError, match="windows of 2 or more tokens"):
        perplexity(model, tokenizer, TEXTS, max_length=max_length)


def test_outside_a_git_checkout_no_git_error_reaches_the_terminal(
    model,
    tokenizer,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,  # noqa: ANN001
) -> None:
    """lm-eval would run `git describe` in the current folder, its `fatal: not a git repository` on our stderr."""
    from ecoflap.evaluation.perplexity import perplexity

    monkeypatch.chdir(tmp_path)  # no repository here or above
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    perplexity(model, tokenizer, TEXTS[:1], max_length=64)
    assert "fatal" not in capfd.readouterr().err
