"""Evaluation tasks and the runner with small deterministic adapters (an oracle and a wrong one) on tiny data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from ecoflap.core.errors import EcoflapError
from ecoflap.core.tasks import TaskOptions

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
WNIDS = {"red": "n02123045", "green": "n07920052", "blue": "n03773504"}  # tabby, espresso, missile
NAMES = {"red": "tabby cat", "green": "espresso", "blue": "missile"}


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("hf-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(home))
        patch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
        patch.setenv("ECOFLAP_CACHE", str(home / "ecoflap"))
        yield


def colour_of(image: Image.Image) -> str:
    pixel = image.convert("RGB").getpixel((0, 0))
    return min(COLOURS, key=lambda c: sum(abs(a - b) for a, b in zip(COLOURS[c], pixel, strict=True)))


def one_hot(colour: str) -> torch.Tensor:
    return torch.eye(len(COLOURS))[list(COLOURS).index(colour)]


class OracleVqa:
    """Answers every question about an image's colour correctly."""

    model_id = "oracle"

    def __init__(self) -> None:
        self.calls = 0

    def answer_questions(self, images, questions):
        self.calls += 1
        return [f"The {colour_of(im).upper()}." for im in images]  # normalised to the right answer

    def rank_answers(self, images, questions, candidates):
        return [next(c for c in candidates if c == colour_of(im)) for im in images]


class WrongVqa(OracleVqa):
    model_id = "wrong"

    def answer_questions(self, images, questions):
        return ["purple"] * len(images)  # not a candidate answer: invalid

    def rank_answers(self, images, questions, candidates):
        return [next(c for c in candidates if c != colour_of(im)) for im in images]


class ColourEmbedder:
    """Image and text embeddings that match when they name the same colour."""

    model_id = "colour-embedder"

    def embed_images(self, images):
        return torch.stack([one_hot(colour_of(im)) for im in images])

    def embed_texts(self, texts):
        rows = []
        for text in texts:
            if text.endswith("."):  # an ImageNet prompt: "a photo of a {class name}."
                hits = [c for c in COLOURS if text.endswith(f" {NAMES[c]}.")]
            else:  # a caption: "a red square"
                hits = [c for c in COLOURS if c in text.split()]
            rows.append(one_hot(hits[0]) if hits else torch.full((len(COLOURS),), 0.01))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


class Captioner:
    model_id = "captioner"

    def generate_captions(self, images):
        return [f"a {colour_of(im)} square" for im in images]


class Classifier:
    """A 1000-class classifier that is right about the three colours' classes."""

    model_id = "classifier"

    def __init__(self, n_labels: int = 1000) -> None:
        from ecoflap.evaluation.datasets.imagenet import standard_wnids

        self.wnids = standard_wnids()
        self.labels = [f"class {i}" for i in range(n_labels)]

    def classify(self, images):
        logits = torch.zeros(len(images), len(self.labels))
        for row, image in enumerate(images):
            logits[row, self.wnids.index(WNIDS[colour_of(image)])] = 1.0
        return logits


def _image(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), COLOURS[colour]).save(path)


@pytest.fixture
def vqa_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "vqa"
    questions, annotations = [], []
    for i, colour in enumerate(["red", "green", "blue", "red"]):
        _image(folder / "val2014" / f"COCO_val2014_{i:012d}.jpg", colour)
        questions.append({"question_id": 10 + i, "image_id": i, "question": "what colour is it?"})
        answers = [{"answer": colour, "answer_id": k + 1, "answer_confidence": "yes"} for k in range(10)]
        annotations.append({"question_id": 10 + i, "image_id": i, "answers": answers})
    info = {"data_subtype": "val2014"}
    (folder / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(info | {"questions": questions}))
    (folder / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(info | {"annotations": annotations}))
    return folder


@pytest.fixture
def caption_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "captions"
    images, anns = [], []
    for i, colour in enumerate(["red", "green", "blue"]):
        _image(folder / "images" / f"{i}.png", colour)
        images.append({"id": i, "file_name": f"{i}.png"})
        anns += [{"image_id": i, "caption": f"a {colour} square"}, {"image_id": i, "caption": f"one {colour} box"}]
    (folder / "captions_test.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return folder


def _options(data: Path | None = None, **extra) -> TaskOptions:
    return TaskOptions(data_dir=data, extra=extra)


# ----------------------------------------------------------------------------- VQA


def test_vqa_oracle_scores_one_and_wrong_scores_zero(vqa_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    good = VqaTask().run(OracleVqa(), _options(vqa_dir))
    assert good.metrics == {"acc": 1.0, "invalid_rate": 0.0, "rank_acc": 1.0}
    assert good.n_samples == 4 and good.config["format"] == "vqav2"
    bad = VqaTask().run(WrongVqa(), _options(vqa_dir, mode="both"))
    assert bad.metrics == {"acc": 0.0, "invalid_rate": 1.0, "rank_acc": 0.0}
    only_rank = VqaTask().run(OracleVqa(), TaskOptions(data_dir=vqa_dir, limit=2, extra={"mode": "rank"}))
    assert only_rank.metrics == {"rank_acc": 1.0} and only_rank.n_samples == 2


class SharedPassVqa(OracleVqa):
    """An adapter whose ``answer_and_rank`` shares one prompt pass; its separate methods answer wrongly, so a
    task that calls them instead scores zero."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = 0

    def answer_and_rank(self, images, questions, candidates):
        """Log-likelihood -1 for the true colour and -0.2 for one wrong candidate: answer_nll is 1 only if it
        reads the true answer's column (the best candidate's would give 0.2)."""
        self.shared += 1
        loglik = torch.full((len(images), len(candidates)), -5.0)
        for i, image in enumerate(images):
            truth = candidates.index(colour_of(image))
            loglik[i, truth], loglik[i, (truth + 1) % len(candidates)] = -1.0, -0.2
        generated = OracleVqa.answer_questions(self, images, questions)
        return generated, OracleVqa.rank_answers(self, images, questions, candidates), loglik

    answer_questions = WrongVqa.answer_questions
    rank_answers = WrongVqa.rank_answers


def test_vqa_both_modes_come_from_the_shared_prompt_pass(vqa_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    adapter = SharedPassVqa()
    both = VqaTask().run(adapter, TaskOptions(data_dir=vqa_dir, extra={"mode": "both", "batch_size": 3}))
    assert both.metrics == {"acc": 1.0, "invalid_rate": 0.0, "rank_acc": 1.0, "answer_nll": 1.0}
    assert adapter.shared == 2  # one call per batch of 3 (4 questions)
    alone = VqaTask().run(adapter, TaskOptions(data_dir=vqa_dir, extra={"mode": "generate"}))
    assert alone.metrics == {"acc": 0.0, "invalid_rate": 1.0} and adapter.shared == 2


def test_answer_nll_reads_the_most_common_normalised_human_answer() -> None:
    from ecoflap.evaluation.tasks.vision import reference_answer

    assert reference_answer(["Two", "2", "three", "3", "three."]) == "3"  # "two" -> "2" twice, "3" three times
    assert reference_answer(["Red", "blue"]) == "red"  # a tie: the first


def test_vqa_unknown_mode_is_one_clear_error_before_any_answer(vqa_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    with pytest.raises(EcoflapError, match=r"mode='ranked' must be one of generate, rank, both"):
        VqaTask.describe_data(TaskOptions(data_dir=vqa_dir, extra={"mode": "ranked"}))


def test_gqa_format(tmp_path: Path) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    questions = {}
    for i, colour in enumerate(["red", "blue"]):
        _image(tmp_path / "gqa" / "images" / f"n{i}.jpg", colour)
        questions[str(i)] = {"imageId": f"n{i}", "question": "which colour?", "answer": colour}
    (tmp_path / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    result = VqaTask().run(OracleVqa(), _options(tmp_path / "gqa"))
    assert result.config["format"] == "gqa" and result.metrics["acc"] == 1.0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "v2_mscoco_val2014_annotations.json").unlink(), "no annotation file"),
        (lambda d: (d / "v2_mscoco_val2014_annotations.json").write_text("{oops"), "is not valid JSON"),
        (lambda d: next((d / "val2014").iterdir()).unlink(), "which is not in"),
        (lambda d: (d / "v2_OpenEnded_mscoco_val2014_questions.json").write_text('{"questions": []}'), "is empty"),
    ],
)
def test_vqa_bad_data_is_one_clear_error(vqa_dir: Path, damage, message: str) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    damage(vqa_dir)
    with pytest.raises(EcoflapError, match=message):
        VqaTask.describe_data(_options(vqa_dir))


def _null_answer(folder: Path) -> None:
    file = folder / "v2_mscoco_val2014_annotations.json"
    data = json.loads(file.read_text())
    data["annotations"][0]["answers"][0]["answer"] = None
    file.write_text(json.dumps(data))


def test_vqa_records_are_typed_and_null_answers_refused(vqa_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    _null_answer(vqa_dir)
    with pytest.raises(EcoflapError, match=r"annotations\.0\.answers\.0\.answer: Input should be a valid string"):
        VqaTask.describe_data(_options(vqa_dir))
    with pytest.raises(EcoflapError, match="answers.0.answer"):
        VqaTask().run(OracleVqa(), _options(vqa_dir))  # the run reads the same validated records


def test_validate_refuses_a_file_that_is_not_an_image(vqa_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import VqaTask

    image = next((vqa_dir / "val2014").iterdir())
    image.write_bytes(b"text, not pixels")
    with pytest.raises(EcoflapError, match=f"{image} is not a readable image"):
        VqaTask.describe_data(_options(vqa_dir))


def test_every_task_draws_a_terminal_bar_unless_tqdm_is_disabled(
    vqa_dir: Path, registries, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecoflap.evaluation.runner import evaluate

    logged: list[tuple[str, int]] = []

    class Logged:  # the caller's bar (Prefect's log in a flow) still advances beside the terminal's
        def __init__(self, *, total: int, desc: str) -> None:
            logged.append((desc, total))

        def update(self, n: int = 1) -> None:
            logged.append(("update", n))

        def close(self) -> None:
            return None

    options = TaskOptions(data_dir=vqa_dir.parent, extra={"vqa.mode": "generate"}, progress=Logged)
    evaluate(OracleVqa(), ["vqa"], options, registries)
    err = capsys.readouterr().err
    assert "vqa: 100%" in err and "4/4 [" in err  # tqdm's bar with elapsed<remaining time
    assert logged[0] == ("vqa", 4) and sum(n for desc, n in logged[1:]) == 4
    # tqdm reads TQDM_* variables when it is imported: a fresh interpreter shows the bar is tqdm's own
    draw = "from ecoflap.core.progress import no_progress, terminal_bars; "
    draw += "bar = terminal_bars(no_progress)(total=3, desc='vqa'); bar.update(3); bar.close()"
    for disable, shown in (({}, True), ({"TQDM_DISABLE": "1"}, False)):
        env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | disable
        drawn = subprocess.run([sys.executable, "-c", draw], capture_output=True, text=True, env=env, check=True)
        assert ("vqa: 100%" in drawn.stderr) is shown, drawn.stderr


# ----------------------------------------------------------------------------- captioning, retrieval, ImageNet


def test_captioning_passes_references_and_captions_to_the_scorers(caption_dir: Path, monkeypatch) -> None:
    from ecoflap.evaluation.metrics import captioning
    from ecoflap.evaluation.tasks.vision import CaptioningTask

    seen = {}

    def fake_scores(references, candidates):
        seen.update(references=references, candidates=candidates)
        return captioning.CaptionScores({"bleu_1": 1.0, "cider": 2.0}, notes=["SPICE unavailable: test"])

    monkeypatch.setattr(captioning, "caption_scores", fake_scores)
    result = CaptioningTask().run(Captioner(), _options(caption_dir))
    assert seen["candidates"] == {0: "a red square", 1: "a green square", 2: "a blue square"}
    assert seen["references"][1] == ["a green square", "one green box"]
    assert result.metrics["cider"] == 2.0 and math.isnan(result.metrics["spice"])
    assert result.notes == ["SPICE unavailable: test"]


def test_retrieval_with_an_embedder_that_matches_colours(caption_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import RetrievalTask

    result = RetrievalTask().run(ColourEmbedder(), _options(caption_dir))
    assert result.metrics["tr_r1"] == 1.0 and result.metrics["ir_r1"] == 1.0 and result.metrics["r_mean"] == 1.0
    assert result.config["n_texts"] == 6


def test_retrieval_merges_repeated_caption_strings() -> None:
    from ecoflap.evaluation.tasks.vision import pair_index

    texts, image_texts, text_images = pair_index([["a red box", "red"], ["a red box"], ["blue"]])
    assert texts == ["a red box", "red", "blue"]
    assert image_texts == [[0, 1], [0], [2]] and text_images == [[0, 1], [0], [2]]


@pytest.fixture
def imagenet_dir(tmp_path: Path) -> Path:
    for colour, wnid in WNIDS.items():
        _image(tmp_path / "imagenet" / "val" / wnid / f"{colour}.JPEG", colour)
    return tmp_path / "imagenet"


def test_imagenet_classifier_and_zero_shot(imagenet_dir: Path) -> None:
    from ecoflap.evaluation.tasks.base import TaskSkipped
    from ecoflap.evaluation.tasks.vision import ImageNetTask

    result = ImageNetTask().run(Classifier(), _options(imagenet_dir))
    assert result.metrics == {"top1": 1.0, "top5": 1.0} and result.config["mode"] == "classifier"
    zero_shot = ImageNetTask().run(ColourEmbedder(), _options(imagenet_dir, templates="2"))
    assert zero_shot.config["mode"] == "zero-shot" and zero_shot.metrics["top1"] == 1.0
    with pytest.raises(TaskSkipped, match="not the 1000 classes"):
        ImageNetTask().run(Classifier(n_labels=24), _options(imagenet_dir))


def test_imagenet_unknown_class_folder(imagenet_dir: Path) -> None:
    from ecoflap.evaluation.tasks.vision import ImageNetTask

    (imagenet_dir / "val" / "not_a_wnid").mkdir()
    with pytest.raises(EcoflapError, match="not a class of the class index"):
        ImageNetTask.describe_data(_options(imagenet_dir))


def test_imagenet_default_is_a_flagged_smoke_set() -> None:
    from ecoflap.evaluation.tasks.vision import ImageNetTask

    assert "5 images over 5 of 1000 classes" in ImageNetTask.describe_data(TaskOptions())


# ----------------------------------------------------------------------------- runner


@pytest.fixture(scope="module")
def registries():
    from ecoflap.core.plugins import load_plugins

    return load_plugins()


def test_runner_document_shape_and_skip_reasons(vqa_dir: Path, registries) -> None:
    from ecoflap.evaluation.runner import evaluate, format_table

    options = TaskOptions(data_dir=vqa_dir.parent, extra={"vqa.mode": "generate"})
    document = evaluate(OracleVqa(), ["vqa", "mmlu"], options, registries)
    for key in ("results", "configs", "versions", "n-samples", "higher_is_better", "config", "date", "git_hash"):
        assert key in document
    assert document["results"]["vqa"] == {
        "alias": "vqa", "acc,none": 1.0, "acc_stderr,none": 0.0, "invalid_rate,none": 0.0,
        "invalid_rate_stderr,none": 0.0,
    }  # fmt: skip
    assert document["configs"]["vqa"]["task_args"] == {"mode": "generate"}
    assert document["n-samples"]["vqa"] == {"original": 4, "effective": 4}
    assert document["higher_is_better"]["vqa"]["invalid_rate"] is False
    assert document["skipped"] == {"mmlu": "oracle is not a language-model (task mmlu)"}
    assert "ecoflap" not in document  # the block is the caller's: ecoflap.core.record's one builder
    from ecoflap.core.record import evaluation_settings, results_block

    settings = evaluation_settings(None, 1234, {})
    document["ecoflap"] = block = results_block(
        model="oracle", model_hash=None, checkpoint=None, report=None, allocation=[], tasks=["vqa", "mmlu"],
        evaluation=settings, timings={"eval": 0.1},
    )  # fmt: skip
    assert block["dense"] is True and block["method"] is None and len(block["run_key"]) == 64
    assert "versions" in block and block["target_sparsity"] == 0.0
    table = format_table(document)
    assert "|vqa" in table and "skipped mmlu" in table and table.startswith("oracle (as loaded, dense)")
    from ecoflap.evaluation.results.document import validate

    validate(document)  # the results store accepts it


def test_runner_unknown_task_fails_before_any_work(registries) -> None:
    from ecoflap.core.errors import UnknownNameError
    from ecoflap.evaluation.runner import evaluate

    adapter = OracleVqa()
    with pytest.raises(UnknownNameError, match="Did you mean 'vqa'"):
        evaluate(adapter, ["vqa", "vqa2"], TaskOptions(), registries)
    assert adapter.calls == 0


# ----------------------------------------------------------------------------- language tasks (tiny-llama)


def test_wikitext_token_perplexity_is_exp_mean_nll(make_adapter, tmp_path: Path) -> None:
    from ecoflap.evaluation.tasks.language import WikitextTask

    adapter = make_adapter("tiny-llama")
    texts = ["The model prunes weights block by block.", "A sparse layer keeps what matters most."]
    raw = "".join(f" = Title {i} = \n\n {text} \n\n" for i, text in enumerate(texts))
    (tmp_path / "wiki.test.raw").write_text(raw)
    result = WikitextTask().run(adapter, _options(tmp_path))
    nll, count = 0.0, 0  # lm-eval's rolling window: each document predicted from the prefix (BOS) token
    from ecoflap.evaluation.datasets.text import read_wikitext

    with torch.no_grad():
        for doc in read_wikitext(tmp_path):
            ids = [adapter.tokenizer.bos_token_id] + adapter.tokenizer.encode(doc, add_special_tokens=False)
            logits = adapter.model(torch.tensor([ids])).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
            count += len(ids) - 1
    assert result.metrics["token_perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert result.n_samples == 2 and result.config["n_tokens"] == count


def test_wikitext_validation_split_never_overlaps_test_or_calibration_stream_order(tmp_path: Path) -> None:
    """split=validation chooses settings on other articles than the reported test: the shipped data's
    validation is calibration-side (every 10th of it), a folder's is its wiki.valid.raw."""
    from ecoflap.core.datasets.corpora import split_corpus, wikipedia_articles
    from ecoflap.evaluation.tasks.language import WikitextTask

    test, _ = WikitextTask.load(_options())
    validation, description = WikitextTask.load(_options(split="validation"))
    calibration, heldout = split_corpus(wikipedia_articles())
    assert test == heldout and "validation" in description
    assert validation and not set(validation) & set(test) and set(validation) <= set(calibration)
    assert validation == calibration[9::10]
    (tmp_path / "wiki.test.raw").write_text(" = Test = \n\n The test article . \n\n")
    (tmp_path / "wiki.valid.raw").write_text(" = Valid = \n\n The validation article . \n\n")
    valid, _ = WikitextTask.load(_options(tmp_path, split="validation"))
    assert len(valid) == 1 and "validation article" in valid[0]
    assert "test article" in WikitextTask.load(_options(tmp_path))[0][0]
    with pytest.raises(EcoflapError, match="split='train' must be one of test, validation"):
        WikitextTask.load(_options(split="train"))
    (tmp_path / "wiki.valid.raw").unlink()
    with pytest.raises(EcoflapError, match="no WikiText validation file"):
        WikitextTask.load(_options(tmp_path, split="validation"))


def test_mmlu_through_lm_eval_per_subject_and_average(make_adapter) -> None:
    from ecoflap.evaluation.tasks.language import MmluTask

    adapter = make_adapter("tiny-llama")
    options = TaskOptions(limit=2, extra={"subjects": "anatomy,astronomy", "num_fewshot": "2"})
    result = MmluTask().run(adapter, options)
    subtasks = result.config["subtasks"]
    assert set(subtasks) == {"anatomy", "astronomy"} and all(
        s["n"] == 2 and s["n-shot"] == 2 for s in subtasks.values()
    )
    assert result.n_samples == 4
    assert result.metrics["acc"] == pytest.approx(sum(s["acc"] * s["n"] for s in subtasks.values()) / 4)
    assert 0.0 <= result.metrics["acc"] <= 1.0
    with pytest.raises(EcoflapError, match="unknown subject 'anatomyy'"):
        MmluTask.describe_data(TaskOptions(extra={"subjects": "anatomyy"}))


def test_mmlu_leave_one_out_shots_fit_lm_eval_pool_with_repeated_and_small_subjects(
    make_adapter, tmp_path: Path
) -> None:
    """Dev-only data: lm-eval drops every copy of the evaluated question from the few-shot pool."""
    from ecoflap.evaluation.tasks.language import MmluTask

    def row(i: int) -> str:
        return f"question {i}?,w{i},x{i},y{i},z{i},A"

    dev = tmp_path / "mmlu" / "dev"
    dev.mkdir(parents=True)
    # physics repeats its first question (as the shipped college_physics does); logic has 3 questions
    (dev / "physics_dev.csv").write_text("\n".join([row(0), row(0), row(1), row(2), row(3)]) + "\n")
    (dev / "logic_dev.csv").write_text("\n".join(row(i) for i in range(3)) + "\n")
    options = TaskOptions(data_dir=tmp_path / "mmlu", limit=1, extra={"num_fewshot": "5"})
    result = MmluTask().run(make_adapter("tiny-llama"), options)
    subtasks = result.config["subtasks"]
    assert subtasks["physics"]["n-shot"] == 3  # 5 rows, the evaluated one twice: 3 others
    assert subtasks["logic"]["n-shot"] == 2
    assert result.n_samples == 2


def test_mmlu_default_has_the_281_dev_questions() -> None:
    from ecoflap.evaluation.tasks.language import MmluTask

    assert "dev 281 questions over 57 subjects" in MmluTask.describe_data(TaskOptions())
