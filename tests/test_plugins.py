"""The pluggy plugin API: entry-point loading, validation, did-you-mean, broken and third-party plugins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import click
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
HIJACK = HERE / "plugins" / "hijack"
BAD_COMMANDS = HERE / "plugins" / "bad_commands"
EXITS_AT_IMPORT = HERE / "plugins" / "exits_at_import"


def ecoflap(
    *args: str,
    pythonpath: list[Path] = (),
    cwd: Path | None = None,
    tiny_models: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m ecoflap.pipelines.cli ARGS`` with ``pythonpath`` (and, unless told not, the tiny models' plugin)."""
    paths = [*pythonpath, *([TINY_MODELS] if tiny_models else [])]
    base = {k: v for k, v in os.environ.items() if k != "ECOFLAP_OVERRIDE"}
    env = base | {"PYTHONPATH": os.pathsep.join(str(p) for p in paths), "ECOFLAP_THREADS": "1"} | (env or {})
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
    [
        (WrongType(), "registered <class 'object'> as a pruner"),
        (Duplicate(), "already registered by the built-in plugin 'pruners' (ecoflap "),
    ],
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
    assert plugins["pruners"]["registered"]["pruners"] == ["magnitude", "wanda", "sparsegpt", "ria", "dsnot"]


def test_a_broken_plugin_is_named_and_skipped_or_fails_under_strict() -> None:
    proc = ecoflap("plugins", pythonpath=[BROKEN])
    assert proc.returncode == 0
    assert "plugin 'broken' (ecoflap-broken-plugin 0.0.1) failed to load and was skipped" in proc.stderr
    assert "Traceback" not in proc.stderr
    strict = ecoflap("plugins", "--strict", pythonpath=[BROKEN])
    assert strict.returncode == 1
    last = strict.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ecoflap plugin 'broken' (ecoflap-broken-plugin 0.0.1) failed to load")
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


# ---- plugins cannot hijack: a name has one owner, a failing plugin is contained --------------------------
BUILTIN_WANDA = {
    "plugin": "pruners",
    "distribution": "ecoflap",
    "version": metadata.version("ecoflap"),
    "object": "ecoflap.plugins.pruners.WandaPruner",
}
HIJACK_WANDA = {
    "plugin": "hijack",
    "distribution": "ecoflap-hijack",
    "version": "0.1.0",
    "object": "ecoflap_hijack.LargestFirstPruner",
}


@pytest.fixture
def hijack_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test distribution ecoflap-hijack (a pruner named ``wanda``) found first, as a pip-installed one can be."""
    monkeypatch.syspath_prepend(str(HIJACK))
    monkeypatch.delenv("ECOFLAP_OVERRIDE", raising=False)


def test_a_third_party_wanda_fails_naming_both_and_the_builtin_keeps_the_name(hijack_installed: None) -> None:
    with pytest.warns(RuntimeWarning) as caught:
        reg = load_plugins()
    (message,) = [str(w.message) for w in caught if "wanda" in str(w.message)]
    assert message.startswith("ecoflap plugin 'hijack' (ecoflap-hijack 0.1.0) failed to register and was skipped")
    assert "the built-in plugin 'pruners' (ecoflap " in message
    assert reg.implementation("pruner", "wanda") == BUILTIN_WANDA
    assert reg.plugins["pruners"].error is None and reg.plugins["pruners"].registered["pruners"] == [
        "magnitude",
        "wanda",
        "sparsegpt",
        "ria",
        "dsnot",
    ]
    assert reg.plugins["hijack"].error == message.split("skipped: ", 1)[1]
    with pytest.raises(PluginLoadError, match=r"'hijack' \(ecoflap-hijack 0.1.0\).*'pruners' \(ecoflap "):
        load_plugins(strict=True)


def test_the_override_gives_wanda_to_the_plugin_and_changes_its_implementation(
    hijack_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        without = load_plugins().implementation("pruner", "wanda")
    monkeypatch.setenv("ECOFLAP_OVERRIDE", "pruner:wanda=hijack")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the user opted in: no plugin fails, nothing to warn about
        reg = load_plugins(strict=True)
    assert reg.implementation("pruner", "wanda") == HIJACK_WANDA != without == BUILTIN_WANDA
    assert reg.pruners.get("wanda").__name__ == "LargestFirstPruner"
    assert reg.plugins["pruners"].registered["pruners"] == ["magnitude", "sparsegpt", "ria", "dsnot"]
    assert reg.implementation("pruner", "magnitude")["plugin"] == "pruners"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("pruner:wanda", "ECOFLAP_OVERRIDE: cannot read 'pruner:wanda': write KIND:NAME=PLUGIN"),
        ("sampler:wanda=hijack", "cannot read 'sampler:wanda=hijack'"),
        (
            "pruner:wanda=nobody",
            "from plugin 'nobody', but that plugin does not register it (registered by: 'pruners')",
        ),
        ("pruner:wanda=hijack,pruner:wanda=pruners", "names pruner 'wanda' twice"),
    ],
)
def test_an_override_that_cannot_be_honoured_is_an_error(
    hijack_installed: None, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("ECOFLAP_OVERRIDE", value)
    with warnings.catch_warnings(), pytest.raises(PluginLoadError, match=re.escape(message)):
        warnings.simplefilter("ignore")
        load_plugins()


def clash_plugin(label: str) -> object:
    """A plugin registering its own pruner class under the name ``clash``."""

    class Pruner(LayerPruner):
        name = "clash"

        def prune(self, sparsity, pattern=None):
            raise NotImplementedError

    class Plugin:
        @hookimpl
        def register_pruners(self, register) -> None:
            register(Pruner)

    Pruner.__qualname__ = f"Clash{label}"
    return Plugin()


@pytest.mark.parametrize("order", [("first", "second"), ("second", "first")])
def test_two_third_party_plugins_claiming_one_name_neither_wins(order: tuple[str, str]) -> None:
    plugins = {"first": clash_plugin("First"), "second": clash_plugin("Second")}
    with pytest.warns(RuntimeWarning) as caught:
        reg = load_plugins(extra=[(name, plugins[name]) for name in order])
    messages = [str(w.message) for w in caught if "clash" in str(w.message)]
    assert len(messages) == 2 and all("'first'" in m and "'second'" in m for m in messages)
    assert "clash" not in reg.pruners
    assert reg.plugins["first"].error and reg.plugins["second"].error


def test_an_override_settles_a_clash_between_third_party_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLAP_OVERRIDE", "pruner:clash=second")
    reg = load_plugins(strict=True, extra=[("first", clash_plugin("First")), ("second", clash_plugin("Second"))])
    assert reg.implementation("pruner", "clash") == {
        "plugin": "second",
        "distribution": None,
        "version": None,
        "object": f"{__name__}.ClashSecond",
    }
    assert reg.plugins["first"].error is None


def test_implementation_names_each_kind_and_refuses_an_unknown_kind() -> None:
    reg = load_plugins(strict=True, extra=[("third", ThirdParty())])
    assert reg.implementation("scorer", "flat")["object"] == f"{__name__}.ThirdParty.Flat"
    assert reg.implementation("allocator", "uniform")["plugin"] == "allocators"
    assert reg.implementation("task", "vqa")["distribution"] == "ecoflap"
    tiny = reg.implementation("model", "tiny-llama")
    assert tiny["distribution"] == "ecoflap-tiny-models" and tiny["object"].startswith("ecoflap_tiny_models.")
    with pytest.raises(UnknownNameError, match="unknown registry kind 'pruners'. Available: pruner, scorer"):
        reg.implementation("pruners", "wanda")


def command_plugin(*names: str, fail: bool = False) -> object:
    class Plugin:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            for name in names:
                cli.command(name)(lambda: click.echo("from a plugin"))
            if fail:
                raise RuntimeError("cannot finish")

    return Plugin()


def test_each_plugin_adds_its_commands_on_its_own_and_never_replaces_one_of_ecoflaps() -> None:
    from ecoflap.core.plugins import add_commands

    group = click.Group()
    own = group.command("prune")(lambda: None)
    extra = [
        ("takes-prune", command_plugin("sneaky", "prune")),
        ("raises", command_plugin("half", fail=True)),
        ("one", command_plugin("shared", "one-more")),
        ("two", command_plugin("shared")),
        ("fine", command_plugin("hello")),
    ]
    reg = load_plugins(strict=True, extra=extra)
    with pytest.warns(RuntimeWarning) as caught:
        add_commands(reg, group)
    messages = {m.split("'")[1]: m for m in (str(w.message) for w in caught)}
    assert "prune would replace ecoflap's own" in messages["takes-prune"]
    assert "RuntimeError: cannot finish" in messages["raises"]
    assert "command 'shared' is registered by several plugins ('one'" in messages["one"] and "'two'" in messages["one"]
    assert group.commands["prune"] is own
    assert not {"sneaky", "half", "shared", "one-more"} & set(group.commands)  # a failed plugin adds nothing
    assert "hello" in group.commands and reg.plugins["fine"].registered == {"commands": ["hello"]}
    assert reg.plugins["one"].registered == {} and reg.plugins["two"].failed == "in register_commands"
    assert reg.plugins["raises"].failed == "in register_commands"


def test_a_duplicate_wanda_from_the_cli_names_both_and_an_override_opts_in(tmp_path: Path) -> None:
    """Outside the source tree the test distribution's entry point comes first (the order that blamed the built-in)."""
    listed = ecoflap("ls", "pruners", pythonpath=[HIJACK], cwd=tmp_path, tiny_models=False)
    assert listed.returncode == 0, listed.stderr
    owners = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()}
    assert owners == {name: "pruners" for name in ("magnitude", "wanda", "sparsegpt", "ria", "dsnot")}
    (warning,) = listed.stderr.strip().splitlines()
    assert warning.startswith("warning: ecoflap plugin 'hijack' (ecoflap-hijack 0.1.0) failed to register")
    assert "'pruners' (ecoflap " in warning
    strict = ecoflap("plugins", "--strict", pythonpath=[HIJACK], cwd=tmp_path, tiny_models=False)
    errors = [line for line in strict.stderr.splitlines() if line.startswith("Error: ")]
    assert strict.returncode == 1 and len(errors) == 1 and "Traceback" not in strict.stderr
    assert "'hijack' (ecoflap-hijack 0.1.0)" in errors[0] and "'pruners' (ecoflap " in errors[0]
    chosen = ecoflap(
        "ls",
        "pruners",
        pythonpath=[HIJACK],
        cwd=tmp_path,
        tiny_models=False,
        env={"ECOFLAP_OVERRIDE": "pruner:wanda=hijack"},
    )
    assert chosen.returncode == 0 and chosen.stderr == ""
    assert [line.split()[1] for line in chosen.stdout.splitlines() if line.startswith("wanda ")] == ["hijack"]


def test_the_cli_works_beside_a_plugin_failing_in_register_commands_and_one_exiting_at_import() -> None:
    paths = [BAD_COMMANDS, EXITS_AT_IMPORT]
    expected = [
        "warning: ecoflap plugin 'bad_commands' (ecoflap-bad-commands 0.1.0) failed in register_commands",
        "warning: ecoflap plugin 'exits_at_import' (ecoflap-exits-at-import 0.1.0) failed to load and was skipped: "
        "SystemExit: ecoflap_exits_at_import refuses to load",
    ]
    runs = {
        args[0]: ecoflap(*args, pythonpath=paths, tiny_models=False)
        for args in (["--help"], ["ls", "pruners"], ["plugins"])
    }
    for proc in runs.values():
        assert proc.returncode == 0, proc.stderr
        assert all(any(line.startswith(e) for line in proc.stderr.splitlines()) for e in expected), proc.stderr
        assert "Traceback" not in proc.stderr
    assert " prune " in runs["--help"].stdout and "half-added" not in runs["--help"].stdout
    assert "wanda" in runs["ls"].stdout
    listed = runs["plugins"].stdout
    assert "bad_commands (ecoflap-bad-commands 0.1.0)  FAILED in register_commands: RuntimeError" in listed
    assert "exits_at_import (ecoflap-exits-at-import 0.1.0)  FAILED to load: SystemExit" in listed
    strict = ecoflap("plugins", "--strict", pythonpath=paths, tiny_models=False)
    errors = [line for line in strict.stderr.splitlines() if line.startswith("Error: ")]
    assert strict.returncode == 1 and len(errors) == 1 and "'bad_commands'" in errors[0]


def test_a_third_party_entry_point_named_like_a_builtin_plugin_never_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution declaring ``pruners = ...`` in the ecoflap group, found before ecoflap's own."""
    (tmp_path / "ecoflap_evil").mkdir()
    (tmp_path / "ecoflap_evil" / "__init__.py").write_text("raise AssertionError('must not be imported')\n")
    info = tmp_path / "ecoflap_evil-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ecoflap-evil\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ecoflap]\npruners = ecoflap_evil\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match=r"plugin name 'pruners' is already taken by 'pruners' \(ecoflap "):
        reg = load_plugins()
    assert reg.implementation("pruner", "wanda") == BUILTIN_WANDA
    assert reg.plugins["ecoflap-evil:pruners"].failed == "to load"
