"""What serving costs, logged to MLflow: one run per deploy in the ``slmops-deployments`` experiment."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from registry.tracking import tracking_uri

DEPLOYMENTS_EXPERIMENT = "slmops-deployments"


def log_deploy_cost(root: Path, deployment: str, target: str, model: str, version: str, usd_per_hour: float,
                    instances: int | None = None, instance_type: str | None = None) -> str:
    """Record a deploy's running cost (instances × list price per hour) as MLflow metrics; returns the run id."""
    client = MlflowClient(tracking_uri(root))
    experiment = client.get_experiment_by_name(DEPLOYMENTS_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(DEPLOYMENTS_EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"{deployment} v{version} on {target}",
                            tags={"slmops.model": model, "slmops.version": str(version), "slmops.target": target,
                                  "slmops.deployment": deployment})
    run_id = run.info.run_id
    client.log_metric(run_id, "usd_per_hour", float(usd_per_hour))
    if instances is not None:
        client.log_metric(run_id, "instances", float(instances))
        client.log_param(run_id, "instance_type", instance_type or "")
    client.set_terminated(run_id)
    return run_id
