"""The pluggy plugin API: entry-point loading, validation, did-you-mean, broken and third-party plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ecoflap.core import hookspecs
from ecoflap.core.errors import PluginLoadError, UnknownNameError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.plugins import load_plugins
from ecoflap.core.pruning import LayerPruner

HERE = Path(__file__).parent
SAMPLE = HERE / "plugins" / "sample_pruner"
BROKEN = HERE / "plugins" / "broken_plugin"


def ecoflap(*args: str, pythonpath: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath), "ECOFLAP_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ecoflap.pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or HERE.parent,
        timeout=600,
    )


def test_builtins_load_through_the_entry_point_group() -> None:
    reg = load_plugins()
    assert {"magnitude", "wanda", "sparsegpt"} <= set(reg.pruners)
    assert {"zeroth-order", "first-order"} <= set(reg.scorers)
    assert {"ecoflap", "uniform", "from-file"} <= set(reg.allocators)
    assert {"smollm2-135m", "tiny-llama", "tiny-opt"} <= set(reg.models)
    assert reg.pruners.entry("wanda").plugin == "pruners"
    assert reg.plugins["pruners"].distribution == "ecoflap"


def test_unknown_names_say_what_exists() -> None:
    reg = load_plugins()
    with pytest.raises(UnknownNameError) as info:
        reg.pruners.get("wnda")
    message = str(info.value)
    assert "Did you mean 'wanda'" in message and "sparsegpt" in message


class WrongType:
    @hookimpl
    def register_pruners(self, register) -> None:
        register(object)


class Duplicate:
    class Wanda2(LayerPruner):
        name = "wanda"

        def prune(self, sparsity, pattern=None):
            raise NotImplementedError

    @hookimpl
    def register_pruners(self, register) -> None:
        register(self.Wanda2)


class TooNew:
    ECOFLAP_API_VERSION = "2.0"


@pytest.mark.parametrize(
    ("plugin", "message"),
    [(WrongType(), "registered <class 'object'> as a pruner"), (Duplicate(), "already registered by 'pruners'")],
)
def test_a_bad_registration_names_its_plugin(plugin: object, message: str) -> None:
    with pytest.warns(RuntimeWarning, match=f"'bad'.*{re.escape(message)}"):
        reg = load_plugins(extra=[("bad", plugin)])
    assert reg.plugins["bad"].error
    assert "wanda" in reg.pruners and reg.pruners.entry("wanda").plugin == "pruners"
    with pytest.raises(PluginLoadError, match="'bad'"):
        load_plugins(strict=True, extra=[("bad", plugin)])


def test_api_version_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecoflap.core import plugins

    with pytest.raises(PluginLoadError, match="needs ecoflap plugin API 2.0"):
        ecoflap.plugins._check_api_version(TooNew(), "too-new")


def test_every_hook_is_tested_and_documented() -> None:
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    here = Path(__file__).read_text() + (HERE / "test_cli.py").read_text()
    readme = (HERE.parent / "README.md").read_text()
    for hook in hooks:
        assert hook in readme, f"hook {hook} is not documented in README.md"
    tested = {
        "register_pruners",
        "register_scorers",
        "register_allocators",
        "register_models",
        "register_tasks",
        "register_commands",
    }
    assert set(hooks) == tested
    assert "register_commands" in here


def test_plugins_command_lists_a_third_party_plugin() -> None:
    proc = ecoflap("plugins", "--json", pythonpath=[SAMPLE])
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)}
    assert plugins["sample_pruner"]["registered"] == {"pruners": ["random-keep"]}
    assert plugins["sample_pruner"]["version"] == "0.1.0"
    assert plugins["pruners"]["registered"]["pruners"] == ["magnitude", "wanda", "sparsegpt"]


def test_a_broken_plugin_is_named_and_skipped_or_fails_under_strict() -> None:
    proc = ecoflap("plugins", pythonpath=[BROKEN])
    assert proc.returncode == 0
    assert "plugin 'broken' failed to load and was skipped" in proc.stderr
    assert "Traceback" not in proc.stderr
    strict = ecoflap("plugins", "--strict", pythonpath=[BROKEN])
    assert strict.returncode == 1
    assert strict.stderr.strip().splitlines()[-1].startswith("Error: ecoflap plugin 'broken' failed to load")
    assert "Traceback" not in strict.stderr


def test_a_third_party_pruner_prunes_from_the_cli(tmp_path: Path) -> None:
    proc = ecoflap(
        "prune",
        "--model",
        "tiny-llama",
        "--corpus",
        str(toy_corpus(tmp_path)),
        "--pruner",
        "random-keep",
        "--allocator",
        "uniform",
        "--sparsity",
        "0.25",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--no-perplexity",
        "-o",
        str(tmp_path / "out"),
        pythonpath=[SAMPLE],
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["methods"]["pruner"] == "random-keep"
    assert report["measured_sparsity"] == pytest.approx(0.25)


def toy_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i}. " + "pruning keeps the weights that matter. " * 40 for i in range(12)))
    return path
