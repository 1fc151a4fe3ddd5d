"""The gate's rows as an MLflow evaluation (registry/evaluation.py) on the embedded sqlite store, by how many
writers ``mlflow.genai.evaluate`` runs: 1 (what ``log_evaluation`` sets), 10, and ``MLFLOW_GENAI_EVAL_MAX_WORKERS``
left unset (MLflow's own choice; ``mlflow.genai.evaluate`` called directly). Same rows (synthetic answers: the
scorer's work is a string compare, so only logging is measured), a fresh sqlite file each.

    python bench/genai_eval.py [--rows 60] [--workers 1 10 0]     # 0: unset
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = """
import sys, time
import mlflow
from registry.evaluation import evaluation_rows, exact_match, log_evaluation
from tasks.evaluate.score import ArtifactScore, EvalRow
rows = [EvalRow(messages=[{"role": "user", "content": f"Reverse: {i}"}], expected=str(i), answer=str(i % 3))
        for i in range(int(sys.argv[2]))]
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("bench")
score = ArtifactScore(name="onnx-int4", kind="onnx", path="x", metrics={}, rows=rows)
with mlflow.start_run() as run:
    started = time.perf_counter()
    if sys.argv[3] == "unset":
        mlflow.genai.evaluate(data=evaluation_rows(score), scorers=[exact_match])
    else:
        log_evaluation(run.info.run_id, score)
    seconds = time.perf_counter() - started
found = len(mlflow.search_traces(run_id=run.info.run_id, max_results=10000, return_type="list"))
print(f"{seconds:.2f} {found}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 10, 0])
    args = parser.parse_args()
    print(f"{args.rows} rows, one sqlite store each\n")
    print("| writers | seconds | rows/s | traces found |\n|---:|---:|---:|---:|")
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_GENAI_EVAL_MAX_WORKERS"}
            env |= {"MLFLOW_GENAI_EVAL_MAX_WORKERS": str(workers)} if workers else {}
            out = subprocess.run([sys.executable, "-c", CHILD, f"sqlite:///{tmp}/mlflow.db", str(args.rows),
                                  str(workers or "unset")],
                                 env=env, capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout.split()
            seconds, found = float(out[-2]), int(out[-1])
            shown = workers or "unset"
            print(f"| {shown} | {seconds:.1f} | {args.rows / seconds:.1f} | {found} of {args.rows} |", flush=True)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
