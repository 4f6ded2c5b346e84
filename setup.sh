#!/usr/bin/env bash
# Installs ecoflap and everything it needs into ./.venv (Python 3.11; torch 2.14.1 + torchvision 0.29.1).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# strict editable mode links the files of the package layout (ecoflap.core -> ecoflap_core, ...) into the
# build, so that lint-imports and other tools that walk the package on disk see ecoflap.pipelines etc.;
# a module added later needs this line rerun
.venv/bin/python -m pip install -q -e '.[dev,bench]' --config-settings editable_mode=strict
# packages whose declared pins conflict with a current stack (see requirements-nodeps.txt)
.venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
.venv/bin/python -c "import torch, torchvision, transformers, lm_eval, prefect, pycocoevalcap, sqlalchemy, pluggy; print('ecoflap installed: torch', torch.__version__, '| transformers', transformers.__version__)"
