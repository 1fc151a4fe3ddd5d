"""Which deployments record served traffic as MLflow traces (infra/targets/tracing.py): a local deployment by
default whenever the deploying process logs to a tracking server; a SageMaker endpoint only when asked."""

from __future__ import annotations

import pytest

from infra.serving.tracing import trace_from_env
from infra.targets.tracing import container_trace_env, trace_argv


@pytest.mark.parametrize(("uri", "asked", "sample"), [("http://127.0.0.1:5000", None, "1.0"),
                                                       ("https://mlflow.example", None, "1.0"),
                                                       ("sqlite:////tmp/mlflow.db", None, "0.0"),
                                                       (None, None, "0.0"), ("http://127.0.0.1:5000", 0.25, "0.25"),
                                                       ("http://127.0.0.1:5000", 0.0, "0.0")])
def test_local_deployments_trace_when_a_tracking_server_is_set(uri: str | None, asked: float | None, sample: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    else:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = trace_argv(asked, "m-abc")
    assert argv[:2] == ["--trace-sample", sample] and argv[2:] == ["--trace-model-id", "m-abc"]
    assert trace_argv(asked, "") == argv[:2]


def test_sagemaker_traces_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert container_trace_env(0.0, "", "m-abc") == {}
    env = container_trace_env(0.1, "", "m-abc")
    cfg = trace_from_env(env)  # what the container reads back
    assert (cfg.sample, cfg.tracking_uri, cfg.model_id) == (0.1, "http://mlflow.internal:5000", "m-abc")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert container_trace_env(0.1, "", "m-abc") == {}  # nowhere to send them
    assert trace_from_env(container_trace_env(1.0, "arn:aws:sagemaker:us-east-1:1:mlflow-tracking-server/t",
                                              "")).tracking_uri.startswith("arn:")
