"""Which served requests a deployment records as MLflow traces (infra/serving/tracing.py records them)."""

from __future__ import annotations

import os

from infra.serving.tracing import TraceConfig, trace_env

TRACKING_SERVERS = ("http://", "https://")


def deployer_tracking_uri() -> str:
    """The deploying process's ``MLFLOW_TRACKING_URI`` ('' when unset)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "")


def local_sample(asked: float | None) -> float:
    """A local deployment's sample rate: ``asked``, else every request when the deploying process logs to a
    tracking server (the server process inherits its ``MLFLOW_TRACKING_URI``), else none."""
    if asked is not None:
        return asked
    return 1.0 if deployer_tracking_uri().startswith(TRACKING_SERVERS) else 0.0


def trace_argv(asked: float | None, model_id: str) -> list[str]:
    """``python -m infra.serving`` options of a local deployment's tracing."""
    return ["--trace-sample", str(local_sample(asked)), *(["--trace-model-id", model_id] if model_id else [])]


def container_trace_env(sample: float, tracking_uri: str, model_id: str) -> dict[str, str]:
    """A SageMaker container's tracing environment: nothing when ``sample`` is 0 or no tracking URI is known."""
    uri = tracking_uri or deployer_tracking_uri()
    if sample <= 0 or not uri:
        return {}
    return trace_env(TraceConfig(sample=sample, tracking_uri=uri, model_id=model_id))
