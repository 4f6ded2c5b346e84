"""The cache folder's one-time builds: two jobs building the same folder at once both end with it whole."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ecoflap.core.outputs import publish_once
from ecoflap.core.provenance import write_file


def _slow_build(started: threading.Barrier, label: str):
    def build(folder: Path) -> None:
        (folder / "part.txt").write_text(label)
        started.wait(timeout=10)  # both builders hold a half-built folder before either renames
        (folder / "model.safetensors").write_text(label)

    return build


def test_two_builders_at_once_both_get_the_whole_folder_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m"
    started = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def job(label: str) -> None:
        try:
            results.append(publish_once(target, _slow_build(started, label)))
        except BaseException as exc:  # noqa: BLE001 - the test reports it below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [target, target]
    assert (target / "model.safetensors").read_text() == (target / "part.txt").read_text()  # one builder's
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]


def test_a_finished_folder_is_not_rebuilt_and_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "m"

    def fail(folder: Path) -> None:
        (folder / "half").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        publish_once(target, fail)
    assert list(tmp_path.iterdir()) == []
    publish_once(target, lambda folder: (folder / "model.safetensors").write_text("1"))
    publish_once(target, fail)  # complete: never rebuilt
    assert (target / "model.safetensors").read_text() == "1"


def test_write_file_replaces_whole_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "features.pt"
    write_file(path, lambda tmp: tmp.write_text("old"))

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file(path, fail)
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["features.pt"]
