#!/usr/bin/env bash
# The GPU check of ecoflap (issue 13): pruning on a GPU against the CPU (masks, perplexity; float32 and bfloat16)
# and the coarse step's peak device memory, zeroth-order against first-order, on TinyLlama-1.1B shapes.
# One command, under 8 minutes on one GPU; see benchmarks/gpu_check.py for what it compares.
#
#   benchmarks/gpu_check.sh                       # on the GPU machine: --device cuda, results in $OUT or ./out
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh --device cpu --quick   # the dry run, on any machine
#   benchmarks/gpu_check.sh --download-wheels     # here, once: the wheels the GPU machine lacks, into .whl/
#
# The GPU machine has Python 3.12 and torch but neither network nor ecoflap's other needs: they travel as
# wheels in .whl/ (about 17 MiB, see WHEELS; .whl/ must be ignored by git: echo /.whl/ >> .git/info/exclude),
# and ecoflap itself is imported from this checkout through links that give its folders their package names.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# transformers 4.57 (5.x cannot build LAVIS's classes) with the tokenizers and huggingface-hub it accepts; pydantic
WHEELS="transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 pydantic==2.14.4 pydantic-core==2.50.5
annotated-types==0.8.0 typing-inspection==0.4.5"

if [ "${1:-}" = "--download-wheels" ]; then
    mkdir -p .whl
    # shellcheck disable=SC2086
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $WHEELS
    du -sh .whl
    exit 0
fi

needs_wheels() {  # transformers 4.57 and pydantic missing (the GPU machine has transformers 5 and no pydantic)
    ! "$PY" -c "import sys, pydantic, transformers; sys.exit(not transformers.__version__.startswith('4.57'))" \
        2>/dev/null
}
if needs_wheels; then
    compgen -G ".whl/*.whl" >/dev/null || { echo "Error: no wheels in .whl/: run $0 --download-wheels here first"; exit 1; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ecoflap-site \
        .whl/*.whl
    export PYTHONPATH=/tmp/ecoflap-site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import ecoflap.core" 2>/dev/null; then  # not installed: ecoflap.core -> ecoflap_core, ... (pyproject)
    mkdir -p /tmp/ecoflap-src/ecoflap
    for pair in core:ecoflap_core plugins:plugins evaluation:evaluation; do
        ln -sfn "$PWD/${pair#*:}" "/tmp/ecoflap-src/ecoflap/${pair%%:*}"
    done
    export PYTHONPATH=/tmp/ecoflap-src${PYTHONPATH:+:$PYTHONPATH}
fi
OUT_DIR=${OUT:-out}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
export PYTHONUNBUFFERED=1
timeout 470 "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"  # pipefail: its status
