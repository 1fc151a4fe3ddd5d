"""The gate's rows in MLflow's evaluation view (registry/evaluation.py): one trace per row, scored by the
``exact_match`` code scorer, on the run the pipeline logs to (the test session's sqlite store)."""

from __future__ import annotations

import os

import mlflow
import pytest

from registry.evaluation import log_evaluation
from registry.tracking import setup_tracking
from tasks.evaluate.metrics import is_exact_match
from tasks.evaluate.score import ArtifactScore, EvalRow
from tasks.settings import get_settings


def _score(answers: list[tuple[str, str]]) -> ArtifactScore:
    rows = [EvalRow(messages=[{"role": "user", "content": f"Reverse: {ref}"}], expected=ref, answer=answer)
            for ref, answer in answers]
    return ArtifactScore(name="onnx-int4", kind="onnx", path="x", metrics={}, rows=rows)


def test_every_row_is_a_scored_trace_on_the_run(capsys: pytest.CaptureFixture) -> None:
    setup_tracking(get_settings().root)
    answers = [("c b a", "c b a"), ("z y", " z y\n"), ("3 2 1", "3 2"), ("q", "Q")]
    with mlflow.start_run() as run:
        metrics = log_evaluation(run.info.run_id, _score(answers))
    expected = [is_exact_match(a, r) for r, a in answers]
    assert metrics["exact_match/mean"] == pytest.approx(sum(expected) / len(expected))
    assert mlflow.get_run(run.info.run_id).data.metrics["exact_match/mean"] == pytest.approx(0.5)
    traces = mlflow.search_traces(run_id=run.info.run_id, return_type="list")
    assert len(traces) == len(answers)
    seen = {}
    for trace in traces:
        request = trace.data.spans[0].inputs
        reference = request["messages"][0]["content"].removeprefix("Reverse: ")
        feedback = {a.name: a for a in trace.info.assessments}
        assert feedback["expected_response"].value == reference
        seen[reference] = feedback["exact_match"].value
    assert seen == {r: is_exact_match(a, r) for r, a in answers}
    out = capsys.readouterr()
    assert "Evaluation completed" not in out.out + out.err  # MLflow's banner stays off the terminal
    assert "MLFLOW_GENAI_EVAL_MAX_WORKERS" not in os.environ, "set for the call only"


def test_a_score_without_rows_logs_nothing() -> None:
    setup_tracking(get_settings().root)
    with mlflow.start_run() as run:
        assert log_evaluation(run.info.run_id, _score([])) == {}
    assert mlflow.search_traces(run_id=run.info.run_id, return_type="list") == []
