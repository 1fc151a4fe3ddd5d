"""The gate's evaluation of the served artifact in MLflow's evaluation views, through ``mlflow.genai.evaluate``.

Each test row becomes an evaluation trace on the pipeline's run (input messages, the served artifact's greedy
answer, the reference as its expectation) scored by the code scorer ``exact_match``, the same comparison the
gate counts; the run gets ``exact_match/mean``. Perplexity and the gate decision stay where ``record_decision``
logs them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator

import mlflow
from mlflow.genai.scorers import scorer

from registry.tracking import on_run
from tasks.evaluate.metrics import is_exact_match
from tasks.evaluate.score import ArtifactScore

log = logging.getLogger(__name__)
EXPECTED = "expected_response"  # MLflow's conventional expectation key for a reference answer
WRITERS = "MLFLOW_GENAI_EVAL_MAX_WORKERS"


@scorer
def exact_match(outputs: str, expectations: dict) -> bool:
    """The answer equals the reference once surrounding whitespace is trimmed (the gate's exact match)."""
    return is_exact_match(outputs, expectations[EXPECTED])


def evaluation_rows(score: ArtifactScore) -> list[dict]:
    """``score``'s answered test rows in ``mlflow.genai.evaluate``'s form (inputs, outputs, expectations)."""
    return [{"inputs": {"messages": row.messages}, "outputs": row.answer, "expectations": {EXPECTED: row.expected}}
            for row in score.rows]


@contextlib.contextmanager
def _writers_set() -> Iterator[None]:
    """``MLFLOW_GENAI_EVAL_MAX_WORKERS`` 1 for the call when the user has not set it (and unset again after)."""
    if WRITERS in os.environ:
        yield
        return
    os.environ[WRITERS] = "1"
    try:
        yield
    finally:
        os.environ.pop(WRITERS, None)


def log_evaluation(run_id: str, score: ArtifactScore) -> dict[str, float]:
    """Log ``score``'s rows as an evaluation on run ``run_id``; the metrics MLflow computed (``exact_match/mean``).

    ``MLFLOW_GENAI_EVAL_MAX_WORKERS`` is set (1, unless the user set it): left unset, MLflow 3.17 on the embedded
    sqlite store took 93 s for 60 rows and lost 32 of their traces, against 6 s and none lost with it set
    (bench/genai_eval.py). MLflow's own progress bar and banner are kept off the terminal.
    """
    rows = evaluation_rows(score)
    if not rows:
        return {}
    quiet = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()))
    with _writers_set(), on_run(run_id), quiet[0], quiet[1]:
        result = mlflow.genai.evaluate(data=rows, scorers=[exact_match])
    log.info("evaluation of %s: %d rows logged to MLflow run %s", score.name, len(rows), run_id)
    return {k: float(v) for k, v in result.metrics.items()}
