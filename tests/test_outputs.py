"""Output folders: nothing the user kept is replaced, every path is checked first, leftovers are swept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecoflap.core.errors import EcoflapError
from ecoflap.core.outputs import MARKER, check_output, is_run_folder, staged_folder, sweep_leftovers
from ecoflap.pipelines.steps import write_run_folder

DOCUMENT = {"results": {"wikitext": {"word_perplexity,none": 1.0}}, "ecoflap": {"version": "test"}}


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "cache" / "checkpoints" / "abc"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "report.json").write_text(json.dumps({"method": {"pruner": "wanda"}}))
    return folder


def test_a_folder_of_the_user_is_refused_and_kept(tmp_path: Path, checkpoint: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for save_model in (True, False):
        with pytest.raises(EcoflapError, match=r"is not an ecoflap run folder .*--overwrite"):
            write_run_folder(DOCUMENT, mine, str(checkpoint), save_model)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mine"]  # no staging folder left


def test_overwrite_replaces_the_folder_of_the_user_on_request(tmp_path: Path, checkpoint: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "old.txt").write_text("replace me")
    write_run_folder(DOCUMENT, mine, str(checkpoint), save_model=True, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == sorted(
        [MARKER, "model.safetensors", "report.json", "results.json"]
    )


def test_a_run_folder_is_replaced_whole_and_marked(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "runs" / "r"
    write_run_folder(DOCUMENT, out, str(checkpoint), save_model=True)
    assert is_run_folder(out) and (out / "model.safetensors").read_bytes() == b"weights"
    write_run_folder(DOCUMENT, out, str(checkpoint), save_model=False)  # the same run, now linked
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "checkpoint", "results.json"]
    assert (out / "checkpoint").resolve() == checkpoint.resolve()
    assert sorted(p.name for p in out.parent.iterdir()) == ["r"]  # no staging or set-aside folder left


def test_an_evaluation_into_its_checkpoint_adds_results_only(checkpoint: Path) -> None:
    write_run_folder(DOCUMENT, checkpoint, str(checkpoint), save_model=False)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["model.safetensors", "report.json", "results.json"]


def test_an_older_run_folder_without_the_marker_is_still_ours(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"results": {}, "ecoflap": {}}))
    assert is_run_folder(old)
    (old / "results.json").write_text(json.dumps({"results": {}}))  # somebody else's results.json
    assert not is_run_folder(old)
    (old / "results.json").write_text("not json")
    assert not is_run_folder(old)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root, "is the current folder: ecoflap never replaces it"),
        (lambda root: root.parent, "is a folder above the current one, or the home folder"),
        (lambda root: Path("."), "is the current folder"),
        (lambda root: Path.home(), "the home folder"),
        (lambda root: _file(root / "afile"), "is a file, not a folder"),
        (lambda root: _file(root / "afile") / "sub" / "run", "afile is a file, not a folder"),
        (lambda root: _dangling(root / "link"), "is a link to no folder"),
    ],
)
def test_unusable_outputs_are_one_line_before_any_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    output = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(EcoflapError, match=message):
        check_output(output, overwrite=True)  # --overwrite never extends to these
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_parent_is_found_before_the_compute(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(EcoflapError, match="is not writable by this user"):
            check_output(locked / "run")
    finally:
        locked.chmod(0o755)


def test_leftovers_of_a_killed_writer_are_swept_and_a_set_aside_folder_put_back(tmp_path: Path) -> None:
    dead = _dead_pid()
    (tmp_path / f".run.staging-{dead}-x1").mkdir()  # killed while staging
    (tmp_path / f".results.json.tmp-{dead}-x2").write_text("{")  # killed while writing a JSON file
    aside = tmp_path / f".kept.old-{dead}-x3"  # killed between the two renames of a replacement
    (aside / "folder").mkdir(parents=True)
    (aside / "folder" / "results.json").write_text("{}")
    live = tmp_path / f".other.staging-{os.getpid()}-x4"  # a writer that is still running
    live.mkdir()
    removed = sweep_leftovers(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kept", live.name])
    assert (tmp_path / "kept" / "results.json").read_text() == "{}"


def test_a_failed_staged_folder_leaves_the_previous_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("previous")
    with pytest.raises(OSError), staged_folder(out) as staging:
        (staging / "report.json").write_text("half")
        raise OSError("disk full")
    assert (out / "report.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _file(path: Path) -> Path:
    path.write_text("a file")
    return path


def _dangling(path: Path) -> Path:
    path.symlink_to(path.parent / "nowhere")
    return path


def test_preflight_checks_the_output_and_the_run_cache_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ecoflap.pipelines.common import registries
    from ecoflap.pipelines.run_config import RunConfig
    from ecoflap.pipelines.steps import preflight

    config = RunConfig.build(model="tiny-llama", output=str(tmp_path / "run"))
    monkeypatch.setenv("ECOFLAP_RUN_CACHE", str(_file(tmp_path / "afile") / "cache"))
    with pytest.raises(EcoflapError, match=r"cannot create the run cache .*afile is a file, not a folder"):
        preflight(config, registries(False))
    monkeypatch.setenv("ECOFLAP_RUN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(EcoflapError, match="is not an ecoflap run folder"):
        preflight(config, registries(False))
    preflight(config.model_copy(update={"overwrite": True}), registries(False))  # asked for: accepted
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"  # a check replaces nothing


def test_an_evaluation_into_a_model_folder_of_the_user_replaces_only_an_ecoflap_results_file(tmp_path: Path) -> None:
    from ecoflap.pipelines.steps import check_results_folder

    model = tmp_path / "my-model"  # the user's own Hugging Face folder, evaluated in place
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    check_results_folder(model, str(model))  # adds results.json, replaces nothing
    (model / "results.json").write_text('{"mine": true}')  # a results file that is not ecoflap's
    with pytest.raises(EcoflapError, match=r"results.json exists and is not ecoflap's: .* --overwrite"):
        check_results_folder(model, str(model))
    check_results_folder(model, str(model), overwrite=True)
    write_run_folder(DOCUMENT, model, str(model), save_model=False, overwrite=True)
    assert sorted(p.name for p in model.iterdir()) == ["model.safetensors", "results.json"]
    check_results_folder(model, str(model))  # now ecoflap's: replaced again without asking
