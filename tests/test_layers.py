"""The layering of ../shared/ARCHITECTURE.md, enforced: import-linter's contracts of pyproject.toml.

The source folders install as ``ecoflap.core``, ``ecoflap.plugins``, ... through a package-dir mapping,
which import-linter cannot follow in an editable install; each test copies the sources into that
layout in a temporary folder and runs ``lint-imports`` on the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"core": "ecoflap_core", "plugins": "plugins", "evaluation": "evaluation",
           "pipelines": "pipelines", "deployments": "deployments"}  # fmt: skip


def layout(tmp: Path) -> Path:
    """``tmp/ecoflap/<name>/`` holding the Python files of each top-level folder."""
    package = tmp / "ecoflap"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, folder in FOLDERS.items():
        shutil.copytree(ROOT / folder, package / name, ignore=shutil.ignore_patterns("*.pyc", "__pycache__", "weights"))
    return package


def lint(tmp: Path) -> subprocess.CompletedProcess[str]:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    env = os.environ | {"PYTHONPATH": str(tmp)}
    cmd = [str(lint_imports), str(ROOT / "pyproject.toml"), "--no-cache"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env, timeout=300)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return layout(tmp_path)


def test_imports_only_go_down(tree: Path) -> None:
    result = lint(tree.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("core/errors.py", "from ecoflap.evaluation import runner"),  # core -> evaluation
        ("plugins/pruners.py", "from ecoflap.evaluation.metrics import vqa"),  # peers never import each other
        ("evaluation/runner.py", "def f():\n    from ecoflap.pipelines import steps"),  # hidden in a function
    ],
)
def test_an_upward_import_breaks_the_build(tree: Path, module: str, upward: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + f"\n\n{upward}\n")
    result = lint(tree.parent)
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "layers" in result.stdout
