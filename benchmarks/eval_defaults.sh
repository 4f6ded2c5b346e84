#!/usr/bin/env bash
# Issue 4's table: every task the default models can do, dense vs 50% ECoFLaP (zeroth-order) + Wanda.
# Each pruned model comes from `ecoflap prune` on its defaults; each evaluation is `ecoflap eval`.
# Results: benchmarks/results/eval_defaults/<model>-{dense,ecoflap50}/results.json and a summary.
#   bash benchmarks/eval_defaults.sh            (ECOFLAP_THREADS=1 on a shared machine)
set -euo pipefail
cd "$(dirname "$0")/.."
ECOFLAP=${ECOFLAP:-.venv/bin/ecoflap}
OUT=benchmarks/results/eval_defaults
RUNS=${RUNS:-runs/eval_defaults}
mkdir -p "$OUT" "$RUNS"

evaluate() {  # model tasks limit
  local model=$1 tasks=$2 limit=$3
  [ -f "$RUNS/$model-ecoflap50/report.json" ] || $ECOFLAP prune --model "$model" --no-eval -o "$RUNS/$model-ecoflap50"
  $ECOFLAP eval --model "$model" --tasks "$tasks" $limit -o "$OUT/$model-dense"
  $ECOFLAP eval --model "$model" --checkpoint "$RUNS/$model-ecoflap50" --tasks "$tasks" $limit -o "$OUT/$model-ecoflap50"
}

evaluate mini-blip2 vqa,captioning "--limit 300"
evaluate mini-clip retrieval,imagenet ""
evaluate smollm2-135m wikitext,mmlu "--limit 30"
.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = ["| model | task | metric | dense | ECoFLaP 50% + Wanda | measured sparsity |", "|---|---|---|---|---|---|"]
for dense in sorted(out.glob("*-dense/results.json")):
    pruned = dense.parent.with_name(dense.parent.name.replace("-dense", "-ecoflap50")) / "results.json"
    d, p = json.loads(dense.read_text()), json.loads(pruned.read_text())
    for task, metrics in d["results"].items():
        for key, value in metrics.items():
            if key.endswith(",none") and "_stderr" not in key and isinstance(value, (int, float)):
                after = p["results"].get(task, {}).get(key)
                lines.append(f"| {d['config']['model']} | {task} | {key.split(',')[0]} | {value:.4f} | "
                             f"{after:.4f} | {p['ecoflap'].get('measured_sparsity')} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
