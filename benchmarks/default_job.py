"""The README's default job (``ecoflap prune``, no options) at each torch thread count, each in a fresh process.

Every run gets its own empty run cache, so each computes its coarse scores, allocation and fine step;
the table records what the job reports (measured sparsity, VQA accuracy by generation and by ranking,
invalid answers) and the step times, with the git hash and this command. Run-to-run spread: the same
thread count gives bit-identical results; another thread count sums in another order, and at 50% the
135 M language model of mini-blip2 is so close to breaking that its ranking accuracy moves with it.

    python benchmarks/default_job.py                  # threads 1 and 2 -> benchmarks/results/default_job.json
    python benchmarks/default_job.py --threads 2 --threads 2   # the same thread count twice
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ecoflap.core.provenance import git_hash, read_json, write_json

RESULTS = Path(__file__).parent / "results" / "default_job.json"


def run_default_job(threads: int, work: Path) -> dict[str, Any]:
    """``ecoflap prune`` in a fresh process with ``threads`` torch threads, its own run cache and database."""
    env = os.environ | {
        "ECOFLAP_THREADS": str(threads),
        "ECOFLAP_RUN_CACHE": str(work / "run-cache"),
        "ECOFLAP_DATABASE_URL": f"sqlite:///{work / 'results.db'}",
        "TQDM_DISABLE": "1",
    }
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ecoflap.pipelines.cli", "prune", "-o", str(work / "run")],
        env=env, cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"Error: the default job failed with {threads} threads: {done.stderr.strip().splitlines()[-1]}")
    document = read_json(work / "run" / "results.json")
    block, vqa = document["ecoflap"], document["results"]["vqa"]
    return {
        "threads": threads,
        "measured_sparsity": block["measured_sparsity"],
        "vqa_generate": vqa["acc,none"],
        "vqa_rank": vqa["rank_acc,none"],
        "vqa_invalid": vqa["invalid_rate,none"],
        "timings_s": block["timings_s"],
        "wall_s": round(time.perf_counter() - start, 1),
        "run_key": block["run_key"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| threads | measured sparsity | VQA generate | VQA rank | invalid | coarse s | fine s | VQA s |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["timings_s"]
        lines.append(
            f"| {r['threads']} | {r['measured_sparsity']:.4f} | {r['vqa_generate']:.3f} | {r['vqa_rank']:.3f} | "
            f"{r['vqa_invalid']:.4f} | {t.get('coarse', 0):.0f} | {t.get('fine', 0):.1f} | {t.get('eval', 0):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, action="append", help="torch threads of one run (repeatable)")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for threads in args.threads or [1, 2]:
        with tempfile.TemporaryDirectory(prefix="ecoflap-default-job-") as work:
            rows.append(run_default_job(threads, Path(work)))
        print(json.dumps(rows[-1]), flush=True)
    command = shlex.join(["python", "benchmarks/default_job.py", *sys.argv[1:]])
    write_json(args.output, {"git_hash": git_hash(), "command": command, "rows": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
