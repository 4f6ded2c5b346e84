"""Caption metrics through pycocoevalcap's own scorers and PTB tokenizer (the COCO caption evaluation).

``COCOEvalCap.evaluate()`` builds SPICE up front, and SPICE downloads Stanford CoreNLP; so the
scorers are called one by one, as ``COCOEvalCap`` would, and SPICE runs only where its CoreNLP jars
are already installed beside it. Otherwise SPICE is reported as unavailable, never as zero.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ecoflap.core.errors import EcoflapError

SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


@dataclass
class CaptionScores:
    """Corpus-level scores (``bleu_1`` .. ``cider``), per-image CIDEr, and notes on what was unavailable."""

    metrics: dict[str, float]
    per_image: dict[Hashable, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def spice_missing() -> str | None:
    """Why SPICE cannot run here (its CoreNLP jars or java missing), or None when it can."""
    import shutil

    import pycocoevalcap

    lib = Path(list(pycocoevalcap.__path__)[0]) / "spice" / "lib"
    missing = [jar for jar in SPICE_JARS if not (lib / jar).is_file()]
    if missing:
        return f"SPICE unavailable: Stanford CoreNLP jars missing in {lib} ({', '.join(missing)})"
    if shutil.which("java") is None:
        return "SPICE unavailable: java is not installed"
    return None


def tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's PTB tokenizer (Stanford CoreNLP 3.4.1 via java): lower case, punctuation removed."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    data = {key: [{"caption": c} for c in values] for key, values in captions.items()}
    try:
        return PTBTokenizer().tokenize(data)
    except (OSError, ValueError) as exc:
        raise EcoflapError(f"the PTB tokenizer (java) failed: {exc}") from None


def caption_scores(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str]) -> CaptionScores:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE where possible) of one candidate per image."""
    if set(references) != set(candidates):
        raise EcoflapError("captions and references must cover the same images")
    if not references or any(not refs for refs in references.values()):
        raise EcoflapError("every image needs at least one reference caption")
    gts = tokenize(references)
    res = tokenize({key: [caption] for key, caption in candidates.items()})
    return score_tokenized(gts, res)


def score_tokenized(gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]]) -> CaptionScores:
    """The scorers on tokenized captions (what ``COCOEvalCap.evaluate`` does after tokenizing)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    result = CaptionScores(metrics={})
    keys = list(gts)
    with contextlib.redirect_stdout(io.StringIO()):  # BleuScorer prints its lengths
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    result.metrics |= {f"bleu_{n + 1}": float(score) for n, score in enumerate(bleu)}
    for name, scorer in (("meteor", Meteor), ("rouge_l", Rouge), ("cider", Cider)):
        score, each = _run(scorer, gts, res)
        result.metrics[name] = float(score)
        for key, value in zip(keys, each, strict=True):
            result.per_image.setdefault(key, {})[name] = float(value)
    for key, b4 in zip(keys, bleu_each[3], strict=True):
        result.per_image.setdefault(key, {})["bleu_4"] = float(b4)
    _spice(gts, res, result)
    return result


def _run(scorer_cls: type, gts: dict, res: dict) -> tuple[float, list[float]]:
    scorer = scorer_cls()
    try:
        score, each = scorer.compute_score(gts, res)
    except (OSError, ValueError) as exc:
        raise EcoflapError(f"{scorer_cls.__name__} failed: {exc}") from None
    finally:
        _close(scorer)
    return score, list(each)


def _close(scorer: object) -> None:
    """Stop METEOR's java process now rather than at garbage collection."""
    process = getattr(scorer, "meteor_p", None)
    if process is not None:
        with contextlib.suppress(OSError):  # its __del__ repeats these calls harmlessly
            process.stdin.close()
            process.kill()
            process.wait()


def _spice(gts: dict, res: dict, result: CaptionScores) -> None:
    reason = spice_missing()
    if reason:
        result.notes.append(reason)
        return
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(gts, res)
    result.metrics["spice"] = float(score)
