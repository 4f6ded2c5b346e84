"""Vision tasks: VQA, captioning, image-text retrieval, ImageNet classification (classifier or zero-shot)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ecoflap.core.errors import EcoflapError
from ecoflap.core.tasks import Metric, Task, TaskOptions, TaskResult
from ecoflap.evaluation.metrics import mean, mean_stderr
from ecoflap.evaluation.metrics.classification import topk_correct
from ecoflap.evaluation.metrics.retrieval import KS, best_ranks, hits
from ecoflap.evaluation.metrics.vqa import exact_match, is_valid, normalize_answer, vqa_accuracy
from ecoflap.evaluation.tasks.base import (
    TaskSkipped,
    arg,
    batches,
    check_images,
    data_folder,
    load_images,
    model_name,
    path_arg,
)

BATCH = 16


VQA_SPLITS = ("test", "validation")
VQA_MODES = ("generate", "rank", "both")


class VqaTask(Task):
    """VQAv2 / OK-VQA accuracy (official VQA metric) or GQA accuracy; open generation and candidate ranking."""

    name = "vqa"
    capability = "visual-question-answerer"
    version = "1.1"  # 1.1: answer_nll
    metrics = (
        Metric("acc"),
        Metric("invalid_rate", higher_is_better=False),
        Metric("rank_acc"),
        Metric("answer_nll", higher_is_better=False),
    )
    description = (
        "VQAv2 / OK-VQA / GQA accuracy [easy-vqa test]; task args mode=generate|rank|both, "
        "split=test|validation (the default data's); answer_nll where the model scores candidates in one pass"
    )

    @classmethod
    def load(cls, options: TaskOptions) -> tuple[Any, str, bool]:
        from ecoflap.evaluation.datasets.vqa import read_vqa

        split = arg(options, "split", "test")
        if split not in VQA_SPLITS:
            raise EcoflapError(f"task argument split={split!r} must be one of {', '.join(VQA_SPLITS)}")
        cls.mode(options)  # a wrong mode stops before the data are read, and before any compute
        folder, description, default = data_folder(cls.name, options, split)
        data = read_vqa(
            folder, path_arg(options, "questions"), path_arg(options, "annotations"), path_arg(options, "images")
        )
        return data, description, default

    @staticmethod
    def mode(options: TaskOptions) -> str:
        """The ``mode`` task argument (generate, rank or both), checked."""
        mode = arg(options, "mode", "both")
        if mode not in VQA_MODES:
            raise EcoflapError(f"task argument mode={mode!r} must be one of {', '.join(VQA_MODES)}")
        return mode

    @classmethod
    def describe_data(cls, options: TaskOptions) -> str:
        data, description, _ = cls.load(options)
        check_images(sorted({q.image for q in data.questions}))
        return f"{description}: {len(data.questions)} questions ({data.format}), {len(data.candidates)} candidates"

    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        data, description, _ = self.load(options)
        mode = self.mode(options)
        questions = data.questions if options.limit is None else data.questions[: options.limit]
        score = vqa_accuracy if data.format == "vqav2" else lambda a, humans: exact_match(a, humans[0])
        vocabulary = {normalize_answer(c): j for j, c in enumerate(data.candidates)}
        per: dict[str, list[float]] = {"acc": [], "invalid_rate": [], "rank_acc": [], "answer_nll": []}
        bar = options.progress(total=len(questions), desc=self.name)
        for batch in batches(questions, arg(options, "batch_size", BATCH, int)):
            images, texts = load_images([q.image for q in batch]), [q.question for q in batch]
            generated, ranked, loglik = vqa_answers(adapter, mode, images, texts, data.candidates)
            for q, answer in zip(batch, generated, strict=True) if generated is not None else ():
                per["acc"].append(score(answer, q.answers))
                per["invalid_rate"].append(float(not is_valid(answer, vocabulary)))
            for q, answer in zip(batch, ranked, strict=True) if ranked is not None else ():
                per["rank_acc"].append(score(answer, q.answers))
            for i, q in enumerate(batch) if loglik is not None else ():
                if (j := vocabulary.get(reference_answer(q.answers))) is not None:
                    per["answer_nll"].append(-float(loglik[i, j]))
            bar.update(len(batch))
        bar.close()
        kept = {name: values for name, values in per.items() if values}
        config = {"data": description, "format": data.format, "mode": mode, "files": data.files,
                  "n_candidates": len(data.candidates), "n_original": len(data.questions)}  # fmt: skip
        return _result(self, kept, len(questions), config)


def vqa_answers(
    adapter: Any, mode: str, images: list[Any], texts: list[str], candidates: list[str]
) -> tuple[list[str] | None, list[str] | None, torch.Tensor | None]:
    """The generated and the ranked answers that ``mode`` asks for (None for the other), and the candidates'
    log-likelihoods ``[questions, candidates]`` where the adapter gives them. For ``both``, an adapter with
    ``answer_and_rank`` gives all three from one shared prompt pass (the same answers as its two methods, at
    about half the cost: the image encoder and the prompt run once)."""
    if mode == "both" and hasattr(adapter, "answer_and_rank"):
        return adapter.answer_and_rank(images, texts, candidates)
    generated = adapter.answer_questions(images, texts) if mode in ("generate", "both") else None
    ranked = adapter.rank_answers(images, texts, candidates) if mode in ("rank", "both") else None
    return generated, ranked, None


def reference_answer(answers: Sequence[str]) -> str:
    """The answer whose negative log-likelihood ``answer_nll`` averages: the most common normalised human
    answer (the first of equally common ones; GQA's and easy-vqa's one answer)."""
    return Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]


class CaptioningTask(Task):
    """COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE where its jars exist)."""

    name = "captioning"
    capability = "caption-generator"
    metrics = tuple(Metric(m) for m in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "spice"))
    description = "COCO / NoCaps / Karpathy captions, pycocoevalcap scorers [easy-vqa test]"

    @classmethod
    def load(cls, options: TaskOptions) -> tuple[Any, str, bool]:
        from ecoflap.evaluation.datasets.captions import read_captions

        folder, description, default = data_folder(cls.name, options)
        data = read_captions(folder, path_arg(options, "images"), arg(options, "split", "test"))
        return data, description, default

    @classmethod
    def describe_data(cls, options: TaskOptions) -> str:
        data, description, _ = cls.load(options)
        check_images(data.images)
        return f"{description}: {len(data.images)} images ({data.format}), {sum(map(len, data.references))} captions"

    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        from ecoflap.evaluation.metrics.captioning import caption_scores

        full, description, _ = self.load(options)
        data = full.limit(options.limit)
        captions: list[str] = []
        bar = options.progress(total=len(data.images), desc=self.name)
        for batch in batches(data.images, arg(options, "batch_size", BATCH, int)):
            captions += adapter.generate_captions(load_images(batch))
            bar.update(len(batch))
        bar.close()
        keys = list(range(len(data.images)))
        scores = caption_scores(dict(zip(keys, data.references, strict=True)), dict(zip(keys, captions, strict=True)))
        metrics = scores.metrics | ({} if "spice" in scores.metrics else {"spice": float("nan")})
        config = {"data": description, "format": data.format, "n_original": len(full.images),
                  "examples": [{"image": str(data.images[i]), "caption": captions[i]} for i in keys[:5]]}  # fmt: skip
        return TaskResult(self.name, self.version, metrics, dict.fromkeys(metrics), len(keys), config, scores.notes)


class RetrievalTask(Task):
    """Image-to-text (TR@1/5/10) and text-to-image (IR@1/5/10) recall of an image-text embedder."""

    name = "retrieval"
    capability = "image-text-embedder"
    metrics = tuple(Metric(f"{d}_r{k}") for d in ("tr", "ir") for k in KS) + (Metric("r_mean"),)
    description = "Flickr30k / COCO Karpathy retrieval, TR@K and IR@K [easy-vqa test]"
    load = CaptioningTask.load
    describe_data = CaptioningTask.describe_data

    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        full, description, _ = self.load(options)
        data = full.limit(options.limit)
        texts, image_texts, text_images = pair_index(data.references)
        size = arg(options, "batch_size", BATCH, int)
        bar = options.progress(total=len(data.images) + len(texts), desc=self.name)
        image_emb = _embed(adapter.embed_images, data.images, size, bar, load_images)
        text_emb = _embed(adapter.embed_texts, texts, size, bar, list)
        bar.close()
        similarity = image_emb.float() @ text_emb.float().t()
        tr, ir = best_ranks(similarity, image_texts), best_ranks(similarity.t(), text_images)
        per = {f"tr_r{k}": hits(tr, k) for k in KS} | {f"ir_r{k}": hits(ir, k) for k in KS}
        result = _result(self, per, len(data.images), {"data": description, "format": data.format,
                         "n_texts": len(texts), "n_captions": sum(map(len, data.references)),
                         "n_original": len(full.images)})  # fmt: skip
        result.metrics["r_mean"] = mean([result.metrics[m] for m in per])
        result.stderr["r_mean"] = None
        return result


def pair_index(references: list[list[str]]) -> tuple[list[str], list[list[int]], list[list[int]]]:
    """Distinct caption strings, each image's caption indices and each caption's images.

    A caption string given for several images is one text that matches all of them (identical
    strings cannot be told apart by any model; in Flickr30k / COCO such repeats are rare).
    """
    texts: dict[str, int] = {}
    image_texts = [[texts.setdefault(c, len(texts)) for c in captions] for captions in references]
    text_images: list[list[int]] = [[] for _ in texts]
    for image, indices in enumerate(image_texts):
        for index in dict.fromkeys(indices):
            text_images[index].append(image)
    return list(texts), image_texts, text_images


def _embed(fn: Any, items: list, size: int, bar: Any, prepare: Any) -> torch.Tensor:
    out = []
    for batch in batches(items, size):
        out.append(torch.as_tensor(fn(prepare(batch))).detach().float().cpu())
        bar.update(len(batch))
    return torch.cat(out)


class ImageNetTask(Task):
    """ImageNet top-1 / top-5: a classifier's logits, or zero-shot with open_clip's prompts for an embedder."""

    name = "imagenet"
    capability = "image-classifier"
    metrics = (Metric("top1"), Metric("top5"))
    description = "ImageNet val (ImageFolder) top-1/top-5; zero-shot for embedders [5-photo smoke set]"
    ACCEPTED: ClassVar[tuple[str, ...]] = ("image-classifier", "image-text-embedder")

    @classmethod
    def skip_reason(cls, adapter: object) -> str | None:
        from ecoflap.core.capabilities import CAPABILITIES

        if any(isinstance(adapter, CAPABILITIES[c]) for c in cls.ACCEPTED):
            return None
        return f"{model_name(adapter)} is neither an image-classifier nor an image-text-embedder (task {cls.name})"

    @classmethod
    def load(cls, options: TaskOptions) -> tuple[Any, str, bool]:
        from ecoflap.evaluation.datasets.imagenet import read_image_folder

        folder, description, default = data_folder(cls.name, options)
        return read_image_folder(folder), description, default

    @classmethod
    def describe_data(cls, options: TaskOptions) -> str:
        data, description, _ = cls.load(options)
        check_images(data.images)
        return f"{description}: {len(data.images)} images over {len(set(data.labels))} of {len(data.wnids)} classes"

    def run(self, adapter: Any, options: TaskOptions) -> TaskResult:
        from ecoflap.core.capabilities import ImageClassifier

        full, description, default = self.load(options)
        data = full.limit(options.limit)
        size = arg(options, "batch_size", BATCH, int)
        classifier = isinstance(adapter, ImageClassifier)
        if classifier:
            _check_labels(adapter, data)
            logits = _embed(
                adapter.classify,
                data.images,
                size,
                options.progress(total=len(data.images), desc=self.name),
                load_images,
            )
        else:
            classes = zero_shot_classifier(adapter, data.class_names, arg(options, "templates", 0, int), size)
            images = _embed(
                adapter.embed_images,
                data.images,
                size,
                options.progress(total=len(data.images), desc=self.name),
                load_images,
            )
            logits = images @ classes.t()
        labels = torch.as_tensor(data.labels)
        per = {f"top{k}": topk_correct(logits, labels, k).tolist() for k in (1, 5)}
        config = {"data": description, "mode": "classifier" if classifier else "zero-shot", "smoke_set": default,
                  "n_classes": len(data.wnids), "n_original": len(full.images)}  # fmt: skip
        result = _result(self, per, len(data.images), config)
        if default:
            result.notes.append("smoke-size set: 5 real photos with hand-assigned ImageNet classes, not ImageNet val")
        return result


def _check_labels(adapter: Any, data: Any) -> None:
    if len(adapter.labels) != len(data.wnids):
        raise TaskSkipped(
            f"{model_name(adapter)} classifies into {len(adapter.labels)} labels, not the {len(data.wnids)} "
            "classes of the ImageNet class index"
        )


def zero_shot_classifier(adapter: Any, class_names: list[str], n_templates: int, size: int) -> torch.Tensor:
    """One text embedding per class: the normalised mean of its prompts' normalised embeddings (CLIP's recipe)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = OPENAI_IMAGENET_TEMPLATES[: n_templates or None]
    prompts = [template(name) for name in class_names for template in templates]
    embedded = torch.cat([torch.as_tensor(adapter.embed_texts(b)).float() for b in batches(prompts, max(size, 256))])
    per_class = F.normalize(embedded, dim=-1).view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def _result(task: Task, per: dict[str, list[float]], n: int, config: dict[str, Any]) -> TaskResult:
    """A result whose metrics are means of per-example values, with lm-eval's stderr of the mean."""
    metrics = {name: mean(values) for name, values in per.items()}
    stderr = {name: mean_stderr(values) for name, values in per.items()}
    return TaskResult(task.name, task.version, metrics, stderr, n, config)
