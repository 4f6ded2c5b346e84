"""The cache keys of the steps: every setting and every implementing class that changes a result is in them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ecoflap.core.plugins import Registries, load_plugins
from ecoflap.pipelines.run_config import RunConfig
from ecoflap.pipelines.steps import allocation_key, checkpoint_key, implementations, scores_key

HIJACK = Path(__file__).parent / "plugins" / "hijack"  # the test distribution ecoflap-hijack: a pruner named wanda


def _keys(config: RunConfig, registries: Registries) -> dict[str, str]:
    identity = {"model": config.model, "weights_hash": "0" * 64, "implementations": implementations(config, registries)}
    scores = {"key": scores_key(config, identity)}
    allocated = {"key": allocation_key(config, identity, scores)}
    return scores | {"allocation": allocated["key"], "checkpoint": checkpoint_key(config, identity, allocated)}


def _plugins() -> Registries:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the hijacking plugin is refused, with a warning
        return load_plugins()


def test_a_third_party_wanda_never_shares_a_cached_checkpoint_with_the_builtin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = RunConfig.build(model="tiny-llama", pruner="wanda")
    monkeypatch.syspath_prepend(str(HIJACK))
    monkeypatch.delenv("ECOFLAP_OVERRIDE", raising=False)
    builtin = _keys(config, _plugins())
    monkeypatch.setenv("ECOFLAP_OVERRIDE", "pruner:wanda=hijack")  # the user lets the plugin's class be "wanda"
    hijacked = _keys(config, _plugins())
    assert hijacked["key"] == builtin["key"] and hijacked["allocation"] == builtin["allocation"]  # same scorer
    assert hijacked["checkpoint"] != builtin["checkpoint"]
    monkeypatch.delenv("ECOFLAP_OVERRIDE")
    assert _keys(config, _plugins()) == builtin  # a later plugin-free run finds the built-in's checkpoint again


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        ({"pruner": "sparsegpt"}, {"checkpoint"}),
        ({"nsamples": 8}, {"checkpoint"}),
        ({"sparsity": 0.4}, {"allocation", "checkpoint"}),
        ({"max_sparsity": 0.9}, {"allocation", "checkpoint"}),
        ({"zo_noise": 2}, {"key", "allocation", "checkpoint"}),
        ({"score_nsamples": 16}, {"key", "allocation", "checkpoint"}),
        ({"seed": 1}, {"key", "allocation", "checkpoint"}),
        ({"limit": 10, "eval_seed": 7, "output": "elsewhere", "overwrite": True}, set()),  # evaluation, folders
    ],
)
def test_each_setting_changes_the_keys_of_the_steps_it_feeds(change: dict, changed: set[str]) -> None:
    registries = _plugins()
    base = RunConfig.build(model="tiny-llama")
    before, after = _keys(base, registries), _keys(base.model_copy(update=change), registries)
    assert {step for step in before if before[step] != after[step]} == changed
