"""``slmops up --artifacts-destination s3://…``: the platform's MLflow server keeps artifacts in S3 and serves them.

AWS cannot exist here: S3 is a moto server on 127.0.0.1 (the ``aws_endpoint`` fixture), which the MLflow server
reaches through ``MLFLOW_S3_ENDPOINT_URL``. The MLflow server is the real one, started from the very spec
``slmops up`` starts it from.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from infra import process
from infra.platform.database import sqlite_databases
from infra.platform.services import UpOptions, _spawn, _wait, service_specs
from registry.pyfunc import log_served_model
from registry.resolve import download_served
from registry.tracking import is_remote, setup_tracking, tracking_uri
from tasks.served_folder import is_served_folder


@pytest.fixture
def mlflow_on_s3(aws_endpoint: str, s3_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The platform's MLflow server with ``--artifacts-destination s3://batch/slmops``; its URL."""
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", aws_endpoint)
    home = tmp_path / "platform-home"
    opts = UpOptions(home=home, repo=tmp_path, bindings=tmp_path / "bindings.yaml",
                     artifacts_destination="s3://batch/slmops")
    ports = {name: process.free_port() for name in ("prefect", "mlflow", "receiver", "fleet")}
    spec = service_specs(opts, sqlite_databases(home), ports)["mlflow"]
    assert "--default-artifact-root" not in spec.args  # clients must not be told to write a local folder
    service = _spawn("mlflow", spec, home / "platform" / "logs")
    try:
        _wait(service)
        yield spec.url
    finally:
        process.stop_group(service.process)


def test_models_go_to_s3_through_the_server_and_come_back(mlflow_on_s3: str, s3_bucket, tiny_onnx: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_on_s3)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")  # a worker needs no S3 access: it goes through the server
    worker_home = tmp_path / "worker"
    exp_id = setup_tracking(worker_home)
    location = MlflowClient().get_experiment(exp_id).artifact_location
    assert location.startswith("mlflow-artifacts:"), location  # not file://…/worker/mlartifacts
    with mlflow.start_run() as run:
        model = log_served_model(run.info.run_id, tiny_onnx)
    keys = [o["Key"] for o in s3_bucket.list_objects_v2(Bucket="batch", Prefix="slmops/")["Contents"]]
    assert any(k.endswith("/MLmodel") for k in keys) and any(k.endswith("genai_config.json") for k in keys)
    assert not (worker_home / "mlartifacts").exists()

    served = download_served(tmp_path / "fresh-pod", "s3-slm", "1", run.info.run_id, model.model_uri)
    assert is_served_folder(served)
    assert (served / "model.onnx").read_bytes() == (tiny_onnx / "model.onnx").read_bytes()


@pytest.mark.parametrize(("uri", "remote"), [("http://mlflow:5000", True), ("https://mlflow.example", True),
                                             ("databricks", True), ("databricks://profile", True),
                                             ("arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/s",
                                              True),
                                             ("sqlite:////tmp/mlflow.db", False),
                                             ("postgresql://u@127.0.0.1/mlflow", False), ("file:///tmp/mlruns", False)])
def test_only_a_store_this_process_writes_gets_a_local_artifact_location(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_the_embedded_store_keeps_artifacts_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp_id = setup_tracking(tmp_path)
    assert tracking_uri(tmp_path).startswith("sqlite:")
    assert MlflowClient().get_experiment(exp_id).artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
