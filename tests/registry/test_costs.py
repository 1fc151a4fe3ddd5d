"""Deploy costs land in MLflow as metrics of a run per deploy."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from registry.costs import DEPLOYMENTS_EXPERIMENT, log_deploy_cost
from registry.tracking import tracking_uri


def test_each_deploy_records_its_hourly_cost_and_instances(tmp_path: Path) -> None:
    first = log_deploy_cost(tmp_path, "demo-ep", "sagemaker", "demo-slm", "1", 0.115, 1, "ml.m5.large")
    second = log_deploy_cost(tmp_path, "demo-ep", "sagemaker", "demo-slm", "2", 0.23, 2, "ml.m5.large")
    client = MlflowClient(tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(DEPLOYMENTS_EXPERIMENT)
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {first, second}
    assert runs[second].data.metrics == {"usd_per_hour": 0.23, "instances": 2.0}
    assert runs[second].data.tags["slmops.version"] == "2" and runs[first].data.params["instance_type"] == "ml.m5.large"
    assert runs[first].info.status == "FINISHED"
