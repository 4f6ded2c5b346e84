"""The pluggy plugin API: entry-point loading, validation, did-you-mean, broken and third-party plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from ecoflap.core import hookspecs
from ecoflap.core.adapters import ModelSpec
from ecoflap.core.allocation import Allocator
from ecoflap.core.errors import PluginLoadError, UnknownNameError
from ecoflap.core.hookspecs import hookimpl
from ecoflap.core.plugins import load_plugins
from ecoflap.core.pruning import LayerPruner
from ecoflap.core.scoring import Scorer
from ecoflap.core.tasks import Task

HERE = Path(__file__).parent
SAMPLE = HERE / "plugins" / "sample_pruner"
BROKEN = HERE / "plugins" / "broken_plugin"
TINY_MODELS = HERE / "plugins" / "tiny_models"


def ecoflap(
    *args: str, pythonpath: list[Path] = (), cwd: Path | None = None, tiny_models: bool = True
) -> subprocess.CompletedProcess:
    """``python -m ecoflap.pipelines.cli ARGS`` with ``pythonpath`` (and, unless told not, the tiny models' plugin)."""
    paths = [*pythonpath, *([TINY_MODELS] if tiny_models else [])]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(str(p) for p in paths), "ECOFLAP_THREADS": "1"}
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
    assert {"smollm2-135m", "mini-blip2", "mini-clip"} <= set(reg.models)
    assert reg.pruners.entry("wanda").plugin == "pruners"
    assert reg.plugins["pruners"].distribution == "ecoflap"


def test_the_tiny_test_models_come_from_the_test_plugin() -> None:
    reg = load_plugins()
    tiny = {name for name in reg.models if name.startswith("tiny-")}
    assert len(tiny) == 10 and {reg.models.entry(name).plugin for name in tiny} == {"tiny_models"}
    assert reg.plugins["tiny_models"].distribution == "ecoflap-tiny-models"


def test_production_lists_no_tiny_model() -> None:
    """Without the test plugin on the path (as installed), ``ecoflap ls models`` lists no tiny-* model."""
    proc = ecoflap("ls", "models", tiny_models=False)
    assert proc.returncode == 0, proc.stderr
    assert "mini-blip2" in proc.stdout and "smollm2-135m" in proc.stdout
    assert "tiny-" not in proc.stdout


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
        plugins._check_api_version(TooNew(), "too-new")


def spec_hooks() -> set[str]:
    """The hooks that ecoflap.core.hookspecs declares (as pluggy reads them)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return {name for name in vars(pm.hook) if not name.startswith("_")}


def hooks_implemented_by_tests() -> set[str]:
    """Hooks with an ``@hookimpl`` somewhere under tests/ (a test's plugin or a sample plugin package)."""
    sources = [path.read_text() for path in HERE.rglob("*.py")]
    return {name for source in sources for name in re.findall(r"@hookimpl\s+def (\w+)\(", source)}


def test_every_hook_is_tested_and_documented() -> None:
    hooks = spec_hooks()
    assert {"register_pruners", "register_models", "register_commands"} <= hooks  # the introspection works
    assert sorted(hooks - hooks_implemented_by_tests()) == [], "hooks without a test implementing them"
    readme = (HERE.parent / "README.md").read_text()
    assert [hook for hook in sorted(hooks) if hook not in readme] == [], "hooks not documented in README.md"


class ThirdParty:
    """A plugin registering one object through each register hook but register_pruners and register_commands."""

    class Flat(Scorer):
        name = "flat"

        def score(self, adapter, batch, towers, progress=None):
            return {name: 1.0 for tower in towers for block in tower.blocks for name in block.linears}

    class Half(Allocator):
        name = "half"

        def allocate(self, request):
            raise NotImplementedError

    class Nothing(Task):
        name = "nothing"
        capability = "LanguageModel"

        def run(self, adapter, options):
            raise NotImplementedError

    spec = ModelSpec("third-model", lambda options: None, "a model of a third party")

    @hookimpl
    def register_scorers(self, register) -> None:
        register(self.Flat)

    @hookimpl
    def register_allocators(self, register) -> None:
        register(self.Half)

    @hookimpl
    def register_tasks(self, register) -> None:
        register(self.Nothing)

    @hookimpl
    def register_models(self, register) -> None:
        register(self.spec)


@pytest.mark.parametrize(
    ("kind", "name", "registered"),
    [
        ("scorers", "flat", ThirdParty.Flat),
        ("allocators", "half", ThirdParty.Half),
        ("tasks", "nothing", ThirdParty.Nothing),
        ("models", "third-model", ThirdParty.spec),
    ],
)
def test_each_register_hook_adds_to_its_registry(kind: str, name: str, registered: object) -> None:
    reg = load_plugins(strict=True, extra=[("third", ThirdParty())])
    registry = getattr(reg, kind)
    assert registry.get(name) is registered and registry.entry(name).plugin == "third"
    assert name in reg.plugins["third"].registered[kind]


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
        "--no-eval",
        "--db",
        f"sqlite:///{tmp_path / 'results.db'}",
        "-o",
        str(tmp_path / "out"),
        pythonpath=[SAMPLE],
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"]["pruner"] == "random-keep"
    assert report["measured_sparsity"] == pytest.approx(0.25)


def toy_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i}. " + "pruning keeps the weights that matter. " * 40 for i in range(12)))
    return path
