"""The one provenance module: content fingerprints, keys, atomic group-readable writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ecoflap.core.provenance import cache_key, fingerprint, versions, weights_hash, write_json


def test_a_fingerprint_follows_the_content_not_the_timestamp(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("one")
    first = fingerprint(data)
    os.utime(data / "a.txt", (0, 0))
    assert fingerprint(data) == first  # same bytes, other mtime: same fingerprint
    (data / "a.txt").write_text("two")
    assert fingerprint(data) != first
    assert fingerprint("wikipedia") == "wikipedia" and fingerprint(None) is None


def test_cache_keys_ignore_dict_order_and_see_every_value() -> None:
    assert cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})
    assert cache_key({"a": 1, "b": 2}) != cache_key({"a": 1, "b": 3})


def test_written_results_are_readable_by_the_group(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "out" / "results.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temporary file left


def test_the_weights_hash_sees_one_changed_weight(make_adapter) -> None:
    adapter = make_adapter("tiny-llama")
    before = weights_hash(adapter.model)
    assert weights_hash(adapter.model) == before
    name, tensor = next(iter(adapter.model.state_dict().items()))
    tensor.view(-1)[0] += 1.0
    assert weights_hash(adapter.model) != before


def test_versions_name_the_machine_and_torchs_kernels() -> None:
    """The same run key gives other last bits on another processor or thread count: both are recorded."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        found = versions()
        assert found["torch-threads"] == "1"
        assert found["torch-cpu-capability"] == torch.backends.cpu.get_cpu_capability()
        assert found["cpu"] and found["machine"]
        torch.set_num_threads(2)
        assert versions()["torch-threads"] == "2"
    finally:
        torch.set_num_threads(before)
