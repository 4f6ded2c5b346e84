"""The command line: bad input ends in one clear line and exit status 1, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ecoflap.pipelines.cli import cli

BAD_INPUT = [
    (["--sparsity", "1.0"], "sparsity: Input should be less than 1"),
    (["--sparsity", "-0.1"], "sparsity: Input should be greater than or equal to 0"),
    (["--sparsity", "0.6", "--max-sparsity", "0.5"], "max_sparsity 0.5 is below the target sparsity 0.6"),
    (["--nm", "4:4", "--allocator", "uniform"], "N:M pattern 4:4 is invalid"),
    (["--nm", "2of4"], "is not of the form N:M"),
    (["--pruner", "wandaa"], "unknown pruner 'wandaa'. Did you mean 'wanda'"),
    (["--scorer", "zeroth"], "unknown scorer 'zeroth'. Did you mean 'zeroth-order'"),
    (["--allocator", "ecoflp"], "unknown allocator 'ecoflp'. Did you mean 'ecoflap'"),
    (["--model", "/no/such/model"], "model '/no/such/model' is neither a registered model nor an existing folder"),
    (["--nsamples", "0"], "nsamples: Input should be greater than or equal to 1"),
    (["--nm", "2:4"], "N:M sparsity (2:4) is the same in every layer: use --allocator uniform"),
    (["--allocator", "from-file"], "needs --allocation-file"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_1(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["prune", "--model", "tiny-llama", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_corpus_too_short_and_a_missing_model_file(tmp_path: Path) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("only a few words here")
    result = CliRunner().invoke(
        cli,
        ["prune", "--model", "tiny-llama", "--corpus", str(corpus), "--nsamples", "4", "--seqlen", "64"]
        + ["--score-nsamples", "4", "--score-seqlen", "64", "--no-eval"],
    )
    assert result.exit_code == 1
    assert "too few for 4 x 64 calibration tokens" in result.output
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    result = CliRunner().invoke(cli, ["prune", "--model", str(folder), "--no-eval"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot load the model in {folder}")


def test_config_file_unknown_key(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny-llama\nsparsity: 0.3\nsparsty: 0.4\n")
    result = CliRunner().invoke(cli, ["prune", "-C", str(config)])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: invalid configuration: sparsty: unknown key"


def test_a_flag_overrides_the_file_and_the_file_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both values valid: the validated run config has the flag's sparsity and the file's nsamples."""
    from ecoflap.pipelines import prune_cli

    runs: list = []
    monkeypatch.setattr(prune_cli, "execute", lambda target, strict: runs.append(target))
    config = tmp_path / "run.yaml"
    config.write_text("model: tiny-llama\nsparsity: 0.3\nnsamples: 7\n")
    result = CliRunner().invoke(cli, ["prune", "-C", str(config), "--sparsity", "0.2"])
    assert result.exit_code == 0, result.output
    (run,) = runs
    assert (run.model, run.sparsity, run.nsamples) == ("tiny-llama", 0.2, 7)


def test_register_commands_adds_a_subcommand() -> None:
    import click

    from ecoflap.core.hookspecs import hookimpl
    from ecoflap.core.plugins import load_plugins

    class AddsCommand:
        @hookimpl
        def register_commands(self, cli: click.Group) -> None:
            @cli.command(name="hello-plugin")
            def hello() -> None:
                click.echo("hello from a plugin")

    group = click.Group()
    reg = load_plugins(extra=[("adds-command", AddsCommand())])
    reg.manager.hook.register_commands(cli=group)
    assert CliRunner().invoke(group, ["hello-plugin"]).output == "hello from a plugin\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--seed", "abc"], "Invalid value for '--seed': 'abc' is not a valid integer. (see ecoflap prune"),
        (["prune", "--granularity", "odd"], "'odd' is not one of 'layer', 'block', 'tower'"),
        (["prune", "--nosuch"], "No such option '--nosuch'"),
        (["prnue"], "No such command 'prnue'. Did you mean 'prune'?"),
        (["results", "list", "--bogus"], "No such option '--bogus'"),
        (["ls", "nothing"], "Invalid value for '{pruners|scorers|allocators|models|tasks}'"),
    ],
)
def test_a_mistyped_flag_is_one_line_and_exit_1_not_the_usage_text(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args, prog_name="ecoflap")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
