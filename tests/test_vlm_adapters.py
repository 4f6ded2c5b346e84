"""Vision(-language) model adapters on tiny random models: towers, losses, capabilities, the whole method."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from ecoflap.core.adapters import LoadOptions
from ecoflap.core.capabilities import capabilities_of
from ecoflap.core.compress import compress
from ecoflap.core.config import PruneConfig
from ecoflap.core.errors import EcoflapError
from ecoflap.core.job import resolve_methods, resolve_model
from ecoflap.core.plugins import load_plugins
from ecoflap.core.scoring import ordered_blocks
from ecoflap.core.sequential import capture_inputs, run_block

REGISTRIES = load_plugins()
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 30)}
TOWERS = {
    "tiny-blip2-opt": ["vision", "language"],
    "tiny-blip2-t5": ["vision", "language-encoder", "language-decoder"],
    "tiny-clip": ["vision", "text"],
    "tiny-vit": ["vision"],
    "tiny-lavis-blip2-opt": ["vision", "language"],
    "tiny-lavis-blip2-t5": ["vision", "language-encoder", "language-decoder"],
}
DENSE_PARTS = (
    "qformer",
    "Qformer",
    "query_tokens",
    "language_projection",
    "opt_proj",
    "t5_proj",
    "ln_vision",
    "lm_head",
    "embed",
    "projection.weight",
    "classifier",
)


@pytest.fixture(scope="session")
def pairs(tmp_path_factory) -> list[tuple[Path, str]]:
    """Eight 64 x 64 PNG images of one coloured shape each, with their captions."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("images")
    found = []
    for i, (colour, rgb) in enumerate(COLOURS.items()):
        for shape in ("circle", "rectangle"):
            image = Image.new("RGB", (64, 64), "white")
            draw = ImageDraw.Draw(image)
            box = (12 + i, 10, 50, 52 - i)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            path = folder / f"{colour}-{shape}.png"
            image.save(path)
            found.append((path, f"a {colour} {shape}"))
    return found


def load(name: str, extra: dict | None = None, **options):
    return REGISTRIES.models.get(name).load(LoadOptions(name, extra={"seed": 0} | (extra or {}), **options))


@pytest.mark.parametrize("name", list(TOWERS))
def test_towers_and_blocks_in_forward_order(name: str, pairs) -> None:
    adapter = load(name)
    towers = adapter.towers()
    assert [t.name for t in towers] == TOWERS[name]
    order: list[str] = []
    blocks = ordered_blocks(towers)
    batch = adapter.calibration_batch(pairs, 2, 16, seed=0)
    handles = [b.module.register_forward_pre_hook(lambda m, a, n=b.name: order.append(n)) for b in blocks]
    with torch.no_grad():
        adapter.forward(batch)
    for h in handles:
        h.remove()
    assert order == [b.name for b in blocks]  # every block runs once, in tower order
    prunable = adapter.prunable_layers()
    assert prunable and not [n for n in prunable if any(part in n for part in DENSE_PARTS)]
    assert not [n for n, _ in adapter.model.named_modules() if n.startswith("qformer") and n in prunable]


def _single(adapter, pairs, n: int = 1):
    return adapter.calibration_batch(pairs, n, 32, seed=3)


def test_blip2_opt_loss_matches_transformers_labels_path(pairs) -> None:
    adapter = load("tiny-blip2-opt")
    batch = _single(adapter, pairs, 4)
    assert adapter.loss(batch).shape == (4,)
    one = {k: v[:1] for k, v in batch.items()}
    q = adapter.model.config.num_query_tokens
    ids = torch.cat([torch.full((1, q), adapter.model.config.image_token_index), one["text_ids"]], dim=1)
    labels = torch.cat([torch.full((1, q), -100), one["text_ids"].masked_fill(one["label_mask"] == 0, -100)], dim=1)
    with torch.no_grad():
        expected = adapter.model(pixel_values=one["pixel_values"], input_ids=ids, labels=labels).loss
        assert adapter.loss(one)[0] == pytest.approx(float(expected), rel=1e-5)


def test_blip2_t5_loss_matches_transformers_labels_path(pairs) -> None:
    adapter = load("tiny-blip2-t5")
    batch = _single(adapter, pairs, 4)
    assert adapter.loss(batch).shape == (4,)
    one = {k: v[:1] for k, v in batch.items()}
    q = adapter.model.config.num_query_tokens
    ids = torch.cat([torch.full((1, q), adapter.model.config.image_token_index), one["prefix_ids"]], dim=1)
    mask = torch.cat([torch.ones(1, q, dtype=torch.long), one["prefix_mask"]], dim=1)  # the padding of 4 samples
    labels = one["target_ids"].masked_fill(one["target_mask"] == 0, -100)
    with torch.no_grad():
        expected = adapter.model(
            pixel_values=one["pixel_values"], input_ids=ids, attention_mask=mask, labels=labels
        ).loss
        assert adapter.loss(one)[0] == pytest.approx(float(expected), rel=1e-5)


def test_lavis_opt_loss_matches_lavis_forward(pairs) -> None:
    """With LAVIS's own text convention (caption + newline, every token a target), one sample's loss
    is what ``Blip2OPT.forward`` returns: the image path (ViT, ln_vision, Q-Former, projection) agrees."""
    adapter = load("tiny-lavis-blip2-opt")
    image, caption = pairs[2]
    ids = adapter.tokenizer(caption + "\n", return_tensors="pt").input_ids
    ones = torch.ones_like(ids)
    batch = {"pixel_values": adapter.pixel_values([image]), "text_ids": ids, "text_mask": ones, "label_mask": ones}
    with torch.no_grad():
        expected = adapter.model({"image": batch["pixel_values"], "text_input": [caption]})["loss"]
        assert adapter.loss(batch)[0] == pytest.approx(float(expected), rel=1e-5)
    assert adapter.loss(adapter.calibration_batch(pairs, 3, 16, seed=0)).shape == (3,)


def test_clip_loss_is_the_symmetric_contrastive_loss(pairs) -> None:
    adapter = load("tiny-clip")
    batch = _single(adapter, pairs, 4)
    with torch.no_grad():
        per_sample = adapter.loss(batch)
        expected = adapter.model(**batch, return_loss=True).loss
    assert per_sample.shape == (4,)
    assert float(per_sample.mean()) == pytest.approx(float(expected), rel=1e-5)
    assert not torch.allclose(per_sample, per_sample.mean().expand(4))


def test_vit_loss_and_labels(pairs) -> None:
    adapter = load("tiny-vit")
    batch = _single(adapter, pairs, 4)
    named = [adapter.labels.index(c) for _, c in sorted(pairs) if c in adapter.labels]
    assert named  # captions that name a label calibrate with that label
    assert set(batch["labels"].tolist()) <= set(range(len(adapter.labels)))
    with torch.no_grad():
        expected = adapter.model(pixel_values=batch["pixel_values"][:1], labels=batch["labels"][:1]).loss
        assert adapter.loss(batch).shape == (4,)
        assert adapter.loss({k: v[:1] for k, v in batch.items()})[0] == pytest.approx(float(expected), rel=1e-5)


def test_vit_pseudo_labels_for_captions_outside_its_label_set(pairs) -> None:
    adapter = load("tiny-vit")
    other = [(p, "something else") for p, _ in pairs]
    batch = adapter.calibration_batch(other, 4, 8, seed=0)
    assert torch.equal(batch["labels"], adapter.classify(batch["pixel_values"]).argmax(-1))


def test_t5_replay_keeps_the_relative_position_bias(pairs) -> None:
    """Blocks replayed with block 0's arguments give the stack's own hidden states (bias passed on)."""
    adapter = load("tiny-blip2-t5")
    batch = _single(adapter, pairs, 2)
    towers = {t.name: t for t in adapter.towers()}
    for name in ("language-encoder", "language-decoder"):
        blocks = towers[name].blocks
        seen: list[torch.Tensor] = []
        handles = [b.module.register_forward_hook(lambda m, a, o, keep=seen: keep.append(o[0])) for b in blocks]
        with torch.no_grad():
            adapter.forward(batch)
            inputs = [capture_inputs(adapter, blocks[0], batch)]
            for h in handles:
                h.remove()
            for k, block in enumerate(blocks):
                inputs = run_block(block, inputs)
                assert torch.allclose(inputs[0].hidden, seen[k], atol=1e-5), f"{name} block {k}"


@pytest.mark.parametrize("name", ["tiny-blip2-opt", "tiny-blip2-t5", "tiny-lavis-blip2-opt"])
def test_generation_settings_are_pinned_and_batching_does_not_change_answers(name: str, pairs) -> None:
    adapter = load(name)
    assert set(capabilities_of(adapter)) == {"caption-generator", "visual-question-answerer"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        adapter.settings.num_beams = 5
    images = [p for p, _ in pairs[:2]]
    questions = ["what shape is this?", "is the shape in the image red?"]
    together = adapter.answer_questions(images, questions)
    alone = [adapter.answer_questions([i], [q])[0] for i, q in zip(images, questions, strict=True)]
    assert together == alone
    captions = adapter.generate_captions(images)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_rank_answers_picks_the_most_likely_candidate(pairs) -> None:
    adapter = load("tiny-blip2-opt")
    candidates = ["yes", "no", "circle", "red"]
    image, question = pairs[0][0], "what shape is it?"
    prompt = adapter.settings.vqa_prompt.format(question)
    batch = adapter.pair_batch([prompt] * 4, [" " + c for c in candidates])
    batch["pixel_values"] = adapter.pixel_values([image] * 4)
    totals = []
    q = adapter.model.config.num_query_tokens
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        ids = torch.cat([torch.full((1, q), adapter.model.config.image_token_index), one["text_ids"]], dim=1)
        keep = one["text_mask"].bool()[0]
        ids = torch.cat([ids[:, :q], one["text_ids"][:, keep]], dim=1)
        lab = one["text_ids"].masked_fill(one["label_mask"] == 0, -100)[:, keep]
        labels = torch.cat([torch.full((1, q), -100), lab], dim=1)
        with torch.no_grad():
            mean = adapter.model(pixel_values=one["pixel_values"], input_ids=ids, labels=labels).loss
        totals.append(float(mean) * int(one["label_mask"].sum()))
    assert adapter.rank_answers([image], [question], candidates) == [candidates[totals.index(min(totals))]]


def test_clip_embeddings(pairs) -> None:
    adapter = load("tiny-clip")
    assert capabilities_of(adapter) == ["image-text-embedder"]
    images = adapter.embed_images([p for p, _ in pairs[:3]])
    texts = adapter.embed_texts([c for _, c in pairs[:3]])
    assert images.shape == texts.shape == (3, 16)
    assert torch.allclose(images.norm(dim=-1), torch.ones(3)) and torch.allclose(texts.norm(dim=-1), torch.ones(3))


def _tower_sparsity(adapter) -> dict[str, float]:
    zeros: dict[str, list[int]] = {}
    for tower in adapter.towers():
        for block in tower.blocks:
            for lin in block.linears.values():
                z = zeros.setdefault(tower.name, [0, 0])
                z[0] += int((lin.weight == 0).sum())
                z[1] += lin.weight.numel()
    return {t: z / n for t, (z, n) in zeros.items()}


@pytest.mark.parametrize("name", list(TOWERS))
def test_ecoflap_end_to_end_save_and_reload(name: str, pairs, tmp_path: Path) -> None:
    """Zeroth-order scores, one ecoflap budget over all towers, Wanda; every tower pruned; reload = same."""
    adapter = load(name)
    batch = adapter.calibration_batch(pairs, 8, 32, seed=0)
    group = 4 if name == "tiny-clip" else 1  # CLIP's loss couples the samples: one perturbation per micro-batch
    config = PruneConfig.build(
        model=name, scorer="zeroth-order", allocator="ecoflap", pruner="wanda", sparsity=0.5, zo_group=group
    )
    result = compress(adapter, config, resolve_methods(REGISTRIES, config), batch)
    assert result.measured.overall() == pytest.approx(0.5, abs=0.02)
    per_tower = _tower_sparsity(adapter)
    assert set(per_tower) == set(TOWERS[name]) and min(per_tower.values()) > 0.3
    if len(TOWERS[name]) > 1:
        assert len({round(v, 3) for v in result.allocation.sparsity.values()}) > 1  # scores shaped the budget
    out = tmp_path / "pruned"
    adapter.save(out)
    reloaded = resolve_model(REGISTRIES, str(out)).load(LoadOptions(str(out)))
    assert type(reloaded) is type(adapter)
    again = reloaded.calibration_batch(pairs, 8, 32, seed=0)
    assert all(torch.equal(again[k], batch[k]) for k in batch)  # processor and tokenizer saved too
    with torch.no_grad():
        assert torch.equal(reloaded.loss(batch), adapter.loss(batch))
    assert _tower_sparsity(reloaded) == per_tower


@pytest.mark.parametrize("name", ["tiny-blip2-opt", "tiny-blip2-t5", "tiny-lavis-blip2-t5"])
def test_language_tower_calibrates_on_the_pruned_vision_tower(name: str, pairs) -> None:
    adapter = load(name)
    dense = copy.deepcopy(adapter)
    batch = adapter.calibration_batch(pairs, 4, 32, seed=0)
    first_language = adapter.towers()[1].blocks[0]
    seen: list[torch.Tensor] = []
    handle = first_language.module.register_forward_pre_hook(
        lambda m, a, k: seen.append((a[0] if a else k["hidden_states"]).detach().clone()), with_kwargs=True
    )
    config = PruneConfig.build(model=name, allocator="uniform", pruner="wanda", sparsity=0.5)
    compress(adapter, config, resolve_methods(REGISTRIES, config), batch)
    handle.remove()
    with torch.no_grad():
        dense_in = capture_inputs(dense, dense.towers()[1].blocks[0], batch).hidden
        pruned_in = capture_inputs(adapter, first_language, batch).hidden
    assert torch.equal(seen[-1], pruned_in)  # the block's statistics came from the pruned vision tower
    assert not torch.allclose(pruned_in, dense_in, atol=1e-4)


def test_undecodable_image_names_the_file(pairs, tmp_path: Path) -> None:
    adapter = load("tiny-clip")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(EcoflapError, match="cannot decode the image .*broken.png"):
        adapter.calibration_batch([(broken, "a red circle")], 1, 8, seed=0)
    with pytest.raises(EcoflapError, match="broken.png"):
        adapter.embed_images([broken])


@pytest.mark.parametrize("missing", ["preprocessor_config.json", "model.safetensors", "tokenizer.json"])
def test_folder_missing_a_file_is_one_clear_error(missing: str, tmp_path: Path) -> None:
    adapter = load("tiny-blip2-t5")
    out = tmp_path / "model"
    adapter.save(out)
    for name in [missing] + (["tokenizer_config.json"] if missing == "tokenizer.json" else []):
        (out / name).unlink()
    with pytest.raises(EcoflapError, match=f"cannot load the model in .*: no {missing}"):
        resolve_model(REGISTRIES, str(out))  # before any compute: the folder's adapter checks it
    with pytest.raises(EcoflapError, match=f"cannot load the model in .*: no {missing}"):
        REGISTRIES.models.get("hf-blip2").load(LoadOptions(str(out)))


def test_too_few_pairs_and_unknown_tower_in_targets(pairs) -> None:
    adapter = load("tiny-blip2-opt", targets=["no_such_tower"])
    with pytest.raises(EcoflapError, match="has no prunable linear layers"):
        adapter.towers()
    with pytest.raises(EcoflapError, match="only 8 image-caption pairs"):
        adapter.calibration_batch(pairs, 9, 16, seed=0)
    vision_only = load("tiny-blip2-opt", targets=[r"^vision_model\."])
    assert {t.name for t in vision_only.towers() if any(b.linears for b in t.blocks)} == {"vision"}


def test_lavis_bad_input_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ECOFLAP_LAVIS_CHECKPOINT", raising=False)
    with pytest.raises(EcoflapError, match=r"needs a LAVIS checkpoint \(.pth\)"):
        load("lavis:blip2_opt:pretrain_opt2.7b")
    with pytest.raises(EcoflapError, match="does not exist"):
        load("lavis:blip2_t5:pretrain_flant5xl", extra={"checkpoint": str(tmp_path / "none.pth")})
    adapter = load("tiny-lavis-blip2-opt")
    out = tmp_path / "saved"
    adapter.save(out)
    (out / "lavis_checkpoint.pth").unlink()
    spec = resolve_model(REGISTRIES, str(out))
    with pytest.raises(EcoflapError, match="has no lavis_checkpoint.pth"):
        spec.load(LoadOptions(str(out)))
