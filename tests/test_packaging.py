"""The built wheel: every package and data file under the ecoflap namespace, no generic top-level names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_source_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert found == set(config["packages"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "ecoflap"  # a copy: the build leaves nothing in the checkout
    skip = shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(ROOT, source, ignore=skip)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return zipfile.ZipFile(next(out.glob("ecoflap-*.whl")))


def test_the_wheel_carries_templates_static_files_deployments_migrations_and_weights(wheel) -> None:
    names = set(wheel.namelist())
    for wanted in [
        "ecoflap/evaluation/dashboard/templates/leaderboard.html",
        "ecoflap/evaluation/dashboard/static/style.css",
        "ecoflap/deployments/prefect.yaml",
        "ecoflap/evaluation/results/alembic.ini",
        "ecoflap/evaluation/results/migrations/versions/0001_initial.py",
        "ecoflap/plugins/models/weights/mini_blip2_bridge.safetensors",
        "ecoflap/core/job.py",
    ]:
        assert wanted in names, wanted


def test_the_wheel_claims_no_generic_top_level_import_name(wheel) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"ecoflap"}
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert all(
        line.split("=")[1].strip().startswith("ecoflap.")
        for line in wheel.read(entry_points).decode().splitlines()
        if "=" in line
    )
